"""The trainable fusion connector: CLIP view tokens -> gated cross-attention into Qwen's visual tokens.

    E  = Transformer_L(Linear_C->D(e) + view_embedding)          over the stacked views' CLIP tokens
    q' = q + tanh(g) * MHA(LN(q), E, E)                         for every Qwen visual token q of the sample

The gate g starts at 0, so an untrained connector returns q unchanged (bit for bit) and the captioner
behaves exactly like the base Qwen2.5-VL.

Seeing more: the memory E may hold the CLIP tokens of every (view, time) the model is given, each plus its
view's embedding and its frame's time embedding (`num_frames` > 1: the view's past frames, oldest first,
then the current one):

    E  = Transformer_L(Linear_C->D(e[v, f]) + view_embedding[v] + time_embedding[f])   for every v, f

Views here are the full views (which also have Qwen tokens) and then any context views (CLIP only). A frame
that is missing (a past frame not yet seen) is masked out of E. With one frame there is no time embedding
at all: the module, its tensors and its outputs are exactly those of the two-view connector above.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence


class FusionConnector(nn.Module):
    def __init__(
        self,
        clip_dim: int,
        hidden_size: int,
        num_views: int,
        num_layers: int = 2,
        num_heads: int = 8,
        dropout: float = 0.0,
        num_frames: int = 1,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"connector_heads ({num_heads}) must divide the language model width ({hidden_size})")
        self.num_views = num_views
        self.num_frames = num_frames
        self.proj = nn.Linear(clip_dim, hidden_size)
        self.view_embedding = nn.Parameter(torch.randn(num_views, hidden_size) * 0.02)
        if num_frames > 1:  # registered only with a history: a checkpoint without one has no such tensor
            self.time_embedding = nn.Parameter(torch.randn(num_frames, hidden_size) * 0.02)
        layer = nn.TransformerEncoderLayer(
            hidden_size, num_heads, 4 * hidden_size, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False) if num_layers else None
        self.query_norm = nn.LayerNorm(hidden_size)
        self.cross_attn = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.gate = nn.Parameter(torch.zeros(1))

    def encode_views(self, clip_tokens: torch.Tensor, absent: torch.Tensor | None = None) -> torch.Tensor:
        """[B, V, T, C] CLIP tokens, or [B, V, F, T, C] with frames (oldest first) -> [B, V*F*T, D] context E.

        `absent`: [B, V, F] True where a frame is missing; its tokens are masked out of the encoder's
        attention (and must be of the cross-attention's: `memory_mask`)."""
        if clip_tokens.dim() == 4:  # one frame per view: the two-view connector, operation for operation
            batch, views, tokens, _ = clip_tokens.shape
            self._check_views(views)
            context = self.proj(clip_tokens.to(self.proj.weight.dtype)) + self.view_embedding[None, :, None, :]
            context = context.reshape(batch, views * tokens, -1)
            return self.encoder(context) if self.encoder is not None else context
        batch, views, frames, tokens, _ = clip_tokens.shape
        self._check_views(views)
        if frames != self.num_frames:
            raise ValueError(f"connector was built for {self.num_frames} frames per view, got {frames}")
        context = self.proj(clip_tokens.to(self.proj.weight.dtype)) + self.view_embedding[None, :, None, None, :]
        if frames > 1:
            context = context + self.time_embedding[None, None, :, None, :]
        context = context.reshape(batch, views * frames * tokens, -1)
        if self.encoder is None:
            return context
        return self.encoder(context, src_key_padding_mask=self.memory_mask(absent, tokens))

    @staticmethod
    def memory_mask(absent: torch.Tensor | None, tokens: int) -> torch.Tensor | None:
        """[B, V, F] missing frames -> [B, V*F*T] key padding mask (True: not attended to), or None."""
        if absent is None or not bool(absent.any()):
            return None
        return absent.reshape(absent.shape[0], -1).repeat_interleave(tokens, dim=1)

    def _check_views(self, views: int) -> None:
        if views != self.num_views:
            raise ValueError(f"connector was built for {self.num_views} views, got {views}")

    def forward(self, visual_tokens: list[torch.Tensor], clip_tokens: torch.Tensor,
                absent: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Fuse each sample's Qwen visual tokens (all its views, [N_b, D]) with its CLIP context.

        Samples may have different numbers of visual tokens (views of different sizes): queries are
        padded, which is harmless because queries never attend to each other. `absent` as in
        `encode_views` (a sample's current frames are never all missing, so no query attends to nothing).
        """
        dtype = visual_tokens[0].dtype
        context = self.encode_views(clip_tokens, absent)
        queries = pad_sequence([q.to(context.dtype) for q in visual_tokens], batch_first=True)
        mask = self.memory_mask(absent, clip_tokens.shape[-2]) if clip_tokens.dim() == 5 else None
        attended, _ = self.cross_attn(self.query_norm(queries), context, context, need_weights=False,
                                      key_padding_mask=mask)
        update = torch.tanh(self.gate) * attended
        return [q + update[i, : q.shape[0]].to(dtype) for i, q in enumerate(visual_tokens)]
