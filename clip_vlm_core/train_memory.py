"""What one training step holds, said before training starts: the pixel budget, the visual tokens per
view it gives, and an estimate of the activation memory that decides gradient checkpointing.

At Qwen's own budget a 1600x900 frame keeps 1596x896 pixels, 1,824 visual tokens: two views and a
caption make ~3,700-token samples. The activations a backward pass needs grow with every token: ~8 MiB
per token measured for Qwen2.5-VL-3B with LoRA in bf16 (clip_vlm_core.memory_estimate counts ~7 MiB from
the layers' tensors), so ~26-29 GiB per sample at that budget. Gradient checkpointing keeps one tensor per
layer instead and recomputes the rest (~30 % more compute). The whole estimate (weights by storage,
trainable parameters and optimizer state, activations) is logged beside it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewShape:
    width: int  # pixels, after Qwen's resize to its budget
    height: int
    tokens: int  # visual tokens the language model reads for this view


@dataclass(frozen=True)
class SampleShape:
    tokens: int  # prompt (visual tokens included) + caption of one training sample
    views: dict[str, ViewShape]


def sample_shape(tokens: int, image_grid_thw, views: tuple[str, ...], patch: int, merge: int) -> SampleShape:
    """One sample's size from its token count and Qwen's (t, h, w) patch grid per view."""
    shapes = {}
    for view, (t, h, w) in zip(views, image_grid_thw.tolist(), strict=True):
        shapes[view] = ViewShape(width=w * patch, height=h * patch, tokens=t * h * w // merge**2)
    return SampleShape(tokens=tokens, views=shapes)


def pixel_budget_line(min_pixels: int | None, max_pixels: int | None, shape: SampleShape) -> str:
    views = ", ".join(f"{v} {s.width}x{s.height} px -> {s.tokens:,} tokens" for v, s in shape.views.items())
    budget = " to ".join(f"{p:,}" if p else "?" for p in (min_pixels, max_pixels))
    return (f"pixel budget {budget} pixels per image; first sample: {views}; "
            f"{shape.tokens:,} tokens per sample with its caption")


def checkpointing_line(estimate: float, batch: int, tokens: int, on: bool, why: str) -> str:
    size = f"{estimate / 2**30:.1f} GiB" if estimate >= 2**30 else f"{estimate / 2**20:.1f} MiB"
    return (f"activation memory without gradient checkpointing: ~{size} per micro-batch "
            f"({batch} x {tokens:,} tokens); gradient checkpointing {'on' if on else 'off'} ({why})")


def plan_memory(config, captioner, train_set, accelerator) -> bool:
    """Say the pixel budget, the tokens per view and sample it gives, and the activation estimate; return
    whether gradient checkpointing is on (the recipe's choice, or auto: on a GPU)."""
    o = config.optim
    item = train_set[0]
    if "input_ids" not in item:  # raw items: the processor makes the tokens, as the collator will
        item = captioner.prepare([item["images"]], targets=[item["target"]], instructions=[item["instruction"]])
    qwen = captioner.model.base_qwen
    vision, text = qwen.config.vision_config, qwen.config.text_config
    shape = sample_shape(int(item["input_ids"].shape[-1]), item["image_grid_thw"], captioner.views,
                         vision.patch_size, vision.spatial_merge_size)
    from clip_vlm_core.memory_estimate import activation_bytes

    element = 2 if accelerator.device.type == "cuda" else 4  # bf16 autocast on a GPU; fp32 on a CPU
    estimate = activation_bytes(text, shape.tokens, o.batch_size, config.captioner.lora_r, element, False)
    on = o.gradient_checkpointing
    if on is None:
        on, why = accelerator.device.type == "cuda", "auto: on a GPU" if accelerator.device.type == "cuda" else "auto: no GPU"
    else:
        why = "optim.gradient_checkpointing"
    if accelerator.is_main_process:
        size = captioner.processor.image_processor.size
        log.info(pixel_budget_line(size.get("shortest_edge"), size.get("longest_edge"), shape))
        log.info(checkpointing_line(estimate, o.batch_size, shape.tokens, on, why))
        for line in total_memory_lines(config, captioner, shape.tokens, on, accelerator.device.type == "cuda"):
            log.info(line)
    return on


def total_memory_lines(config, captioner, tokens: int, checkpointing: bool, on_gpu: bool) -> list[str]:
    """The whole estimate (clip_vlm_core.memory_estimate) at the recipe's batch and this sample's tokens;
    with checkpointing off, also its activations with it on (the line before gives them without)."""
    from clip_vlm_core.memory_estimate import activation_bytes, estimate_memory, gib

    o, c = config.optim, config.captioner
    text = captioner.model.base_qwen.config.text_config
    element = 2 if on_gpu else 4  # bf16 autocast on a GPU; fp32 on a CPU
    estimate = estimate_memory(captioner.model, text, quantize=c.quantize, optimizer=o.optimizer, batch=o.batch_size,
                               tokens=tokens, checkpointing=checkpointing, lora_r=c.lora_r,
                               activation_element_bytes=element, encoders_released=config.data.cache_encoders)
    if checkpointing:
        return estimate.lines()
    with_checkpointing = activation_bytes(text, tokens, o.batch_size, c.lora_r, element, True)
    return [*estimate.lines(), f"  (activations with gradient checkpointing on: {gib(with_checkpointing)})"]
