"""What a training run holds in memory, estimated from the model's shapes before it runs.

    weights      every parameter by how it is stored: bf16/fp32 at 2/4 bytes, NF4 at 0.5 byte plus its
                 quantization state (one 8-bit absmax per 64 weights, one fp32 per 256 absmax: +1/64 byte),
                 LLM.int8() at 1 byte plus an fp32 scale per row; frozen encoders released with the cache
                 are not counted
    trainable    connector + LoRA: fp32 master weights and fp32 gradients (8 bytes a parameter)
    optimizer    AdamW's two fp32 moments (8 bytes a parameter); bitsandbytes' AdamW8bit two 8-bit
                 moments (2 bytes; tensors under 4,096 elements keep fp32 moments, as bitsandbytes does)
    activations  what backward needs, per token and decoder layer, counted from the layer's tensors
                 (ACTIVATION_TERMS), plus one layer's gradients in backward; with gradient
                 checkpointing one hidden state per layer plus one layer recomputed and its gradients

The estimate works on a model on any device, the meta device included (nothing allocated), quantized or
not: `quantize` says how the language model's linear layers are (or would be) stored. `clip-vlm bench
memory` measures it against a real training step on this machine (peak RSS over the baseline after imports).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # packed 4-bit weight + 8-bit absmax per block + fp32 per 256 blocks
INT8_BYTES = 1.0
ADAMW8BIT_MIN_SIZE = 4096  # bitsandbytes' min_8bit_size: smaller tensors keep 32-bit state
GIB = 2**30

# Elements a decoder layer keeps for backward, per token, in units of its widths (D hidden, K the keys'
# and values' width, I the MLP's, r LoRA's rank): the two RMSNorms' inputs and outputs (4 D), q, k, v
# before and after the rotary embedding (2 D + 4 K), the attention output and SDPA's saved output (2 D),
# the residual (D); LoRA's dropout copies of its seven projections' inputs (5 D + I, counted once per
# shared input) and rank-r products (7 r); the MLP's gate, up, activation and product (4 I).
ACTIVATION_TERMS = {"D": 14, "K": 4, "I": 5, "r": 7}
# Under bf16 autocast Qwen's RMSNorm computes in fp32: each of a layer's two norms also keeps an fp32 copy
# of its input and of its normalised output (on a CPU in fp32 these are the tensors already counted).
NORM_FP32_COPIES = 4


@dataclass(frozen=True)
class MemoryEstimate:
    weights: dict[str, float]  # bytes by storage: "bf16", "fp32", "nf4", "int8", ...
    trainable_parameters: int
    trainable: float  # master weights + gradients
    optimizer: float
    activations: float
    checkpointing: bool
    batch: int
    tokens: int

    @property
    def weight_bytes(self) -> float:
        return sum(self.weights.values())

    @property
    def total(self) -> float:
        return self.weight_bytes + self.trainable + self.optimizer + self.activations

    def lines(self) -> list[str]:
        weights = ", ".join(f"{kind} {gib(b)}" for kind, b in sorted(self.weights.items()) if b)
        return [
            f"memory estimate: ~{gib(self.total)} in all at batch {self.batch} x {self.tokens:,} tokens, gradient "
            f"checkpointing {'on' if self.checkpointing else 'off'}",
            f"  weights {gib(self.weight_bytes)} ({weights})",
            f"  trainable {self.trainable_parameters:,} parameters: {gib(self.trainable)} weights + gradients, "
            f"{gib(self.optimizer)} optimizer state",
            f"  activations {gib(self.activations)}",
        ]


def gib(size: float) -> str:
    return f"{size / GIB:.2f} GiB" if size >= GIB / 10 else f"{size / 2**20:.1f} MiB"


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype).split(".")[-1])


def _language_linear_weights(model: nn.Module) -> set[int]:
    """ids of the weights of the language model's linear layers (those `captioner.quantize` quantizes)."""
    from clip_vlm_core.model.quantize import language_model_of

    base = model.base_qwen if hasattr(model, "base_qwen") else model
    ids = set()
    for name, module in language_model_of(base).named_modules():
        if isinstance(module, nn.Linear) and ".lora_" not in name and not name.endswith(("lora_A", "lora_B")):
            ids.add(id(module.weight))
    return ids


def _encoder_parameters(model: nn.Module) -> set[int]:
    base = model.base_qwen if hasattr(model, "base_qwen") else model
    encoders = [base.model.visual] + ([model.clip] if hasattr(model, "clip") else [])
    return {id(p) for encoder in encoders for p in encoder.parameters()}


def weight_bytes(model: nn.Module, quantize: str = "none", encoders_released: bool = False) -> dict[str, float]:
    """Bytes of every parameter by how it is stored (see the module's docstring); tied weights once."""
    quantized = _language_linear_weights(model) if quantize != "none" else set()
    released = _encoder_parameters(model) if encoders_released else set()
    out: dict[str, float] = {}
    for param in model.parameters():
        if id(param) in released:
            continue
        kind = type(param).__name__
        if kind == "Params4bit":  # stored packed: its logical size is the quant state's shape
            n = math.prod(param.quant_state.shape) if param.quant_state is not None else param.numel() * 2
            out["nf4"] = out.get("nf4", 0.0) + n * NF4_BYTES
        elif kind == "Int8Params":
            out["int8"] = out.get("int8", 0.0) + param.numel() * INT8_BYTES + param.shape[0] * 4
        elif id(param) in quantized:
            key = "nf4" if quantize == "nf4" else "int8"
            extra = 0 if quantize == "nf4" else param.shape[0] * 4
            out[key] = out.get(key, 0.0) + param.numel() * (NF4_BYTES if quantize == "nf4" else INT8_BYTES) + extra
        elif not param.requires_grad:
            name = _dtype_name(param.dtype)
            out[name] = out.get(name, 0.0) + param.numel() * param.element_size()
    return out


