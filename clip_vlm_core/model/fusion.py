"""Qwen2.5-VL with CLIP-fused visual tokens: the trainable model (connector + LoRA over frozen backbones).

The fused tokens reach Qwen through its own `mm_encoder_outputs` argument. What that amounts to inside
Qwen's forward (transformers' Qwen2_5_VLModel.forward) is the mask assignment nanoVLM writes out:

    embeds = qwen.get_input_embeddings()(input_ids)             # [B, L, D] text and placeholder embeddings
    image_positions = input_ids == qwen.config.image_token_id   # one <|image_pad|> per visual token
    embeds[image_positions] = torch.cat(fused)                  # fused = fuse(encode_visual(...), clip(...))

`image_grid_thw` keeps Qwen's 3-D (mrope) positions exactly as the base model computes them, in training
and in `generate()` alike: with the gate at 0 (fused == visual) the captions are the base model's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast

from clip_vlm_core.config import DecodingConfig
from clip_vlm_core.model.clip_encoder import ClipViewEncoder
from clip_vlm_core.model.connector import FusionConnector
from clip_vlm_core.model.fast_decode import StaticGreedyDecoder, greedy_decoding
from clip_vlm_core.model.loss import token_mean_loss, trailing_logits_needed

log = logging.getLogger(__name__)


class MultiViewCaptionModel(nn.Module):
    def __init__(self, qwen: nn.Module, clip: ClipViewEncoder, connector: FusionConnector, num_views: int) -> None:
        super().__init__()
        self.qwen = qwen  # Qwen2_5_VLForConditionalGeneration, possibly wrapped by PEFT
        self.clip = clip
        self.connector = connector
        self.num_views = num_views
        self.fusion_enabled = True
        self.fast_decoder: StaticGreedyDecoder | None = None  # see enable_fast_decoding()
        self.clip_frames_encoded = 0  # (view, frame) inputs the CLIP encoder has run on, for a node's diagnostics
        self.last_clip_tokens: torch.Tensor | None = None  # with `sees_more`: the last call's memory (see fuse)

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

    @property
    def sees_more(self) -> bool:
        """Whether the connector's memory holds more than the full views' current frames (context views or a
        history): CLIP inputs then come per (view, frame), full views then context views, oldest frame first."""
        return self.connector.num_views != self.num_views or self.connector.num_frames > 1

    def fuse(self, visual: list[torch.Tensor], clip_tokens: torch.Tensor,
             clip_absent: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per-image Qwen tokens + [B*V, T, C] CLIP tokens -> fused per-image tokens (same shapes).

        With context views or a history (`sees_more`), [B*V'*F, T, C] CLIP tokens: per sample, per view of the
        V' (full, then context), its F frames oldest first; `clip_absent` [B, V', F] marks missing frames."""
        if not self.fusion_enabled:
            return visual
        views = self.num_views
        clip_views, frames = self.connector.num_views, self.connector.num_frames
        if len(visual) % views or clip_tokens.shape[0] != len(visual) * clip_views * frames // views:
            raise ValueError(f"got {len(visual)} images and {clip_tokens.shape[0]} CLIP inputs for {views} views "
                             f"({clip_views} with CLIP tokens, {frames} frame(s) each)")
        batch = len(visual) // views
        per_sample = [torch.cat(visual[b * views : (b + 1) * views]) for b in range(batch)]
        if self.sees_more:
            clip_tokens = clip_tokens.reshape(batch, clip_views, frames, *clip_tokens.shape[1:])
            fused = self.connector(per_sample, clip_tokens, clip_absent)
        else:
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
        clip_absent: torch.Tensor | None = None,
        clip_cached: torch.Tensor | None = None,
        clip_cached_at: torch.Tensor | None = None,
    ) -> dict[str, BaseModelOutputWithPooling]:
        """Fused image features in the form Qwen's forward/generate accept as `mm_encoder_outputs`.

        Either raw inputs (pixel_values, clip_pixels) or the frozen encoders' cached outputs
        (visual_embeds, clip_tokens) may be given; training from a cache never recomputes them.
        `clip_absent`: the missing frames, with context views or a history (see `fuse`). `clip_cached` [M, T, C]:
        CLIP tokens kept from earlier calls for the memory's slots `clip_cached_at` [M] (past frames a node
        already encoded); `clip_pixels` then holds the other slots only, and only those are encoded.
        """
        if visual_embeds is None:
            visual_embeds = self.encode_visual(pixel_values, image_grid_thw)
        if clip_tokens is None and self.fusion_enabled:
            clip_tokens = self.clip(clip_pixels)
            self.clip_frames_encoded += int(clip_pixels.shape[0])
            if clip_cached is not None:
                clip_tokens = _with_cached(clip_tokens, clip_cached, clip_cached_at)
        if self.sees_more:
            self.last_clip_tokens = clip_tokens
        fused = self.fuse(list(visual_embeds), clip_tokens, clip_absent)
        return {"image": BaseModelOutputWithPooling(pooler_output=tuple(fused))}

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
        clip_absent: torch.Tensor | None = None,
        clip_cached: torch.Tensor | None = None,
        clip_cached_at: torch.Tensor | None = None,
    ):
        mm = self.encoder_outputs(image_grid_thw, pixel_values, clip_pixels, visual_embeds, clip_tokens, clip_absent,
                                  clip_cached, clip_cached_at)
        inputs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_grid_thw=image_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            mm_encoder_outputs=mm,
        )
        if labels is None:
            return self.qwen(**inputs)
        return self._caption_loss(inputs, labels)

    def _caption_loss(self, inputs: dict, labels: torch.Tensor) -> CausalLMOutputWithPast:
        """The caption loss (clip_vlm_core.model.loss), with logits computed only where captions are.

        Captions sit at the end of each row (prompts are left-padded), so the vocabulary projection is
        needed only from the position before the first labelled column on: at full resolution that is
        ~50 of ~3,700 positions, sparing a [batch, 3700, 151936] float tensor and its backward. The
        returned logits are those trailing positions, which `loss.sample_mean_loss` reads too.
        """
        out = self.qwen(**inputs, logits_to_keep=trailing_logits_needed(labels))
        return CausalLMOutputWithPast(loss=token_mean_loss(out.logits, labels), logits=out.logits)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_grid_thw: torch.Tensor,
        decoding: DecodingConfig,
        pad_token_id: int,
        pixel_values: torch.Tensor | None = None,
        clip_pixels: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        clip_absent: torch.Tensor | None = None,
        clip_cached: torch.Tensor | None = None,
        clip_cached_at: torch.Tensor | None = None,
        **generate_options: Any,
    ) -> torch.Tensor:
        """Standard `generate()` (KV cache, greedy or beam search) as `decoding` says; returns only the new tokens.

        With `enable_fast_decoding()`, greedy decoding goes through the static-cache decoder instead
        (same tokens, CUDA-graph replays on a GPU), its unset settings resolved against the model's
        generation config as generate() resolves them. `generate_options` (a stopping criterion, a cache
        implementation) are transformers' generate()'s own, and send the call there.
        """
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "image_grid_thw": image_grid_thw,
                  "mm_token_type_ids": mm_token_type_ids, "pad_token_id": pad_token_id,
                  "mm_encoder_outputs": self.encoder_outputs(image_grid_thw, pixel_values, clip_pixels,
                                                             clip_absent=clip_absent, clip_cached=clip_cached,
                                                             clip_cached_at=clip_cached_at)}
        greedy = None
        if self.fast_decoder is not None and not generate_options:
            greedy = greedy_decoding(decoding, self.base_qwen.generation_config)
        if greedy is not None:
            try:
                return self.fast_decoder.generate(decoding=greedy, **inputs)
            except torch.cuda.OutOfMemoryError:
                self.fast_decoder.reset()  # free the cached KV sessions before the caller retries smaller
                raise  # the caller's to handle (the node halves its batch), as with generate()
            except Exception as exc:  # noqa: BLE001 - a GPU/library pairing the fast path was not checked on
                log.warning("fast decoding failed (%s: %s); using transformers' generate() from now on",
                            type(exc).__name__, exc)
                self.fast_decoder = None
        out = self.qwen.generate(**inputs, **decoding.generate_kwargs(), **generate_options)
        return out[:, input_ids.shape[1] :]

    def enable_fast_decoding(self, cuda_graphs: bool = True) -> StaticGreedyDecoder:
        """Greedy captions through a static KV cache, each decode step a CUDA-graph replay on a GPU."""
        if self.fast_decoder is None or self.fast_decoder.cuda_graphs != cuda_graphs:
            self.fast_decoder = StaticGreedyDecoder(self.qwen, cuda_graphs=cuda_graphs)
        return self.fast_decoder

    @contextmanager
    def base_model_mode(self) -> Iterator[None]:
        """The base model: fusion bypassed and LoRA adapters off (for base-vs-fine-tuned comparisons)."""
        previous = self.fusion_enabled
        self.fusion_enabled = False
        if self.fast_decoder is not None:  # captured graphs would keep running the adapters
            self.fast_decoder.reset()
        try:
            if hasattr(self.qwen, "disable_adapter"):
                with self.qwen.disable_adapter():
                    yield
            else:
                yield
        finally:
            self.fusion_enabled = previous
            if self.fast_decoder is not None:
                self.fast_decoder.reset()


def _with_cached(encoded: torch.Tensor, cached: torch.Tensor, cached_at: torch.Tensor) -> torch.Tensor:
    """The memory's CLIP tokens in slot order: `cached` at the slots `cached_at`, `encoded` in the others."""
    total = encoded.shape[0] + cached.shape[0]
    out = encoded.new_empty((total, *encoded.shape[1:]))
    is_cached = torch.zeros(total, dtype=torch.bool, device=encoded.device)
    is_cached[cached_at] = True
    out[~is_cached] = encoded
    out[cached_at] = cached.to(device=encoded.device, dtype=encoded.dtype)
    return out
