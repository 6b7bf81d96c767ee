"""What a benchmark measures: the captioner, loaded the way the user asked, and inputs of the right shape.

Three kinds of weights, named in every report:
- "tiny": the embedded default model (tiny Qwen2.5-VL + OpenCLIP), so the benchmark runs on any CPU;
- "pretrained": a checkpoint folder or hub id given with --checkpoint, or Qwen2.5-VL-3B found in the
  local hub cache;
- "random": the full-size architecture with random weights. Timing does not depend on the values of
  the weights, and no tokenizer is needed to time a model: the prompt is built directly as token ids
  (Qwen's special-token ids, the image-pad tokens each view needs, text tokens as many as the real
  chat template has), and decoding is forced to a fixed length so EOS never ends it early.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clip_vlm_core.errors import UserError
from clip_vlm_core.images import EncodedImage
from clip_vlm_core.model.captioner import SceneCaptioner
from clip_vlm_core.model.checkpoint import resolve_device, resolve_dtype
from clip_vlm_core.model.full_size import (
    QWEN25_VL_3B_ID,
    QWEN25_VL_MAX_PIXELS,
    QWEN25_VL_MIN_PIXELS,
    QWEN_ENDOFTEXT_ID,
    QWEN_IM_END_ID,
    build_full_size_model,
    full_size_captioner_config,
)
from clip_vlm_core.model.fusion import MultiViewCaptionModel
from clip_vlm_core.model.image_decode import decode_images
from clip_vlm_core.model.loss import IGNORE_INDEX
from clip_vlm_core.model.preprocess import ImagePreprocessor, QwenPixelSpec

log = logging.getLogger(__name__)

# A nuScenes camera frame.
FRAME_HEIGHT, FRAME_WIDTH = 900, 1600
# Text tokens of the chat template around the images, as Qwen's tokenizer splits the default prompt:
# "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n", "CAM_FRONT: " before
# each view, the instruction, "<|im_end|>\n<|im_start|>assistant\n". At full resolution they are about 1%
# of the prompt, so an estimate off by a few tokens does not show in the timings.
PREFIX_TEXT_TOKENS = 14
VIEW_LABEL_TOKENS = 4
INSTRUCTION_TOKENS = 16
SUFFIX_TEXT_TOKENS = 5
FILLER_TOKEN_ID = 1000  # any ordinary (non-special) token of Qwen's vocabulary
CAPTION_WORDS = "a white van is parked on the right while a cyclist crosses ahead and a bus follows behind"

# (batch_size, caption_tokens) -> model inputs on the device; caption_tokens > 0 adds caption labels.
InputMaker = Callable[[int, int], dict[str, Any]]
# Samples of {view: encoded JPEG} -> model inputs on the device, the way the captioner makes them.
FramePreparer = Callable[[list[dict[str, EncodedImage]]], dict[str, Any]]


@dataclass
class BenchModel:
    model: MultiViewCaptionModel
    device: torch.device
    dtype: torch.dtype
    weights: str  # "tiny" | "pretrained" | "random"
    source: str
    views: tuple[str, ...]
    frame_size: tuple[int, int]  # (height, width) of the frames fed in, after --max-pixels
    eos_token_id: int
    pad_token_id: int
    make_inputs: InputMaker
    prepare_frames: FramePreparer

    def describe(self) -> dict[str, Any]:
        """The model part of a report: what was timed, at which resolution and precision."""
        probe = self.make_inputs(1, 0)
        merge = self.model.base_qwen.config.vision_config.spatial_merge_size
        image_tokens = [int(thw.prod()) // merge**2 for thw in probe["image_grid_thw"]]
        return {
            "weights": self.weights,
            "source": self.source,
            "views": list(self.views),
            "dtype": str(self.dtype).removeprefix("torch."),
            "quantized_layers": _quantized_layer_counts(self.model),
            "attn_implementation": self.model.base_qwen.config._attn_implementation,
            "frame_size": list(self.frame_size),
            "image_tokens_per_view": image_tokens[0],
            "prompt_tokens": int(probe["input_ids"].shape[1]),
        }


def _quantized_layer_counts(model) -> dict[str, int]:
    from clip_vlm_core.model.quantize import quantized_layers

    return quantized_layers(model)


def frame_size(max_pixels: int | None = None) -> tuple[int, int]:
    """A nuScenes frame's size as Qwen's processor resizes it: multiples of 28 within `max_pixels`
    (default: the released processor's budget, which keeps a 1600x900 frame at 1596x896)."""
    max_pixels = QWEN25_VL_MAX_PIXELS if max_pixels is None else max_pixels
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    if max_pixels < QWEN25_VL_MIN_PIXELS:
        raise UserError(f"--max-pixels {max_pixels} is below Qwen's minimum of {QWEN25_VL_MIN_PIXELS} pixels")
    return smart_resize(FRAME_HEIGHT, FRAME_WIDTH, factor=28, min_pixels=QWEN25_VL_MIN_PIXELS, max_pixels=max_pixels)


def load_bench_model(
    tiny: bool = False,
    checkpoint: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    trainable: bool = False,
    max_pixels: int | None = None,
    quantize: str | None = None,
) -> BenchModel:
    """The captioner to time: tiny, a given checkpoint, the cached pretrained model, or random weights;
    `quantize` (none, nf4, int8) loads its language model so (clip_vlm_core.model.quantize)."""
    resolved = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved)
    size = frame_size(max_pixels)
    if tiny:
        captioner = SceneCaptioner.from_pretrained(None, resolved, resolved_dtype, trainable=trainable,
                                                   quantize=quantize)
        source = "embedded default model (tiny Qwen2.5-VL + tiny OpenCLIP)"
        return _from_captioner(captioner, "tiny", source, size, max_pixels)
    if checkpoint:
        captioner = SceneCaptioner.from_pretrained(checkpoint, resolved, resolved_dtype, trainable=trainable,
                                                   quantize=quantize)
        return _from_captioner(captioner, "pretrained", checkpoint, size, max_pixels)
    captioner, why_not = _cached_full_size(resolved, resolved_dtype, trainable, quantize)
    if captioner is not None:
        source = f"{QWEN25_VL_3B_ID} from the local hub cache"
        return _from_captioner(captioner, "pretrained", source, size, max_pixels)
    log.warning("no pretrained weights (%s): timing the full-size architecture with RANDOM weights", why_not)
    # With LoRA adapters, as a fine-tuned checkpoint has them: inference is timed with what it would run.
    config = dataclasses.replace(full_size_captioner_config(), quantize=quantize or "none")
    model = build_full_size_model(resolved, resolved_dtype, trainable, config=config, lora=True)
    return BenchModel(
        model=model,
        device=resolved,
        dtype=resolved_dtype,
        weights="random",
        source=f"random weights in the shapes of {QWEN25_VL_3B_ID} + OpenCLIP ViT-L-14 ({why_not})",
        views=full_size_captioner_config().views,
        frame_size=size,
        eos_token_id=QWEN_IM_END_ID,
        pad_token_id=QWEN_ENDOFTEXT_ID,
        make_inputs=token_id_inputs(model, len(full_size_captioner_config().views), size, resolved),
        prepare_frames=token_id_frames(model, full_size_captioner_config().views, max_pixels, resolved),
    )


