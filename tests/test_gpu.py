"""GPU-only checks of the inference speed-ups: skipped where there is no CUDA device (CI has none).

Run on a GPU machine with `python -m pytest tests/test_gpu.py`; BENCHMARKS.md records the last run.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from clip_vlm_core.model import SceneCaptioner
from clip_vlm_core.model.inference import optimize_for_inference
from clip_vlm_core.model.vision_attention import (
    disable_varlen_vision_attention,
    enable_varlen_vision_attention,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def pairs(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    sizes = [(112, 196), (84, 140), (112, 168)]
    return [
        {view: rng.integers(0, 256, (*sizes[(i + j) % len(sizes)], 3), dtype=np.uint8)
         for j, view in enumerate(("CAM_FRONT", "CAM_BACK"))}
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def captioner_fp32():
    return SceneCaptioner.from_pretrained(None, device="cuda", dtype="float32")


def test_cuda_graph_decoder_gives_transformers_greedy_captions(captioner_fp32):
    batch = pairs(5)
    expected = captioner_fp32.caption(batch)
    decoder = captioner_fp32.model.enable_fast_decoding(cuda_graphs=True)
    try:
        got = captioner_fp32.caption(batch)
        again = captioner_fp32.caption(batch[:2])
        assert any(s.graph is not None for s in decoder._sessions.values()), "no CUDA graph was captured"
    finally:
        captioner_fp32.model.fast_decoder = None
    assert got == expected
    assert again == expected[:2]


def test_base_model_mode_is_not_served_by_stale_graphs(captioner_fp32):
    model = captioner_fp32.model
    batch = pairs(2, seed=1)
    with model.base_model_mode():
        base_expected = captioner_fp32.caption(batch)
    tuned_expected = captioner_fp32.caption(batch)
    model.enable_fast_decoding(cuda_graphs=True)
    try:
        tuned = captioner_fp32.caption(batch)
        with model.base_model_mode():
            base = captioner_fp32.caption(batch)
        tuned_again = captioner_fp32.caption(batch)
    finally:
        model.fast_decoder = None
    assert (tuned, base, tuned_again) == (tuned_expected, base_expected, tuned_expected)


def test_varlen_vision_attention_matches_per_window_sdpa():
    captioner = SceneCaptioner.from_pretrained(None, device="cuda", dtype="bfloat16")
    inputs = captioner.to_device(captioner.prepare(pairs(3)))
    qwen = captioner.model.base_qwen
    with torch.no_grad():
        reference = torch.cat(captioner.model.encode_visual(inputs["pixel_values"], inputs["image_grid_thw"]))
        assert enable_varlen_vision_attention(qwen) is None
        try:
            packed = torch.cat(captioner.model.encode_visual(inputs["pixel_values"], inputs["image_grid_thw"]))
        finally:
            disable_varlen_vision_attention(qwen)
    torch.testing.assert_close(packed, reference, atol=2e-2, rtol=2e-2)


def test_all_inference_settings_together_keep_the_captions():
    captioner = SceneCaptioner.from_pretrained(None, device="cuda", dtype="bfloat16")
    batch = pairs(4, seed=2)
    expected = captioner.caption(batch)
    fast = copy.deepcopy(captioner)
    applied = optimize_for_inference(fast.model)
    assert applied == {
        "decoder": "static cache + CUDA graphs",
        "vision_attention": "flash varlen (all windows at once)",
        "lora": "merged into the weights",
    }
    got = fast.caption(batch)
    # bf16 rounding differs between merged and separate adapters: allow a word, not a different scene
    same = sum(g == e for g, e in zip(got, expected, strict=True))
    assert same >= len(batch) - 1, (got, expected)
