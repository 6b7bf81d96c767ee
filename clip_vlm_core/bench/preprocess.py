"""`bench preprocess`: JPEG bytes to model-ready tensors, per 1600x900 pair, two ways in one run.

- transformers: what the captioner did before (and what the node did around it): OpenCV decodes each
  JPEG on the CPU, the frame becomes a PIL image, Qwen's processor tokenizes the prompt with every
  image-pad token written out and preprocesses the images, OpenCLIP's transform makes CLIP's input
  image by image, and the tensors are copied to the device;
- captioner: `SceneCaptioner.prepare(..., device=D)` on the same bytes, as caption() calls it: frames
  decoded on D (nvJPEG on a GPU), resized and laid out there as tensor operations, prompt ids from
  the cache, `pixel_values` written into the buffer of the previous call.

The two are timed interleaved (one of each per round) so both see the same machine load, and their
outputs are compared: the largest absolute difference per input tensor, also in uint8 levels.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import cv2
import numpy as np
import torch

from clip_vlm_core.bench.frames import camera_samples
from clip_vlm_core.bench.measure import environment, timed
from clip_vlm_core.bench.settings import PreprocessBenchSettings
from clip_vlm_core.errors import UserError
from clip_vlm_core.images import to_rgb
from clip_vlm_core.latency import percentile
from clip_vlm_core.model.captioner import SceneCaptioner
from clip_vlm_core.model.checkpoint import resolve_device
from clip_vlm_core.progress import progress_bar

log = logging.getLogger(__name__)

DISTINCT_ROUNDS = 4  # different frames per round, so no decoder or cache sees the same bytes twice in a row


def benchmark_preprocessing(captioner: SceneCaptioner, settings: PreprocessBenchSettings, source: str) -> dict[str, Any]:
    device = captioner.device
    rounds = [camera_samples(captioner.views, settings.pairs, seed) for seed in range(DISTINCT_ROUNDS)]
    paths = {
        "transformers": lambda batch: transformers_inputs(captioner, batch, device),
        "captioner": lambda batch: captioner.prepare(batch, device=device, reuse_output=True),  # as caption() does
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    for step in progress_bar(range(settings.warmup + settings.iters), desc="preprocess bench", unit="round"):
        batch = rounds[step % DISTINCT_ROUNDS]
        for name, make in paths.items():
            seconds, _ = timed(lambda make=make, batch=batch: make(batch), device)
            if step >= settings.warmup:
                times[name].append(seconds / settings.pairs)
    reference, ours = paths["transformers"](rounds[0]), captioner.prepare(rounds[0], device=device)
    differences = compare_inputs(reference, ours, captioner)
    transformers_ms = percentile(times["transformers"], 50) * 1000
    captioner_ms = percentile(times["captioner"], 50) * 1000
    first = rounds[0][0][captioner.views[0]]
    grid = ours["image_grid_thw"][0].tolist()
    return {
        "benchmark": "preprocess",
        "device": str(device),
        "environment": environment(device),
        "source": source,
        "settings": dataclasses.asdict(settings),
        "frame": {"width": first.width, "height": first.height, "jpeg_bytes": len(first.data),
                  "qwen_size": [grid[1] * captioner.pixel_spec.patch_size, grid[2] * captioner.pixel_spec.patch_size],
                  "image_tokens_per_view": grid[1] * grid[2] // captioner.pixel_spec.merge_size**2,
                  "clip_size": captioner.model.clip.pixel_spec.size},
        "transformers_ms_per_pair": transformers_ms,
        "captioner_ms_per_pair": captioner_ms,
        "transformers_ms_per_pair_p95": percentile(times["transformers"], 95) * 1000,
        "captioner_ms_per_pair_p95": percentile(times["captioner"], 95) * 1000,
        "speedup": transformers_ms / captioner_ms,
        "max_abs_diff": max(d["max_abs_diff"] for d in differences["tensors"].values()),
        **differences,
    }


def transformers_inputs(captioner: SceneCaptioner, batch: list[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """The inputs as the captioner made them before (processor + OpenCLIP transform on PIL images),
    from JPEG bytes decoded as the node decoded them (OpenCV, BGR to RGB), then copied to `device`."""
    flat = []
    for i, sample in enumerate(batch):
        for view in captioner.views:
            bgr = cv2.imdecode(np.frombuffer(sample[view].data, np.uint8), cv2.IMREAD_COLOR)
            flat.append(to_rgb(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f"sample {i} view {view}"))
    texts = [captioner.inputs.prompt_text(None)] * len(batch)
    inputs = dict(captioner.processor(text=texts, images=flat, padding=True, return_tensors="pt"))
    inputs["clip_pixels"] = captioner.model.clip.preprocess(flat)
    return {k: v.to(device) for k, v in inputs.items()}


def compare_inputs(reference: dict[str, Any], ours: dict[str, Any], captioner: SceneCaptioner) -> dict[str, Any]:
    """Token tensors must be equal; pixel tensors differ by at most this much (also in uint8 levels:
    the difference times 255 x std of its channel)."""
    if sorted(reference) != sorted(ours):
        raise RuntimeError(f"the two paths give different inputs: {sorted(reference)} vs {sorted(ours)}")
    ids_equal = all(torch.equal(reference[k].cpu(), ours[k].cpu())
                    for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"))
    stds = {"pixel_values": captioner.pixel_spec.std, "clip_pixels": captioner.model.clip.pixel_spec.std}
    tensors = {}
    for key, std in stds.items():
        a, b = reference[key].float().cpu(), ours[key].float().cpu()
        if a.shape != b.shape:
            raise RuntimeError(f"{key}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        channels = a.view(a.shape[0], 3, -1) if key == "pixel_values" else a.flatten(2)
        diff = (channels - (b.view(b.shape[0], 3, -1) if key == "pixel_values" else b.flatten(2))).abs()
        levels = diff * torch.tensor(std).view(1, 3, 1) * 255.0
        tensors[key] = {"max_abs_diff": float(diff.max()), "max_uint8_levels": float(levels.max()),
                        "fraction_differing": float((diff > 0).float().mean())}
    return {"token_ids_equal": ids_equal, "tensors": tensors}


def preprocessing_captioner(
    tiny: bool, checkpoint: str | None, device: str | None, max_pixels: int | None
) -> tuple[SceneCaptioner, str]:
    """The captioner whose preprocessing is timed, and a sentence saying what it is.

    Default: the full-size architecture on the meta device (prepare() reads no weights) with Qwen2.5-VL-
    3B's processor from the local hub cache, or its released image settings with the tiny tokenizer
    (the same special tokens and chat template) where the real one is not on this machine.
    """
    resolved = resolve_device(device)
    if tiny or checkpoint:
        loaded = SceneCaptioner.from_pretrained(checkpoint or None, device=resolved)
        model, processor, config = loaded.model, loaded.processor, loaded.config
        source = f"{'the embedded tiny model' if tiny else checkpoint}'s own processor"
    else:
        from clip_vlm_core.model.full_size import assemble_random, full_size_captioner_config

        config = full_size_captioner_config()
        with torch.device("meta"):
            model = assemble_random(config, trainable=False)
        processor, source = released_processor()
    if max_pixels is not None:
        if max_pixels < processor.image_processor.size["shortest_edge"]:
            raise UserError(f"--max-pixels {max_pixels} is below the processor's minimum of "
                            f"{processor.image_processor.size['shortest_edge']} pixels")
        processor.image_processor.size["longest_edge"] = max_pixels
        source += f", max_pixels {max_pixels}"
    return SceneCaptioner(model, processor, config, resolved, "preprocess bench"), source


def released_processor() -> tuple[Any, str]:
    """Qwen2.5-VL-3B-Instruct's processor if cached here, else its released image settings (patch 14,
    merge 2, temporal patch 2, 3136..12845056 pixels, OpenAI CLIP mean/std, bicubic) with a stand-in
    tokenizer."""
    from transformers import AutoProcessor, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from clip_vlm_core.model.full_size import QWEN25_VL_3B_ID, QWEN25_VL_MAX_PIXELS, QWEN25_VL_MIN_PIXELS
    from clip_vlm_core.model.tiny import QWEN_CHAT_TEMPLATE, build_tiny_tokenizer

    try:
        processor = AutoProcessor.from_pretrained(QWEN25_VL_3B_ID, local_files_only=True)
        source = f"{QWEN25_VL_3B_ID}'s processor from the local hub cache"
    except OSError:
        image_processor = Qwen2VLImageProcessor(min_pixels=QWEN25_VL_MIN_PIXELS, max_pixels=QWEN25_VL_MAX_PIXELS)
        processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=build_tiny_tokenizer(),
                                        video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN_CHAT_TEMPLATE)
        source = (f"{QWEN25_VL_3B_ID}'s released image settings; tokenizer: a stand-in with its special tokens "
                  "and chat template (the released one is not on this machine)")
    processor.tokenizer.padding_side = "left"
    return processor, source

