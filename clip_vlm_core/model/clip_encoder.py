"""Frozen OpenCLIP image encoder giving each camera view one pooled token (or its patch tokens)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn

from clip_vlm_core.errors import UserError
from clip_vlm_core.model.model_refs import ModelRef
from clip_vlm_core.model.preprocess import ClipPixelSpec


def load_open_clip(model: str | ModelRef, pretrained: str | None, local_files_only: bool = False) -> nn.Module:
    """Load an OpenCLIP model by name + pretrained tag (e.g. ViT-L-14/openai), from a local folder, or from
    the hub (`hf-hub:org/name`), named by the rule of clip_vlm_core.model.model_refs.

    A local folder holds `open_clip_config.json` and `open_clip_model.safetensors` (what open_clip's
    `save_for_hf` writes); it is loaded through open_clip's own `local-dir:` schema. Every weights file is
    checked against the architecture its config declares before it is read
    (clip_vlm_core.model.checkpoint_limits); hub files come from the local cache first.
    """
    import open_clip

    from clip_vlm_core.model.checkpoint_limits import check_open_clip_folder, check_open_clip_weights
    from clip_vlm_core.model.model_refs import OPEN_CLIP_HUB_FILES, classify_ref, hub_snapshot

    ref = model if isinstance(model, ModelRef) else classify_ref(model, "OpenCLIP model", open_clip_names=True)
    if ref.kind == "hub":
        folder = hub_snapshot(ref.value, "OpenCLIP model", local_files_only, OPEN_CLIP_HUB_FILES)
        ref = ModelRef("folder", str(folder), folder)
    if ref.kind == "folder":
        check_open_clip_folder(ref.path)
        name, weights, pretrained = f"local-dir:{ref.path}", None, None
    elif ref.kind == "open_clip":
        name = ref.value
        weights = pretrained_weights(name, pretrained, local_files_only)
        if weights is not None:
            check_open_clip_weights(weights, name, "OpenCLIP model", **activation_for(name, pretrained))
    else:
        raise UserError("the OpenCLIP model is empty: give an open_clip model name or a local folder")
    try:
        return open_clip.create_model(
            name, pretrained=str(weights) if weights else pretrained or None, weights_only=True,
            **activation_for(name, pretrained),
        )
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
        raise UserError(f"cannot load OpenCLIP model {ref.value!r} ({pretrained or 'local'}): {exc}") from None


def pretrained_weights(name: str, pretrained: str | None, local_files_only: bool) -> Path | None:
    """The local weights file of `name`'s pretrained tag (from the Hugging Face cache, downloaded when
    allowed; safetensors preferred), a file path given as the tag, or None (no tag; or one open_clip
    downloads from a URL itself)."""
    import open_clip
    from open_clip.pretrained import _get_safe_alternatives

    from clip_vlm_core.model.model_refs import hub_snapshot

    if not pretrained:
        return None
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        if Path(pretrained).is_file():
            return Path(pretrained)
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise UserError(f"OpenCLIP model {name!r} has no pretrained weights tagged {pretrained!r} "
                        f"(its tags: {', '.join(tags) or 'none'})")
    if not cfg.get("hf_hub"):
        return None
    repo, filename = cfg["hf_hub"].rstrip().rsplit("/", 1) if not cfg["hf_hub"].endswith("/") \
        else (cfg["hf_hub"].rstrip("/"), "")
    filename = filename or "open_clip_pytorch_model.bin"
    for candidate in [*_get_safe_alternatives(filename), filename]:
        folder = hub_snapshot(repo, f"OpenCLIP weights of {name}/{pretrained} from", local_files_only, [candidate])
        if (folder / candidate).is_file():
            return folder / candidate
    raise UserError(f"OpenCLIP weights of {name}/{pretrained}: {repo} holds no {filename}")


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
