"""`bench surround`: what seeing more costs: a history per view and context views, stage by stage.

Four layouts of the same model (its architecture as given; weights do not change the cost): the two full
views alone, with K past frames per view, with the four side cameras as context views, and with both. Each
caption starts from 1600x900 JPEG bytes of every frame it reads and is forced to exactly `max_new_tokens`;
the layouts take turns, one caption each, so that a busy machine's slow spells fall on all of them:

    decode       JPEG bytes -> uint8 tensors (every frame the caption reads)
    prepare      resize and normalise for both encoders, the prompt's token ids
    encoders     Qwen's vision tower (full views' current frames) + OpenCLIP (every view and frame)
    connector    the memory E over every (view, frame) and the cross-attention into Qwen's tokens
    generation   prefill and decode of the language model

"cached" is the same caption where past frames' CLIP tokens are kept from earlier captions (the node
encodes each frame once): decode, prepare and CLIP then cover only the current frames. Medians of `iters` runs after
`warmup`; on a shared CPU the figures are noisy, and the ratios are what to read.

`full_size_arithmetic` adds, for the full-size model, the tokens and FLOPs per caption of each layout
(2 views, 6 full views, 2 + 4 context, each with and without a history), counted from the models' shapes.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import torch

from clip_vlm_core.bench.frames import camera_samples
from clip_vlm_core.config import CaptionerConfig, DecodingConfig
from clip_vlm_core.model.inputs import HISTORY

SIDES = ("CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
STAGES = ("decode", "prepare", "encoders", "connector", "generation")


def layouts(history: int, patch: bool = False) -> dict[str, tuple[tuple[str, ...], int, str]]:
    """Name -> (context views, past frames per view, CLIP tokens); `patch`: the layouts with a history again,
    with every patch token of each (view, frame) in the memory instead of one pooled token."""
    rows = {"2 views": ((), 0, "pooled"), f"2 views + history {history}": ((), history, "pooled"),
            "2 + 4 context": (SIDES, 0, "pooled"), f"2 + 4 context + history {history}": (SIDES, history, "pooled")}
    if patch:
        rows |= {f"2 views + history {history}, patch": ((), history, "patch"),
                 f"2 + 4 context + history {history}, patch": (SIDES, history, "patch")}
    return rows


def benchmark_surround(config: CaptionerConfig, history: int = 3, iters: int = 5, warmup: int = 1,
                       max_new_tokens: int = 16, device: str = "cpu", patch: bool = False) -> dict[str, Any]:
    """{layout: {stage: median ms, "total": ms, "total_cached": ms, "clip_frames": n}} for `config`'s
    architecture, plus each layout's total as a ratio of the two views' (`patch`: see `layouts`)."""
    from clip_vlm_core.model import SceneCaptioner

    captioners = {name: SceneCaptioner.build(dataclasses.replace(config, context_views=context, history_frames=frames,
                                                                 clip_tokens=tokens), device=device)
                  for name, (context, frames, tokens) in layouts(history, patch).items()}
    # Interleaved, a caption of each layout in turn: a busy machine's slow spells fall on every layout alike.
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in captioners}
    for seed in range(warmup + iters):
        for name, captioner in captioners.items():
            times = _one_caption(captioner, seed, max_new_tokens)
            if seed >= warmup:
                runs[name].append(times)
    results: dict[str, Any] = {}
    for name, captioner in captioners.items():
        stages = {stage: statistics.median(run[stage] for run in runs[name])
                  for stage in (*STAGES, "decode_current", "prepare_current", "clip_past")}
        total = sum(stages[s] for s in STAGES)
        cached = total - (stages["decode"] - stages["decode_current"]) - (stages["prepare"] - stages["prepare_current"]) \
            - stages["clip_past"]
        layout = captioner.config
        results[name] = {**{s: round(stages[s], 1) for s in STAGES}, "total": round(total, 1),
                         "total_cached": round(cached, 1),
                         "clip_frames": (len(layout.views) + len(layout.context_views)) * (layout.history_frames + 1)}
    base = results["2 views"]["total"]
    for result in results.values():
        result["ratio"] = round(result["total"] / base, 3)
        result["ratio_cached"] = round(result["total_cached"] / base, 3)
    return results


@torch.no_grad()
def _one_caption(captioner, seed: int, max_new_tokens: int) -> dict[str, float]:
    """One caption's stage times in ms (and those of its current frames alone, for the cached figure)."""
    config, model = captioner.config, captioner.model
    views = (*config.views, *config.context_views)
    frames = config.history_frames
    encoded = camera_samples(views, frames + 1, seed=seed)  # one sample per frame: oldest first, current last
    times: dict[str, float] = {}

    tick = time.perf_counter()
    current = captioner.decode_frames(list(encoded[-1].values()))
    times["decode_current"] = _ms(tick)
    past = {view: captioner.decode_frames([encoded[f][view] for f in range(frames)]) for view in views}
    times["decode"] = _ms(tick)

    tick = time.perf_counter()
    sample = dict(zip(views, current, strict=True))
    if frames:
        sample[HISTORY] = past
    inputs = captioner.prepare([sample], device=captioner.device)
    times["prepare"] = _ms(tick)
    times["prepare_current"] = times["prepare"]
    if frames:  # the current frames alone: a node's past frames are kept CLIP tokens, never prepared again
        tick = time.perf_counter()
        captioner.prepare([dict(zip(views, current, strict=True))], device=captioner.device)
        times["prepare_current"] = _ms(tick)

    tick = time.perf_counter()
    visual = model.encode_visual(inputs["pixel_values"], inputs["image_grid_thw"])
    clip_tokens = model.clip(inputs["clip_pixels"])
    times["encoders"] = _ms(tick)
    absent = inputs.get("clip_absent")
    times["clip_past"] = 0.0
    if frames:  # the CLIP share of past frames, timed again alone: what a per-view cache of tokens saves
        pixels = inputs["clip_pixels"]
        past_pixels = pixels.reshape(len(views), frames + 1, *pixels.shape[1:])[:, :-1].reshape(-1, *pixels.shape[1:])
        tick = time.perf_counter()
        model.clip(past_pixels)
        times["clip_past"] = _ms(tick)

    tick = time.perf_counter()
    fused = model.fuse(list(visual), clip_tokens, absent)
    times["connector"] = _ms(tick)

    from transformers.modeling_outputs import BaseModelOutputWithPooling

    tick = time.perf_counter()
    decoding = captioner.decoding_in_effect(DecodingConfig(max_new_tokens=max_new_tokens,
                                                           min_new_tokens=max_new_tokens))
    model.qwen.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        image_grid_thw=inputs["image_grid_thw"], mm_token_type_ids=inputs.get("mm_token_type_ids"),
                        mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=tuple(fused))},
                        pad_token_id=captioner.processor.tokenizer.pad_token_id, **decoding.generate_kwargs())
    times["generation"] = _ms(tick)
    return times


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


