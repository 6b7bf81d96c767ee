"""The static-cache greedy decoder gives exactly transformers' greedy tokens (its step runs eagerly on CPU;
the GPU adds only the graph capture of the same step, checked by tests/test_gpu.py on a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clip_vlm_core
from clip_vlm_core.config import DecodingConfig
from clip_vlm_core.model import SceneCaptioner
from clip_vlm_core.model.fast_decode import greedy_decoding, handles
from clip_vlm_core.model.vision_attention import (
    disable_varlen_vision_attention,
    enable_varlen_vision_attention,
)

SAMPLES = Path(clip_vlm_core.__file__).parent / "assets" / "samples"


@pytest.fixture
def captioner(embedded_captioner):
    return embedded_captioner  # loaded once for the session (conftest.py)


def sample_pair(size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    pair = {}
    for view, name in (("CAM_FRONT", "front.jpg"), ("CAM_BACK", "back.jpg")):
        image = Image.open(SAMPLES / name).convert("RGB")
        pair[view] = np.asarray(image.resize(size) if size else image)
    return pair


def batch_with_padding() -> list[dict[str, np.ndarray]]:
    """Three pairs whose frames give different numbers of visual tokens, so one prompt is left-padded."""
    return [sample_pair(), sample_pair((84, 56)), sample_pair((112, 84))]


def generate_both(
    captioner: SceneCaptioner, batch, cuda_graphs: bool = False, decoding: DecodingConfig | None = None, **settings
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' tokens and the static decoder's, for one DecodingConfig (default: greedy, stopping on the
    tokenizer's end token; `settings` replace some of its fields)."""
    tokenizer = captioner.processor.tokenizer
    inputs = captioner.to_device(captioner.prepare(batch))
    decoding = (decoding or DecodingConfig(eos_token_ids=(tokenizer.eos_token_id,))).with_overrides(**settings)
    model = captioner.model
    model.fast_decoder = None
    reference = model.generate(**inputs, decoding=decoding, pad_token_id=tokenizer.pad_token_id)
    decoder = model.enable_fast_decoding(cuda_graphs=cuda_graphs)
    try:
        fast = model.generate(**inputs, decoding=decoding, pad_token_id=tokenizer.pad_token_id)
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


@pytest.mark.slow  # 20-40 s on 2 shared cores
def test_greedy_tokens_equal_transformers_generate_with_left_padding(captioner):
    pad = captioner.processor.tokenizer.pad_token_id
    reference, fast = generate_both(captioner, batch_with_padding(), cuda_graphs=True, max_new_tokens=40)
    assert strip_padding(fast, pad) == strip_padding(reference, pad)
    eos = captioner.processor.tokenizer.eos_token_id
    assert all(eos in row for row in reference.tolist()), "captions should end by themselves within 40 tokens"


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "with-capture-warm-up"])
def test_min_new_tokens_forbids_eos_like_transformers(captioner, cuda_graphs):
    """With cuda_graphs the capture's warm-up steps run for real (off CUDA no graph follows): the state
    they advance must be rewound exactly, or the caption would start at the wrong position."""
    reference, fast = generate_both(captioner, [sample_pair()], cuda_graphs, max_new_tokens=48, min_new_tokens=48)
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
    from transformers import GenerationConfig

    ids = {"eos_token_ids": (2, 0)}
    assert handles(DecodingConfig(max_new_tokens=8, num_beams=1, do_sample=False, repetition_penalty=1.2, **ids))
    assert handles(DecodingConfig(max_new_tokens=8, min_new_tokens=8, **ids))
    assert not handles(DecodingConfig(max_new_tokens=8, num_beams=3, **ids))
    assert not handles(DecodingConfig(max_new_tokens=8, do_sample=True, temperature=0.7, **ids))
    # what the settings leave unset comes from the model's generation config, as in generate()
    assert not handles(DecodingConfig(max_new_tokens=8, **ids), GenerationConfig(no_repeat_ngram_size=3))
    assert handles(DecodingConfig(max_new_tokens=8, **ids), GenerationConfig(do_sample=True, top_k=1))  # do_sample: ours
    assert not handles(DecodingConfig(max_new_tokens=8))  # no EOS id known: nothing to stop on
    assert handles(DecodingConfig(max_new_tokens=8), GenerationConfig(eos_token_id=[2, 0], pad_token_id=0))
    resolved = greedy_decoding(DecodingConfig(max_new_tokens=8), GenerationConfig(eos_token_id=[2, 0],
                                                                                  repetition_penalty=1.05))
    assert (resolved.eos_token_ids, resolved.repetition_penalty) == ((2, 0), 1.05)