def _cached_full_size(device: torch.device, dtype: torch.dtype, trainable: bool,
                      quantize: str | None = None) -> tuple[SceneCaptioner | None, str]:
    """The pretrained full-size captioner if its weights are on this machine; never downloads."""
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(QWEN25_VL_3B_ID, "config.json"), str):
        return None, f"{QWEN25_VL_3B_ID} is not in the local hub cache"
    try:
        captioner = SceneCaptioner.build(
            full_size_captioner_config(), device, dtype, local_files_only=True, trainable=trainable, quantize=quantize
        )
    except UserError as exc:
        return None, str(exc)
    return captioner, ""


def _from_captioner(
    captioner: SceneCaptioner, weights: str, source: str, size: tuple[int, int], max_pixels: int | None
) -> BenchModel:
    tokenizer = captioner.processor.tokenizer
    budget = (captioner.processor.image_processor.size or {}).get("longest_edge")
    if max_pixels is not None and (not budget or max_pixels < budget):
        # Frames from JPEG bytes are 1600x900: the processor itself must resize them within the cap.
        captioner.processor.image_processor.size["longest_edge"] = budget = max_pixels
        captioner = SceneCaptioner(captioner.model, captioner.processor, captioner.config, captioner.device,
                                   captioner.model_name, captioner.decoding)
    # Training inputs are made from random frames at the size the processor would resize them to
    # anyway (random pixels lose nothing by it), which spares resizing 1600x900 frames to the tiny
    # model's budget on every batch.
    if budget and budget < size[0] * size[1]:
        size = frame_size(budget)
    return BenchModel(
        model=captioner.model,
        device=captioner.device,
        dtype=next(captioner.model.base_qwen.parameters()).dtype,
        weights=weights,
        source=source,
        views=captioner.views,
        frame_size=size,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        make_inputs=_processor_inputs(captioner, size),
        prepare_frames=lambda samples: captioner.prepare(samples, device=captioner.device, reuse_output=True),
    )


def _processor_inputs(captioner: SceneCaptioner, size: tuple[int, int]) -> InputMaker:
    """Inputs through the captioner's own processor, from random frames of the given size."""
    rng = np.random.default_rng(0)
    tokenizer = captioner.processor.tokenizer

    def make(batch_size: int, caption_tokens: int) -> dict[str, Any]:
        samples = [
            {view: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for view in captioner.views}
            for _ in range(batch_size)
        ]
        targets = [_caption_of_length(tokenizer, caption_tokens)] * batch_size if caption_tokens else None
        return captioner.to_device(captioner.prepare(samples, targets))

    return make


