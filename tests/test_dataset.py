"""Training batches from a manifest: raw and cached modes give the same model inputs."""

from __future__ import annotations

import pytest
import torch

from clip_vlm_core.data.dataset import CachedEncoderDataset, CaptionDataset, RawCollator, collate_cached
from clip_vlm_core.data.manifest import load_manifest, read_manifest_meta
from clip_vlm_core.model import SceneCaptioner
from clip_vlm_core.model.tiny import tiny_captioner_config


@pytest.fixture(scope="module")
def captioner(tiny_base):
    return SceneCaptioner.build(tiny_captioner_config(tiny_base), device="cpu", trainable=True)


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
        assert tokenizer.decode(labelled) == item["target"] + tokenizer.eos_token
    image_token = captioner.model.base_qwen.config.image_token_id
    assert not (batch["labels"] == image_token).any()


def test_cached_and_raw_modes_give_equal_batches_and_loss(dataset, captioner, tmp_path):
    cached = CachedEncoderDataset(dataset, captioner, tmp_path / "cache", show_progress=False)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == len(dataset.rows) == len(dataset)
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


def test_cache_is_reused_not_recomputed(dataset, captioner, tmp_path, monkeypatch):
    first = CachedEncoderDataset(dataset, captioner, tmp_path / "cache", show_progress=False)
    files = sorted((tmp_path / "cache").iterdir())

    def encoders_ran(*args, **kwargs):
        raise AssertionError("the frozen encoders ran again for a keyframe already in the cache")

    monkeypatch.setattr(captioner.model, "encode_visual", encoders_ran)
    monkeypatch.setattr(captioner.model.clip, "forward", encoders_ran)
    again = CachedEncoderDataset(dataset, captioner, tmp_path / "cache", show_progress=False)
    assert sorted((tmp_path / "cache").iterdir()) == files
    for index in range(len(dataset)):
        for key, value in first[index].items():
            assert torch.equal(again[index][key], value), key


def test_a_cache_made_in_another_precision_or_on_another_device_is_not_reused(dataset, captioner, tiny_base, tmp_path):
    """A bf16 cache made on a GPU must not feed an fp32 resume on a CPU: the key holds the dtype and the
    device type (here bf16 on the CPU, and the same model said to be on a GPU)."""
    import copy

    from clip_vlm_core.data.dataset import encoder_cache_key

    bf16 = SceneCaptioner.build(tiny_captioner_config(tiny_base), device="cpu", dtype="bfloat16", trainable=True)
    CachedEncoderDataset(dataset, bf16, tmp_path / "cache", show_progress=False)
    resumed = CachedEncoderDataset(dataset, captioner, tmp_path / "cache", show_progress=False)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2 * len(dataset.rows)
    assert resumed[0]["clip_tokens"].dtype == torch.float32 and resumed[0]["visual_0"].dtype == torch.float32
    on_gpu = copy.copy(captioner)
    on_gpu.device = torch.device("cuda")
    keys = {encoder_cache_key(c) for c in (captioner, bf16, on_gpu)}
    assert len(keys) == 3


def test_the_cache_key_follows_the_base_weights_and_the_pixel_budget_not_the_folder(dataset, tiny_base, tmp_path):
    import dataclasses
    import shutil

    from clip_vlm_core.data.dataset import encoder_cache_key

    def key(base: dict, **changes) -> str:
        config = dataclasses.replace(tiny_captioner_config(base), **changes)
        return encoder_cache_key(SceneCaptioner.build(config, device="cpu"))

    moved = {name: tmp_path / "moved" / name for name in tiny_base}
    for name, folder in tiny_base.items():
        shutil.copytree(folder, moved[name])  # a run folder moved elsewhere keeps its cache
    assert key(moved) == key(tiny_base)
    assert key(tiny_base, max_pixels=28 * 28 * 8) != key(tiny_base)
    weights = next(moved["qwen"].glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # rewritten in place, as a retrained base model would be
    assert key(moved) != key(tiny_base)


# -- question-answer items ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qa_dataset(manifest_of, captioner):
    """The training split with the synthetic world's questions: 4 keyframes x (1 caption + every type x
    TRAINING_QUESTIONS_PER_TYPE questions)."""
    out = manifest_of(qa_file="qa.jsonl")
    return CaptionDataset(load_manifest(out / "mini_train.jsonl"), read_manifest_meta(out)["dataroot"], captioner.views)


def test_a_question_item_asks_in_place_of_the_prompt_and_labels_only_the_answer(qa_dataset, captioner):
    from clip_vlm_core.data.scene_questions import QUESTION_TYPES
    from clip_vlm_core.data.synthetic import TRAINING_QUESTIONS_PER_TYPE

    questions = 4 * len(QUESTION_TYPES) * TRAINING_QUESTIONS_PER_TYPE
    assert len(qa_dataset) == 4 + questions and qa_dataset.caption_indices == [0, 1, 2, 3]
    assert len(qa_dataset.qa_indices) == questions
    item = qa_dataset[qa_dataset.qa_indices[0]]
    batch = RawCollator(captioner)([qa_dataset[0], item])
    tokenizer = captioner.processor.tokenizer
    labelled = batch["labels"][1][batch["labels"][1] != -100]
    assert tokenizer.decode(labelled) == item["target"] + tokenizer.eos_token
    prompt = tokenizer.decode(batch["input_ids"][1][batch["labels"][1] == -100], skip_special_tokens=True)
    assert item["instruction"] in prompt and captioner.config.prompt not in prompt
    assert captioner.config.prompt in tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)


def test_cached_question_items_equal_raw_ones_from_one_file_per_keyframe(qa_dataset, captioner, tmp_path):
    cached = CachedEncoderDataset(qa_dataset, captioner, tmp_path / "cache", show_progress=False)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 4
    indices = [qa_dataset.qa_indices[7], 1, qa_dataset.qa_indices[30], qa_dataset.qa_indices[0]]
    raw = RawCollator(captioner)([qa_dataset[i] for i in indices])
    fast = collate_cached([cached[i] for i in indices], captioner.processor.tokenizer.pad_token_id)
    for key in ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "image_grid_thw"):
        assert torch.equal(raw[key], fast[key]), key
    with torch.no_grad():
        torch.testing.assert_close(captioner.model(**raw).loss, captioner.model(**fast).loss)
