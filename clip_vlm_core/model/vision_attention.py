"""Packed (variable-length) attention for Qwen2.5-VL's vision tower on CUDA.

Most of the vision tower's layers attend within 112x112-pixel windows. Without flash-attn installed,
transformers runs SDPA once per window, from a Python loop: a 1596x896 frame has 120 windows, so a
front/back pair costs 28 layers x 240 calls, and a batch of 32 pairs over 200,000 calls per caption.
PyTorch's public packed attention, `torch.nn.attention.varlen.varlen_attn` (its flash-attention kernel
over cumulative sequence lengths, as flash-attn's `flash_attn_varlen_func`), takes every window at once;
this module registers it with transformers' attention interface under a name containing "flash", which
is what makes Qwen's vision tower hand it the packed windows instead of looping. Only the vision tower is
switched; the language model keeps SDPA.

CUDA with fp16/bf16 only (the kernel's limits); elsewhere `enable_varlen_vision_attention` leaves the
model as it is and says so. Should the kernel fail on some GPU, the windows are attended one by one with
SDPA (`reference_varlen_attention`, which also runs the wiring's tests on a CPU).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.nn.attention.varlen import varlen_attn

log = logging.getLogger(__name__)

VARLEN_ATTENTION = "clip_vlm_flash_varlen"  # "flash" routes Qwen's vision blocks to their cu_seqlens path


def varlen_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,  # Qwen2.5-VL's vision tower has none (attention_dropout 0.0)
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-interface signature: [1, H, T, D] packed q/k/v -> [1, T, H, D]."""
    if query.shape[0] != 1 or cu_seq_lens_q is None or attention_mask is not None:
        raise ValueError("varlen vision attention takes one packed sequence with cu_seqlens and no mask")
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [T, H, D]
    cu_q = cu_seq_lens_q.to(torch.int32)
    cu_k = cu_q if cu_seq_lens_k is None else cu_seq_lens_k.to(torch.int32)
    out = None
    if q.is_cuda and not _flash_failed:
        max_q = int(max_length_q) if max_length_q is not None else int((cu_q[1:] - cu_q[:-1]).max())
        max_k = int(max_length_k) if max_length_k is not None else max_q
        try:
            out = varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scaling)
        except RuntimeError as exc:  # e.g. a GPU or head size the kernel was not built for
            _flash_failed.append(exc)
            log.warning("packed flash attention failed (%s); the vision tower attends per window instead", exc)
    if out is None:
        out = reference_varlen_attention(q, k, v, cu_q, cu_k, scaling)
    return out.unsqueeze(0), None


_flash_failed: list[Exception] = []  # set once the kernel has failed in this process: don't try it again


def reference_varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, scale: float | None
) -> torch.Tensor:
    """The packed kernel's contract, one segment at a time with SDPA: [T, H, D] in and out. It is what runs
    off CUDA, so the wiring into Qwen's vision tower is tested on any machine."""
    outs = []
    for i in range(len(cu_q) - 1):
        segment = [t[a:b].transpose(0, 1) for t, a, b in ((q, cu_q[i], cu_q[i + 1]), (k, cu_k[i], cu_k[i + 1]), (v, cu_k[i], cu_k[i + 1]))]
        outs.append(nn.functional.scaled_dot_product_attention(*segment, scale=scale).transpose(0, 1))
    return torch.cat(outs)


def varlen_unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the packed kernel cannot run here, or None when it can."""
    if device.type != "cuda":
        return f"needs a CUDA device, the model is on {device.type}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"needs float16 or bfloat16, the model is {str(dtype).removeprefix('torch.')}"
    if not torch.backends.cuda.is_flash_attention_available():
        return "this PyTorch build has no flash-attention kernel"
    return None


def enable_varlen_vision_attention(qwen: nn.Module, anywhere: bool = False) -> str | None:
    """Switch a Qwen2.5-VL model's vision tower to packed attention; returns why not, or None if done.

    `anywhere` switches it even off CUDA, where the reference kernel runs (for tests: it is slower).
    """
    from transformers import AttentionInterface

    visual = qwen.model.visual
    param = next(visual.parameters())
    reason = varlen_unavailable_reason(param.device, param.dtype)
    if reason is not None and not anywhere:
        return reason
    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention)
    visual.config._attn_implementation = VARLEN_ATTENTION
    return None


def disable_varlen_vision_attention(qwen: nn.Module, implementation: str = "sdpa") -> None:
    qwen.model.visual.config._attn_implementation = implementation
