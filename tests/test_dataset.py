"""Training batches from a manifest: raw and cached modes give the same model inputs."""

from __future__ import annotations

import pytest
import torch

from clip_vlm_core.data.dataset import CachedEncoderDataset, CaptionDataset, RawCollator, collate_cached
from clip_vlm_core.data.manifest import load_manifest, read_manifest_meta
from clip_vlm_core.model import SceneCaptioner
from clip_vlm_core.model.tiny import save_tiny_base_models, tiny_captioner_config


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    base = save_tiny_base_models(tmp_path_factory.mktemp("base"))
    return SceneCaptioner.build(tiny_captioner_config(base), device="cpu", trainable=True)


@pytest.fixture(scope="module")
def dataset(synthetic_manifest, captioner):
    meta = read_manifest_meta(synthetic_manifest)
    return CaptionDataset(load_manifest(synthetic_manifest / "mini_train.jsonl"), meta["dataroot"], captioner.views)


def test_raw_batch_has_every_model_input_and_labels_only_on_captions(dataset, captioner):
    items = [dataset[0], dataset[1], dataset[2]]
    batch = RawCollator(captioner)(items)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["image_grid_thw"].shape == (3 * len(captioner.views), 3)
    assert batch["clip_pixels"].shape[:2] == (3 * len(captioner.views), 3)
    tokenizer = captioner.processor.tokenizer
    for row, item in enumerate(items):
        labelled = batch["labels"][row][batch["labels"][row] != -100]
        assert tokenizer.decode(labelled) == item["caption"] + tokenizer.eos_token
    image_token = captioner.model.base_qwen.config.image_token_id
    assert not (batch["labels"] == image_token).any()


def test_cached_and_raw_modes_give_equal_batches_and_loss(dataset, captioner, tmp_path):
    cached = CachedEncoderDataset(dataset, captioner, tmp_path / "cache", show_progress=False)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == len(dataset)
    indices = [3, 0, 2]
    raw = RawCollator(captioner)([dataset[i] for i in indices])
    fast = collate_cached([cached[i] for i in indices], captioner.processor.tokenizer.pad_token_id)
    for key in ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "image_grid_thw"):
        assert torch.equal(raw[key], fast[key]), key
    # The cache encodes one sample at a time, the raw batch all at once: some CPUs' matrix kernels block
    # differently by batch size, so equal means equal to float32 rounding, not bit for bit.
    visual = captioner.model.encode_visual(raw["pixel_values"], raw["image_grid_thw"])
    for a, b in zip(visual, fast["visual_embeds"], strict=True):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(captioner.model.clip(raw["clip_pixels"]), fast["clip_tokens"])
        torch.testing.assert_close(captioner.model(**raw).loss, captioner.model(**fast).loss)


def test_cache_is_reused_not_recomputed(dataset, captioner, tmp_path):
    CachedEncoderDataset(dataset, captioner, tmp_path / "cache", show_progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    CachedEncoderDataset(dataset, captioner, tmp_path / "cache", show_progress=False)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()} == stamps