def _caption_of_length(tokenizer, tokens: int) -> str:
    """A caption of about `tokens` tokens (its end-of-text token included), cut at a word boundary."""
    words: list[str] = []
    vocabulary = CAPTION_WORDS.split()
    while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < tokens - 1:
        words.append(vocabulary[len(words) % len(vocabulary)])
    return " ".join(words) + "."


def token_id_prompt(model: MultiViewCaptionModel, num_views: int, image_tokens: int) -> list[int]:
    """The prompt as token ids in the chat template's layout (see the module's docstring)."""
    config = model.base_qwen.config
    filler = min(FILLER_TOKEN_ID, config.text_config.vocab_size - 1)
    prompt = [filler] * PREFIX_TEXT_TOKENS
    for _ in range(num_views):
        prompt += [filler] * VIEW_LABEL_TOKENS
        prompt += [config.vision_start_token_id, *[config.image_token_id] * image_tokens, config.vision_end_token_id]
    return prompt + [*[filler] * INSTRUCTION_TOKENS, config.text_config.eos_token_id, *[filler] * (SUFFIX_TEXT_TOKENS - 1)]


def token_id_inputs(model: MultiViewCaptionModel, num_views: int, size: tuple[int, int], device: torch.device) -> InputMaker:
    """Inputs built as token ids and random pixels, laid out as Qwen's chat template and processor would.

    Only the image-pad and end-of-text ids matter to the model's work; every other text token is one
    ordinary token repeated.
    """
    config = model.base_qwen.config
    vision = config.vision_config
    eos = config.text_config.eos_token_id
    filler = min(FILLER_TOKEN_ID, config.text_config.vocab_size - 1)
    grid = (1, size[0] // vision.patch_size, size[1] // vision.patch_size)
    image_tokens = grid[1] * grid[2] // vision.spatial_merge_size**2
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    clip_size = model.clip.visual.image_size
    clip_size = clip_size if isinstance(clip_size, int) else clip_size[0]
    pixel_dtype = next(model.base_qwen.parameters()).dtype

    prompt = token_id_prompt(model, num_views, image_tokens)

    def make(batch_size: int, caption_tokens: int) -> dict[str, Any]:
        caption = [*[filler] * (caption_tokens - 1), eos] if caption_tokens else []
        ids = torch.tensor([prompt + caption] * batch_size, device=device)
        images = batch_size * num_views
        inputs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": (ids == config.image_token_id).int(),
            "image_grid_thw": torch.tensor([grid] * images, device=device),
            "pixel_values": torch.randn(images * grid[1] * grid[2], patch_dim, device=device, dtype=pixel_dtype),
            "clip_pixels": torch.randn(images, 3, clip_size, clip_size, device=device, dtype=pixel_dtype),
        }
        if caption_tokens:
            labels = torch.full_like(ids, IGNORE_INDEX)
            labels[:, -caption_tokens:] = ids[:, -caption_tokens:]
            inputs["labels"] = labels
        return inputs

    return make


def token_id_frames(
    model: MultiViewCaptionModel, views: tuple[str, ...], max_pixels: int | None, device: torch.device
) -> FramePreparer:
    """Inputs from JPEG bytes for the random-weights model: pixels the captioner's way (decoded on the
    device, resized and laid out there, with the released processor's settings), prompt ids from the
    token-id recipe of `token_id_inputs` (the captioner takes its ids from a cache as well)."""
    vision = model.base_qwen.config.vision_config
    spec = QwenPixelSpec(patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                         temporal_patch_size=vision.temporal_patch_size, min_pixels=QWEN25_VL_MIN_PIXELS,
                         max_pixels=QWEN25_VL_MAX_PIXELS if max_pixels is None else max_pixels)
    pixels = ImagePreprocessor(spec, model.clip.pixel_spec)
    prompt = torch.tensor([token_id_prompt(model, len(views), spec.tokens(FRAME_HEIGHT, FRAME_WIDTH))])
    image_token_id = model.base_qwen.config.image_token_id

    def prepare(samples: list[dict[str, EncodedImage]]) -> dict[str, Any]:
        decoded = decode_images([sample[view] for sample in samples for view in views], device)
        bad = [str(image) for image in decoded if not isinstance(image, torch.Tensor)]
        if bad:
            raise RuntimeError(f"a benchmark frame cannot be decoded: {bad[0]}")
        ids = prompt.repeat(len(samples), 1).to(device, non_blocking=True)
        tokens = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                  "mm_token_type_ids": (ids == image_token_id).long()}
        return tokens | pixels(decoded, device, reuse_output=True)

    return prepare
