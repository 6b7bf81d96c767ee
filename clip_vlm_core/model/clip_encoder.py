"""Frozen OpenCLIP image encoder giving each camera view one pooled token (or its patch tokens)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn

from clip_vlm_core.errors import UserError
from clip_vlm_core.model.preprocess import ClipPixelSpec


def load_open_clip(model: str, pretrained: str | None) -> nn.Module:
    """Load an OpenCLIP model by name + pretrained tag (e.g. ViT-L-14/openai) or from a local folder.

    A local folder holds `open_clip_config.json` and `open_clip_model.safetensors` (what open_clip's
    `save_for_hf` writes); it is loaded through open_clip's own `local-dir:` schema.
    """
    import open_clip

    if Path(model).is_dir():
        name, pretrained = f"local-dir:{model}", None
    else:
        name = model
        if model not in open_clip.list_models() and not model.startswith(("hf-hub:", "local-dir:")):
            raise UserError(f"unknown OpenCLIP model {model!r}: give an open_clip model name or a local folder")
    try:
        return open_clip.create_model(
            name, pretrained=pretrained or None, weights_only=True, **activation_for(name, pretrained)
        )
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
        raise UserError(f"cannot load OpenCLIP model {model!r} ({pretrained or 'local'}): {exc}") from None


def activation_for(model: str, pretrained: str | None) -> dict[str, bool]:
    """create_model() arguments that give the model the activation its pretrained weights were trained with.

    OpenAI's CLIP weights (every `openai` tag), and some others (MetaCLIP, DFN, LAION-400M ViT-B-32, ...),
    were trained with QuickGELU, x * sigmoid(1.702 x); the plain model configs (ViT-L-14, ...) build
    nn.GELU, and open_clip only warns about the mismatch while every CLIP feature comes out subtly wrong.
    open_clip's pretrained registry marks these tags `quick_gelu`: follow it.
    """
    import open_clip

    if not pretrained:
        return {}
    if open_clip.get_pretrained_cfg(model, pretrained).get("quick_gelu", False):
        return {"force_quick_gelu": True}
    return {}


def clip_pixel_spec(size: int, preprocess_cfg: dict) -> ClipPixelSpec:
    """The settings the encoder's open_clip.image_transform gets: mean and std from the model's config
    (open_clip's OpenAI defaults when absent), bicubic, squashed to size x size."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return ClipPixelSpec(
        size=size,
        mean=_per_channel(preprocess_cfg.get("mean") or OPENAI_DATASET_MEAN),
        std=_per_channel(preprocess_cfg.get("std") or OPENAI_DATASET_STD),
    )


def _per_channel(value: float | list[float] | tuple[float, ...]) -> tuple[float, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (float(value),) * 3


class ClipViewEncoder(nn.Module):
    """Turns each view image into CLIP tokens: [N, 1, embed_dim] pooled, or [N, P, width] patches."""

    def __init__(self, clip_model: nn.Module, tokens: str = "pooled") -> None:
        super().__init__()
        import open_clip

        self.visual = clip_model.visual
        self.tokens = tokens
        cfg = getattr(self.visual, "preprocess_cfg", {}) or {}
        size = self.visual.image_size
        size = size if isinstance(size, int) else size[0]
        # The whole frame, squashed to CLIP's square input: a centre crop would cut off the sides of a
        # 16:9 camera frame, where neighbouring lanes are.
        self.transform = open_clip.image_transform(
            size,
            is_train=False,
            mean=cfg.get("mean"),
            std=cfg.get("std"),
            resize_mode="squash",
        )
        # The same transform as tensor operations (model/preprocess.py): what the captioner runs.
        self.pixel_spec = clip_pixel_spec(size, cfg)
        if tokens == "patch":
            self.visual.output_tokens = True
        self.requires_grad_(False)
        self.eval()

    @property
    def token_dim(self) -> int:
        if self.tokens == "pooled":
            return int(self.visual.output_dim)
        return int(self.visual.transformer.width)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """OpenCLIP's own transform on PIL images (the reference the tensor path is tested against)."""
        return torch.stack([self.transform(image) for image in images])

    def train(self, mode: bool = True) -> ClipViewEncoder:
        # Frozen: stays in eval mode (no dropout) even when the captioner trains.
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(next(self.visual.parameters()).dtype)
        if self.tokens == "pooled":
            return self.visual(pixels)[:, None, :]
        _, patches = self.visual(pixels)
        return patches