@pytest.fixture(scope="module")
def qwen_shaped(tmp_path_factory):
    """An untrained tiny captioner whose generation_config.json is shaped like Qwen2.5-VL-3B-Instruct's:
    two EOS ids (<|im_end|>, <|endoftext|>), repetition_penalty 1.05, sampling with top_k 1. Seed 1: its
    random captions run for many tokens (seed 0's, with the current tiny tokenizer, end at the first), so the
    penalty and the stop ids have something to act on."""
    from clip_vlm_core.model.tiny import save_untrained_tiny_checkpoint

    checkpoint = save_untrained_tiny_checkpoint(tmp_path_factory.mktemp("qwen-shaped") / "checkpoint", seed=1)
    return SceneCaptioner.from_pretrained(checkpoint, device="cpu")


@pytest.mark.parametrize("penalty", [None, 1.8], ids=["model-default-1.05", "strong-1.8"])
def test_static_decoder_applies_the_repetition_penalty_like_transformers(qwen_shaped, penalty):
    settings = qwen_shaped.decoding_in_effect(repetition_penalty=penalty, max_new_tokens=24)
    pad = qwen_shaped.processor.tokenizer.pad_token_id
    reference, fast = generate_both(qwen_shaped, batch_with_padding(), cuda_graphs=True, decoding=settings)
    assert strip_padding(fast, pad) == strip_padding(reference, pad)
    unpenalised, _ = generate_both(qwen_shaped, batch_with_padding(), decoding=settings, repetition_penalty=1.0)
    assert not torch.equal(unpenalised, reference), "the penalty must change these captions for the test to mean anything"


def test_static_decoder_stops_on_every_eos_id_like_transformers(qwen_shaped):
    """A second stop id (a token the model is known to emit first at a later step of row 0) ends that row there."""
    tokenizer = qwen_shaped.processor.tokenizer
    settings = qwen_shaped.decoding_in_effect(max_new_tokens=16)
    free, _ = generate_both(qwen_shaped, batch_with_padding(), decoding=settings)
    emitted = free[0].tolist()
    step = next(i for i in range(1, len(emitted)) if emitted[i] not in emitted[:i]
                and emitted[i] not in (tokenizer.eos_token_id, tokenizer.pad_token_id))
    stop = emitted[step]
    reference, fast = generate_both(qwen_shaped, batch_with_padding(), cuda_graphs=True, decoding=settings,
                                    eos_token_ids=(tokenizer.eos_token_id, stop))
    assert reference[0, step] == stop and (reference[0, step + 1:] == tokenizer.pad_token_id).all()
    assert strip_padding(fast, tokenizer.pad_token_id) == strip_padding(reference, tokenizer.pad_token_id)