CLIP_TOKENS_PER_IMAGE = 257  # ViT-L/14 at 224x224: 16 x 16 patches + the class token
MERGE = 4  # Qwen2.5-VL merges 2 x 2 patches into one visual token: the vision tower sees 4 patches a token


def full_size_arithmetic(history: int = 3, tokens_per_view: int = 480, text_tokens: int = 60,
                         new_tokens: int = 64) -> dict[str, dict[str, float]]:
    """Tokens and FLOPs per caption of the full-size model (Qwen2.5-VL-3B + ViT-L/14, pooled) for 2 views,
    6 full views and 2 + 4 context views, each with and without `history` past frames per view.

    FLOPs are the matrix products' 2 x parameters x tokens of each part (attention's own quadratic term
    left out: it is small beside them at these lengths); `tokens_per_view` is the recipe's 480 visual tokens
    of a 1600x900 frame. "cached": past frames' CLIP tokens kept from earlier captions (the node's way)."""
    from clip_vlm_core.model.full_size import (
        full_size_captioner_config,
        full_size_parameter_counts,
        qwen25_vl_3b_config,
    )

    base = full_size_captioner_config()
    width = qwen25_vl_3b_config().text_config.hidden_size
    rows: dict[str, dict[str, float]] = {}
    six = ("CAM_FRONT", "CAM_BACK", *SIDES)
    layouts_ = [(name, views, context, frames, "pooled") for name, views, context in
                (("2 views", base.views, ()), ("6 full views", six, ()), ("2 + 4 context", base.views, SIDES))
                for frames in (0, history)]
    # Patch tokens in the memory: every one of a frame's 257 CLIP tokens instead of its pooled one.
    layouts_ += [("2 views", base.views, (), history, "patch"), ("2 + 4 context", base.views, SIDES, history, "patch")]
    for name, views, context, frames, tokens in layouts_:
        config = dataclasses.replace(base, views=views, context_views=context, history_frames=frames,
                                     clip_tokens=tokens)
        counts = full_size_parameter_counts(config)
        params = {part: row["trainable"] + row["frozen"] for part, row in counts.items()}
        visual = tokens_per_view * len(views)
        memory = (len(views) + len(context)) * (frames + 1) * (CLIP_TOKENS_PER_IMAGE if tokens == "patch" else 1)
        frames_read = (len(views) + len(context)) * (frames + 1)
        current = len(views) + len(context)
        clip_flops = 2 * params["clip"] * CLIP_TOKENS_PER_IMAGE
        flops = {
            "qwen_vision": 2 * params["qwen_vision"] * visual * MERGE,
            "clip": clip_flops * frames_read,
            # every connector weight over the memory (its upper bound); the queries only through the
            # cross-attention's query and output projections (2 D x D); and the attention scores and sums over
            # the memory (its self-attention, and the queries' cross-attention), which grow with patch tokens
            "connector": 2 * params["connector"] * memory + 2 * 2 * width * width * visual
                         + 4 * width * memory * (config.connector_layers * memory + visual),
            "language_model": 2 * params["qwen_language"] * (visual + text_tokens + new_tokens),
        }
        total = sum(flops.values())
        rows[f"{name}{f' + history {frames}' if frames else ''}{', patch' if tokens == 'patch' else ''}"] = {
            "qwen_visual_tokens": visual, "clip_memory_tokens": memory,
            "prompt_tokens": visual + text_tokens,
            **{f"{part}_gflops": round(value / 1e9, 1) for part, value in flops.items()},
            "total_gflops": round(total / 1e9, 1),
            "total_gflops_cached": round((total - clip_flops * (frames_read - current)) / 1e9, 1),
        }
    two = rows["2 views"]["total_gflops"]
    for row in rows.values():
        row["ratio"] = round(row["total_gflops"] / two, 3)
        row["ratio_cached"] = round(row["total_gflops_cached"] / two, 3)
    return rows
