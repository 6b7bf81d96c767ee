"""The trainable fusion connector: CLIP view tokens -> gated cross-attention into Qwen's visual tokens.

    E  = Transformer_L(Linear_C->D(e) + view_embedding)          over the stacked views' CLIP tokens
    q' = q + tanh(g) * MHA(LN(q), E, E)                         for every Qwen visual token q of the sample

The gate g starts at 0, so an untrained connector returns q unchanged (bit for bit) and the captioner
behaves exactly like the base Qwen2.5-VL.
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
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"connector_heads ({num_heads}) must divide the language model width ({hidden_size})")
        self.num_views = num_views
        self.proj = nn.Linear(clip_dim, hidden_size)
        self.view_embedding = nn.Parameter(torch.randn(num_views, hidden_size) * 0.02)
        layer = nn.TransformerEncoderLayer(
            hidden_size, num_heads, 4 * hidden_size, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False) if num_layers else None
        self.query_norm = nn.LayerNorm(hidden_size)
        self.cross_attn = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.gate = nn.Parameter(torch.zeros(1))

    def encode_views(self, clip_tokens: torch.Tensor) -> torch.Tensor:
        """[B, V, T, C] CLIP tokens -> [B, V*T, D] view-aware context E."""
        batch, views, tokens, _ = clip_tokens.shape
        if views != self.num_views:
            raise ValueError(f"connector was built for {self.num_views} views, got {views}")
        context = self.proj(clip_tokens.to(self.proj.weight.dtype)) + self.view_embedding[None, :, None, :]
        context = context.reshape(batch, views * tokens, -1)
        return self.encoder(context) if self.encoder is not None else context

    def forward(self, visual_tokens: list[torch.Tensor], clip_tokens: torch.Tensor) -> list[torch.Tensor]:
        """Fuse each sample's Qwen visual tokens (all its views, [N_b, D]) with its CLIP context.

        Samples may have different numbers of visual tokens (views of different sizes): queries are
        padded, which is harmless because queries never attend to each other.
        """
        dtype = visual_tokens[0].dtype
        context = self.encode_views(clip_tokens)
        queries = pad_sequence([q.to(context.dtype) for q in visual_tokens], batch_first=True)
        attended, _ = self.cross_attn(self.query_norm(queries), context, context, need_weights=False)
        update = torch.tanh(self.gate) * attended
        return [q + update[i, : q.shape[0]].to(dtype) for i, q in enumerate(visual_tokens)]