def trainable_bytes(model: nn.Module, optimizer: str = "adamw") -> tuple[int, float, float]:
    """(parameters, master weights + gradients, optimizer state) of the trainable parameters, in fp32."""
    params = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in params)
    if optimizer == "adamw8bit":
        state = sum(p.numel() * (2 if p.numel() >= ADAMW8BIT_MIN_SIZE else 8) for p in params)
    else:
        state = count * 8
    return count, count * 8.0, float(state)


def activation_bytes(text_config, tokens: int, batch: int, lora_r: int, element_bytes: int,
                     checkpointing: bool) -> float:
    """Activations a forward + backward keeps, from the language model's widths (ACTIVATION_TERMS)."""
    width = text_config.hidden_size
    kv = width // text_config.num_attention_heads * text_config.num_key_value_heads
    widths = {"D": width, "K": kv, "I": text_config.intermediate_size, "r": lora_r}
    per_layer = sum(ACTIVATION_TERMS[k] * widths[k] for k in ACTIVATION_TERMS) * element_bytes * tokens * batch
    if element_bytes < 4:
        per_layer += NORM_FP32_COPIES * width * 4 * tokens * batch
    layers = text_config.num_hidden_layers
    embeddings = width * element_bytes * tokens * batch * 2  # the input embeddings and the final norm
    # Backward holds, beside what is kept, one layer's worth of gradients of its activations at a time; with
    # checkpointing it keeps each layer's input and recomputes one layer at a time (its activations + those).
    if checkpointing:
        return layers * width * element_bytes * tokens * batch + 2 * per_layer + embeddings
    return (layers + 1) * per_layer + embeddings


def estimate_memory(model: nn.Module, text_config, *, quantize: str = "none", optimizer: str = "adamw",
                    batch: int, tokens: int, checkpointing: bool, lora_r: int, activation_element_bytes: int,
                    encoders_released: bool = False) -> MemoryEstimate:
    count, trainable, state = trainable_bytes(model, optimizer)
    return MemoryEstimate(
        weights=weight_bytes(model, quantize, encoders_released),
        trainable_parameters=count,
        trainable=trainable,
        optimizer=state,
        activations=activation_bytes(text_config, tokens, batch, lora_r, activation_element_bytes, checkpointing),
        checkpointing=checkpointing,
        batch=batch,
        tokens=tokens,
    )


# -- the README's table ----------------------------------------------------------------------------------

TABLE_VISUAL_TOKENS = 480  # per view at nuinteract-front-back.yaml's max_pixels (a 1600x900 frame: 840x448)
TABLE_TEXT_TOKENS = 80  # the prompt's text, view labels and a caption


def full_size_table(batches: tuple[int, ...] = (1, 4, 8)) -> list[dict]:
    """Qwen2.5-VL-3B + ViT-L-14, two views at 480 visual tokens each, the recipes' cached encoders: bf16 LoRA
    with AdamW against QLoRA (nf4) with AdamW8bit, at each batch, checkpointing off and on (meta device)."""
    from clip_vlm_core.model.full_size import assemble_random, full_size_captioner_config, qwen25_vl_3b_config

    config = full_size_captioner_config()
    with torch.device("meta"):
        model = assemble_random(config, trainable=True, dtype=torch.bfloat16)
    text = qwen25_vl_3b_config().text_config
    tokens = 2 * TABLE_VISUAL_TOKENS + TABLE_TEXT_TOKENS
    rows = []
    for recipe, quantize, optimizer in (("bf16 LoRA", "none", "adamw"), ("QLoRA nf4", "nf4", "adamw8bit")):
        for batch in batches:
            for checkpointing in (False, True):
                estimate = estimate_memory(model, text, quantize=quantize, optimizer=optimizer, batch=batch,
                                           tokens=tokens, checkpointing=checkpointing, lora_r=config.lora_r,
                                           activation_element_bytes=2, encoders_released=True)
                rows.append({"recipe": recipe, "batch": batch, "checkpointing": checkpointing, "tokens": tokens,
                             "estimate": estimate})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| recipe | batch | checkpointing | weights | trainable + grads | optimizer | activations | total |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        e = row["estimate"]
        cells = [e.weight_bytes, e.trainable, e.optimizer, e.activations, e.total]
        lines.append(f"| {row['recipe']} | {row['batch']} | {'on' if row['checkpointing'] else 'off'} | "
                     + " | ".join(f"{c / GIB:.2f} GiB" for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    rows = full_size_table()
    print(f"Qwen2.5-VL-3B + OpenCLIP ViT-L-14, two views x {TABLE_VISUAL_TOKENS} visual tokens + {TABLE_TEXT_TOKENS} "
          f"text = {rows[0]['tokens']:,} tokens a sample, encoders released (cache), activations in bf16")
    print(format_table(rows))


if __name__ == "__main__":
    main()