def test_packed_vision_attention_is_wired_like_transformers_per_window_attention(captioner):
    """Off CUDA the packed path runs its reference kernel: the vision tower's output must not change, which
    checks the layout the flash kernel gets (cu_seqlens, [T, H, D]) and the layout it returns."""
    inputs = captioner.prepare(batch_with_padding())
    qwen = captioner.model.base_qwen
    assert enable_varlen_vision_attention(qwen) == "needs a CUDA device, the model is on cpu"
    with torch.no_grad():
        reference = captioner.model.encode_visual(inputs["pixel_values"], inputs["image_grid_thw"])
        assert enable_varlen_vision_attention(qwen, anywhere=True) is None
        try:
            packed = captioner.model.encode_visual(inputs["pixel_values"], inputs["image_grid_thw"])
        finally:
            disable_varlen_vision_attention(qwen)
    assert len(packed) == len(reference) == 6
    for got, expected in zip(packed, reference, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_failing_fast_decoder_falls_back_to_transformers_with_a_warning(captioner, caplog):
    """On a GPU/library pairing the fast path breaks on, captions must still come, from generate()."""
    from clip_vlm_core.model.fast_decode import StaticGreedyDecoder

    expected = captioner.caption([sample_pair()])
    captioner.model.fast_decoder = StaticGreedyDecoder(qwen=torch.nn.Identity())  # cannot prefill anything
    try:
        got = captioner.caption([sample_pair()])
        assert captioner.model.fast_decoder is None
    finally:
        captioner.model.fast_decoder = None
    assert got == expected
    assert "fast decoding failed" in caplog.text and "generate() from now on" in caplog.text


def test_merged_lora_and_static_decoder_keep_the_captions_and_undo_cleanly():
    captioner = SceneCaptioner.from_pretrained(None, device="cpu")
    batch = batch_with_padding()
    expected = captioner.caption(batch)
    applied = captioner.optimize_for_inference(decoder="static", merge_lora=True)
    assert applied == {
        "decoder": "static cache (eager, no GPU)",
        "vision_attention": "sdpa per window",
        "lora": "merged into the weights",
    }
    assert captioner.caption(batch) == expected
    assert captioner.optimize_for_inference(decoder="transformers", merge_lora=False)["lora"] == "separate adapters"
    assert not any(getattr(m, "merged", False) for m in captioner.model.qwen.modules())
    assert captioner.model.fast_decoder is None
    assert captioner.caption(batch) == expected


@pytest.mark.slow  # builds Qwen2.5-VL-3B's widths (and ViT-L-14) with 3 layers: ~30 s on 2 CPU cores
def test_static_decoder_at_qwen25_vl_3b_attention_shapes():
    """The GPU will run 16 query heads on 2 KV heads of 128 dims with mrope sections [16, 24, 24] and a
    151,936-word vocabulary: the same greedy tokens as transformers at those shapes, left padding included.
    (At all 36 layers in bf16 with random weights, logits tie exactly often enough that the two paths'
    rounding picks different tied tokens; with 3 layers there are no ties to break.)"""
    from clip_vlm_core.bench.subject import frame_size, token_id_inputs
    from clip_vlm_core.model.full_size import (
        QWEN_ENDOFTEXT_ID,
        QWEN_IM_END_ID,
        build_full_size_model,
        qwen25_vl_3b_config,
    )

    qwen_config = qwen25_vl_3b_config()
    qwen_config.text_config.num_hidden_layers = 3
    qwen_config.text_config.layer_types = qwen_config.text_config.layer_types[:3]
    qwen_config.text_config.intermediate_size = 1024
    qwen_config.vision_config.depth = 2
    qwen_config.vision_config.fullatt_block_indexes = [1]
    model = build_full_size_model(torch.device("cpu"), torch.float32, trainable=False, lora=True,
                                  qwen_config=qwen_config)
    text = model.base_qwen.config.text_config
    assert (text.num_attention_heads, text.num_key_value_heads, text.hidden_size // text.num_attention_heads) == (16, 2, 128)
    inputs = token_id_inputs(model, 2, frame_size(12544), torch.device("cpu"))(3, 0)
    inputs["attention_mask"][1, :3] = 0
    inputs["attention_mask"][2, :7] = 0
    kwargs = {"decoding": DecodingConfig(max_new_tokens=16, eos_token_ids=(QWEN_IM_END_ID,)),
              "pad_token_id": QWEN_ENDOFTEXT_ID}
    reference = model.generate(**inputs, **kwargs)
    model.enable_fast_decoding(cuda_graphs=True)  # off CUDA: the capture's warm-up and rewind, no graph
    assert torch.equal(model.generate(**inputs, **kwargs), reference)
