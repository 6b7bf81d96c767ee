"""The frozen language model in 4 or 8 bits (QLoRA): bitsandbytes layers in place of its linear layers.

    captioner.quantize: none | nf4 | int8

Only Qwen's language model is quantized: every `nn.Linear` of its decoder layers becomes a bitsandbytes
`Linear4bit` (NF4, double-quantized absmax, QLoRA's choice) or `Linear8bitLt` (LLM.int8()). The vision tower,
the embeddings and the (tied) output head, OpenCLIP and the connector stay in full precision. PEFT then puts
its LoRA layers on the quantized ones as it does for a model transformers loaded in k bits (peft.tuners.lora.bnb).

Layers are converted one at a time on the target device (a GPU quantizes as the weight arrives), so a
12 GB card never holds the language model in bf16. This is the part of PEFT's
`prepare_model_for_kbit_training` that a frozen, quantized base needs (everything frozen; the trainer turns
on gradient checkpointing and input gradients), without its cast of every other bf16 parameter to fp32:
that cast alone would put the 311 M-parameter embedding and the vision tower back at 4 bytes a parameter.

A QLoRA checkpoint is the same folder as any other (config with `quantize`, connector, LoRA adapter). It
loads quantized as trained, or with `quantize="none"` into a full-precision base, where
optimize_for_inference(merge_lora=True) folds the adapters into bf16 weights (the adapters learnt to correct
the 4-bit weights, so the merged model is close to, not bit-equal with, the quantized one).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from clip_vlm_core.config import QUANTIZE_MODES
from clip_vlm_core.errors import UserError

__all__ = ["QUANTIZE_MODES", "import_bitsandbytes", "quantize_language_model", "quantized_layers"]


def import_bitsandbytes():
    """bitsandbytes, or one sentence saying how to get it."""
    try:
        import bitsandbytes  # its import warning is silenced in clip_vlm_core/__init__.py
        # LLM.int8() layers say on every call that fp32 inputs are cast to fp16 for their matmul (on a CPU,
        # every call): by design, and nothing a user can change.
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    except ImportError as exc:
        raise UserError(f"captioner.quantize and optim.optimizer=adamw8bit need bitsandbytes "
                        f"(pip install 'bitsandbytes==0.50.*'): {exc}") from None
    return bitsandbytes


def language_model_of(qwen: nn.Module) -> nn.Module:
    """Qwen2_5_VLForConditionalGeneration's decoder stack (transformers 5: `.model.language_model`)."""
    inner = getattr(qwen, "model", qwen)
    return getattr(inner, "language_model", None) or inner


def quantize_language_model(qwen: nn.Module, mode: str, compute_dtype: torch.dtype,
                            device: torch.device | str) -> int:
    """Replace the language model's linear layers by bitsandbytes ones quantized on `device`; returns
    how many were replaced. `compute_dtype`: what the 4-bit layers dequantize to for their matmuls."""
    if mode not in QUANTIZE_MODES:
        raise UserError(f"captioner.quantize must be one of {', '.join(QUANTIZE_MODES)}, got {mode!r}")
    if mode == "none":
        return 0
    bnb = import_bitsandbytes()
    device = torch.device(device)
    language = language_model_of(qwen)
    targets = [(name, module) for name, module in language.named_modules()
               if type(module) is nn.Linear]  # exactly nn.Linear: never a LoRA or an already quantized layer
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = language.get_submodule(parent_name) if parent_name else language
        setattr(parent, child, _quantized(bnb, linear, mode, compute_dtype, device))
    return len(targets)


def _quantized(bnb, linear: nn.Linear, mode: str, compute_dtype: torch.dtype, device: torch.device) -> nn.Module:
    weight = linear.weight.data.to("cpu") if linear.weight.device.type != "cpu" else linear.weight.data
    bias = linear.bias
    with torch.device("meta"):  # the layer's own fp32 weight is never allocated
        if mode == "nf4":
            layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias is not None,
                                      compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4")
        else:
            layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias is not None,
                                        has_fp16_weights=False, threshold=6.0)
    if mode == "nf4":
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4")
    else:
        layer.weight = bnb.nn.Int8Params(weight.to(torch.float16), requires_grad=False, has_fp16_weights=False)
    layer.weight = layer.weight.to(device)  # quantizes here, on the device it will run on
    if bias is not None:
        layer.bias = nn.Parameter(bias.data.to(device=device, dtype=compute_dtype), requires_grad=False)
    return layer


def quantized_layers(model: nn.Module) -> dict[str, int]:
    """How many 4-bit and 8-bit bitsandbytes layers a model holds (LoRA-wrapped ones included)."""
    counts = {"nf4": 0, "int8": 0}
    for module in model.modules():
        kind = type(module).__name__
        if kind == "Linear4bit" and module.__module__.startswith("bitsandbytes"):
            counts["nf4"] += 1
        elif kind == "Linear8bitLt" and module.__module__.startswith("bitsandbytes"):
            counts["int8"] += 1
    return counts
