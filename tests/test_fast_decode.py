"""The static-cache greedy decoder gives exactly transformers' greedy tokens (its step runs eagerly on CPU;
the GPU adds only the graph capture of the same step, checked by tests/test_gpu.py on a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clip_vlm_core
from clip_vlm_core.model import SceneCaptioner
from clip_vlm_core.model.fast_decode import handles

SAMPLES = Path(clip_vlm_core.__file__).parent / "assets" / "samples"


@pytest.fixture(scope="module")
def captioner():
    return SceneCaptioner.from_pretrained(None, device="cpu")


def sample_pair(size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    pair = {}
    for view, name in (("CAM_FRONT", "front.jpg"), ("CAM_BACK", "back.jpg")):
        image = Image.open(SAMPLES / name).convert("RGB")
        pair[view] = np.asarray(image.resize(size) if size else image)
    return pair


def batch_with_padding() -> list[dict[str, np.ndarray]]:
    """Three pairs whose frames give different numbers of visual tokens, so one prompt is left-padded."""
    return [sample_pair(), sample_pair((84, 56)), sample_pair((112, 84))]


def generate_both(captioner: SceneCaptioner, batch, **decoding) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = captioner.processor.tokenizer
    inputs = captioner.to_device(captioner.prepare(batch))
    kwargs = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, **decoding}
    model = captioner.model
    model.fast_decoder = None
    reference = model.generate(**inputs, **kwargs)
    decoder = model.enable_fast_decoding()
    try:
        fast = model.generate(**inputs, **kwargs)
        assert len(decoder._sessions) == 1, "the fast decoder was not used"
    finally:
        model.fast_decoder = None
    return reference, fast


def strip_padding(tokens: torch.Tensor, pad: int) -> list[list[int]]:
    rows = []
    for row in tokens.tolist():
        while row and row[-1] == pad:
            row.pop()
        rows.append(row)
    return rows


def test_prompts_really_differ_in_length(captioner):
    inputs = captioner.prepare(batch_with_padding())
    assert (inputs["attention_mask"] == 0).any(), "the test batch must exercise left padding"


def test_greedy_tokens_equal_transformers_generate_with_left_padding(captioner):
    pad = captioner.processor.tokenizer.pad_token_id
    reference, fast = generate_both(captioner, batch_with_padding(), max_new_tokens=40)
    assert strip_padding(fast, pad) == strip_padding(reference, pad)
    eos = captioner.processor.tokenizer.eos_token_id
    assert all(eos in row for row in reference.tolist()), "captions should end by themselves within 40 tokens"


def test_min_new_tokens_forbids_eos_like_transformers(captioner):
    reference, fast = generate_both(captioner, [sample_pair()], max_new_tokens=48, min_new_tokens=48)
    assert fast.shape == reference.shape == (1, 48)
    assert torch.equal(fast, reference)


def test_fast_decoder_serves_repeated_calls_and_batch_sizes(captioner):
    """Sessions are kept per (batch, cache length): a second call and another batch size reuse nothing stale."""
    model = captioner.model
    expected = [captioner.caption([sample_pair()])[0], *captioner.caption([sample_pair(), sample_pair((84, 56))])]
    model.enable_fast_decoding()
    try:
        got = [captioner.caption([sample_pair()])[0], *captioner.caption([sample_pair(), sample_pair((84, 56))])]
        again = captioner.caption([sample_pair()])
    finally:
        model.fast_decoder = None
    assert got == expected
    assert again == expected[:1]


def test_settings_other_than_greedy_fall_back_to_transformers():
    assert handles({"max_new_tokens": 8, "num_beams": 1, "do_sample": False, "repetition_penalty": 1.0})
    assert not handles({"max_new_tokens": 8, "num_beams": 3})
    assert not handles({"max_new_tokens": 8, "do_sample": True, "temperature": 0.7})
    assert not handles({"max_new_tokens": 8, "repetition_penalty": 1.2})
