"""Qwen2.5-VL with CLIP-fused visual tokens: the trainable model (connector + LoRA over frozen backbones).

The fused tokens reach Qwen through its own `mm_encoder_outputs` argument: they replace the visual tokens
at the image-token positions, while `image_grid_thw` keeps Qwen's 3-D (mrope) positions exactly as the
base model computes them, in training and in `generate()` alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from clip_vlm_core.model.clip_encoder import ClipViewEncoder
from clip_vlm_core.model.connector import FusionConnector


class MultiViewCaptionModel(nn.Module):
    def __init__(self, qwen: nn.Module, clip: ClipViewEncoder, connector: FusionConnector, num_views: int) -> None:
        super().__init__()
        self.qwen = qwen  # Qwen2_5_VLForConditionalGeneration, possibly wrapped by PEFT
        self.clip = clip
        self.connector = connector
        self.num_views = num_views
        self.fusion_enabled = True

    @property
    def base_qwen(self) -> nn.Module:
        """The plain Qwen2_5_VLForConditionalGeneration underneath any PEFT wrapper."""
        return self.qwen.get_base_model() if hasattr(self.qwen, "get_base_model") else self.qwen

    # -- encoders -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_visual(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """Frozen Qwen vision tower: one [tokens, D] tensor per image, in the processor's image order."""
        out = self.base_qwen.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        return list(out.pooler_output)

    def fuse(self, visual: list[torch.Tensor], clip_tokens: torch.Tensor) -> list[torch.Tensor]:
        """Per-image Qwen tokens + [B*V, T, C] CLIP tokens -> fused per-image tokens (same shapes)."""
        if not self.fusion_enabled:
            return visual
        views = self.num_views
        if len(visual) != clip_tokens.shape[0] or len(visual) % views:
            raise ValueError(f"got {len(visual)} images and {clip_tokens.shape[0]} CLIP inputs for {views} views")
        batch = len(visual) // views
        per_sample = [torch.cat(visual[b * views : (b + 1) * views]) for b in range(batch)]
        clip_tokens = clip_tokens.reshape(batch, views, *clip_tokens.shape[1:])
        fused = self.connector(per_sample, clip_tokens)
        out: list[torch.Tensor] = []
        for b, sample in enumerate(fused):
            out.extend(torch.split(sample, [v.shape[0] for v in visual[b * views : (b + 1) * views]]))
        return out

    def encoder_outputs(
        self,
        image_grid_thw: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        clip_pixels: torch.Tensor | None = None,
        visual_embeds: list[torch.Tensor] | None = None,
        clip_tokens: torch.Tensor | None = None,
    ) -> dict[str, BaseModelOutputWithPooling]:
        """Fused image features in the form Qwen's forward/generate accept as `mm_encoder_outputs`.

        Either raw inputs (pixel_values, clip_pixels) or the frozen encoders' cached outputs
        (visual_embeds, clip_tokens) may be given; training from a cache never recomputes them.
        """
        if visual_embeds is None:
            visual_embeds = self.encode_visual(pixel_values, image_grid_thw)
        if clip_tokens is None and self.fusion_enabled:
            clip_tokens = self.clip(clip_pixels)
        return {"image": BaseModelOutputWithPooling(pooler_output=tuple(self.fuse(list(visual_embeds), clip_tokens)))}

    # -- language model -------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_grid_thw: torch.Tensor,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        clip_pixels: torch.Tensor | None = None,
        visual_embeds: list[torch.Tensor] | None = None,
        clip_tokens: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
    ):
        mm = self.encoder_outputs(image_grid_thw, pixel_values, clip_pixels, visual_embeds, clip_tokens)
        return self.qwen(
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_grid_thw=image_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            mm_encoder_outputs=mm,
            labels=labels,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_grid_thw: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        clip_pixels: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Standard `generate()` (KV cache, greedy or beam search); returns only the new tokens."""
        mm = self.encoder_outputs(image_grid_thw, pixel_values, clip_pixels)
        out = self.qwen.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_grid_thw=image_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            mm_encoder_outputs=mm,
            **generate_kwargs,
        )
        return out[:, input_ids.shape[1] :]

    @contextmanager
    def base_model_mode(self) -> Iterator[None]:
        """The base model: fusion bypassed and LoRA adapters off (for base-vs-fine-tuned comparisons)."""
        previous = self.fusion_enabled
        self.fusion_enabled = False
        try:
            if hasattr(self.qwen, "disable_adapter"):
                with self.qwen.disable_adapter():
                    yield
            else:
                yield
        finally:
            self.fusion_enabled = previous
