"""What one training step holds, said before training starts: the pixel budget, the visual tokens per
view it gives, and an estimate of the activation memory that decides gradient checkpointing.

At Qwen's own budget a 1600x900 frame keeps 1596x896 pixels, 1,824 visual tokens: two views and a
caption make ~3,700-token samples. The activations a backward pass needs grow with every token: ~8 MiB
per token measured for Qwen2.5-VL-3B with LoRA in bf16, so ~29 GiB per sample at that budget. Gradient
checkpointing keeps one tensor per layer instead and recomputes the rest (~30 % more compute).
"""

from __future__ import annotations

from dataclasses import dataclass

# ~8 MiB of activations per token measured for Qwen2.5-VL-3B (36 layers, width 2,048) with LoRA in bf16:
# the estimate scales it by depth, width and element size for other models.
BYTES_PER_TOKEN_LAYER_WIDTH = 8 * 2**20 / (36 * 2048)


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


def activation_bytes(tokens: int, batch: int, layers: int, width: int, element_bytes: int = 2) -> float:
    """Activation memory of one forward + backward without gradient checkpointing (an estimate)."""
    return BYTES_PER_TOKEN_LAYER_WIDTH * layers * width * element_bytes / 2 * tokens * batch


def pixel_budget_line(min_pixels: int | None, max_pixels: int | None, shape: SampleShape) -> str:
    views = ", ".join(f"{v} {s.width}x{s.height} px -> {s.tokens:,} tokens" for v, s in shape.views.items())
    budget = " to ".join(f"{p:,}" if p else "?" for p in (min_pixels, max_pixels))
    return (f"pixel budget {budget} pixels per image; first sample: {views}; "
            f"{shape.tokens:,} tokens per sample with its caption")


def checkpointing_line(estimate: float, batch: int, tokens: int, on: bool, why: str) -> str:
    size = f"{estimate / 2**30:.1f} GiB" if estimate >= 2**30 else f"{estimate / 2**20:.1f} MiB"
    return (f"activation memory without gradient checkpointing: ~{size} per micro-batch "
            f"({batch} x {tokens:,} tokens); gradient checkpointing {'on' if on else 'off'} ({why})")
