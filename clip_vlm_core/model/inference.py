"""The GPU inference settings of the captioner, chosen in one place for the node, the CLI and the benchmark.

    decoder           "static": greedy decoding from a static KV cache, each step one CUDA-graph replay
                      (clip_vlm_core.model.fast_decode); "transformers": transformers' generate().
    vision_attention  "varlen": Qwen's vision tower attends over all its windows in one flash-attention
                      call (clip_vlm_core.model.vision_attention); "sdpa": one SDPA call per window.
    merge_lora        fold the LoRA adapters into the weights they adapt (PEFT's merge_adapter), so a
                      decode step reads one matrix per projection instead of three.

"auto" picks the fast setting where it can run (CUDA, half precision) and the plain one elsewhere.
Every setting leaves the captions as they were: the static decoder's tokens equal generate()'s, the
packed attention computes the same windows, a merged adapter computes W x + B A x as (W + B A) x.
"""

from __future__ import annotations

from typing import Any

from clip_vlm_core.config import DECODERS, VISION_ATTENTIONS
from clip_vlm_core.errors import UserError
from clip_vlm_core.model.fusion import MultiViewCaptionModel
from clip_vlm_core.model.vision_attention import (
    disable_varlen_vision_attention,
    enable_varlen_vision_attention,
)


def optimize_for_inference(
    model: MultiViewCaptionModel, decoder: str = "auto", vision_attention: str = "auto", merge_lora: bool | None = None
) -> dict[str, Any]:
    """Apply the settings; returns what is in effect (and why a requested one is not), for reports and logs."""
    if decoder not in DECODERS:
        raise UserError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if vision_attention not in VISION_ATTENTIONS:
        raise UserError(f"vision attention must be one of {', '.join(VISION_ATTENTIONS)}, got {vision_attention!r}")
    on_gpu = next(model.parameters()).device.type == "cuda"
    applied: dict[str, Any] = {}

    if decoder == "static" or (decoder == "auto" and on_gpu):
        model.enable_fast_decoding(cuda_graphs=on_gpu)
        applied["decoder"] = "static cache + CUDA graphs" if on_gpu else "static cache (eager, no GPU)"
    else:
        model.fast_decoder = None
        applied["decoder"] = "transformers generate()"

    qwen = model.base_qwen
    if vision_attention == "sdpa":
        disable_varlen_vision_attention(qwen)
        applied["vision_attention"] = "sdpa per window"
    else:
        why_not = enable_varlen_vision_attention(qwen)
        if why_not and vision_attention == "varlen":
            raise UserError(f"packed (varlen) vision attention {why_not}")
        applied["vision_attention"] = "sdpa per window" if why_not else "flash varlen (all windows at once)"

    merge = on_gpu if merge_lora is None else merge_lora
    has_adapters = hasattr(model.qwen, "merge_adapter")
    merged = has_adapters and any(getattr(m, "merged", False) for m in model.qwen.modules())
    if has_adapters and merge != merged:
        model.qwen.merge_adapter() if merge else model.qwen.unmerge_adapter()
        if model.fast_decoder is not None:  # graphs read the weights in the form they were captured with
            model.fast_decoder.reset()
    applied["lora"] = "none" if not has_adapters else ("merged into the weights" if merge else "separate adapters")
    return applied
