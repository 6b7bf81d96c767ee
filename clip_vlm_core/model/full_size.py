"""The full-size architecture (Qwen2.5-VL-3B-Instruct + OpenCLIP ViT-L-14) without its weights.

No machine of this project can download the 7 GB of weights, yet two things need the real shapes:
the parameter budget (counted on the meta device, which allocates nothing) and the benchmark (random
weights of the right shapes time the same as trained ones). The Qwen config below is the published
`config.json` of Qwen/Qwen2.5-VL-3B-Instruct, written out so that it needs no hub access.

    python -m clip_vlm_core.model.full_size      # prints the trainable/frozen table
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from clip_vlm_core.config import CaptionerConfig
from clip_vlm_core.model.checkpoint import assemble_model
from clip_vlm_core.model.clip_encoder import ClipViewEncoder, activation_for
from clip_vlm_core.model.fusion import MultiViewCaptionModel

QWEN25_VL_3B_ID = "Qwen/Qwen2.5-VL-3B-Instruct"
# Pixel budget of the released processor (preprocessor_config.json): a 1600x900 frame keeps its size.
QWEN25_VL_MIN_PIXELS = 3136
QWEN25_VL_MAX_PIXELS = 12845056
# Special-token ids of Qwen's tokenizer that a prompt is built from when there is no tokenizer.
QWEN_ENDOFTEXT_ID = 151643
QWEN_IM_START_ID = 151644
QWEN_IM_END_ID = 151645

# generation_config.json of Qwen/Qwen2.5-VL-3B-Instruct: two stop ids and a repetition penalty, and
# "sampling" that keeps only the most likely token (top_k 1), i.e. greedy decoding.
QWEN25_VL_3B_GENERATION = {
    "bos_token_id": QWEN_ENDOFTEXT_ID,
    "pad_token_id": QWEN_ENDOFTEXT_ID,
    "do_sample": True,
    "eos_token_id": [QWEN_IM_END_ID, QWEN_ENDOFTEXT_ID],
    "repetition_penalty": 1.05,
    "temperature": 0.1,
    "top_p": 0.001,
    "top_k": 1,
}

PARTS = ("qwen_vision", "qwen_language", "clip", "connector", "lora")


def qwen25_vl_3b_config():
    """Qwen2_5_VLConfig with the values of Qwen/Qwen2.5-VL-3B-Instruct's config.json."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "hidden_act": "silu",
            "max_position_embeddings": 128000,
            "max_window_layers": 70,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "sliding_window": 32768,
            "use_sliding_window": False,
            "tie_word_embeddings": True,
            "attention_dropout": 0.0,
            "bos_token_id": QWEN_ENDOFTEXT_ID,
            "eos_token_id": QWEN_IM_END_ID,
        },
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "hidden_act": "silu",
            "in_channels": 3,
            "out_hidden_size": 2048,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
        },
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=True,
    )


def full_size_captioner_config() -> CaptionerConfig:
    """The default recipe: Qwen2.5-VL-3B + ViT-L-14 (pooled), CAM_FRONT and CAM_BACK."""
    return CaptionerConfig(qwen_model=QWEN25_VL_3B_ID, clip_model="ViT-L-14", clip_pretrained="openai")


def assemble_random(
    config: CaptionerConfig,
    trainable: bool,
    dtype: torch.dtype | None = None,
    lora: bool | None = None,
    qwen_config: Any = None,
) -> MultiViewCaptionModel:
    """Qwen2.5-VL-3B + OpenCLIP + connector (+ LoRA when trainable or `lora`), randomly initialised.

    Modules land on the current default device: wrap the call in `with torch.device(...)`; on "meta"
    nothing is allocated. Connector and LoRA come from the same `assemble_model` as `SceneCaptioner.build`.
    """
    import open_clip
    from transformers import Qwen2_5_VLForConditionalGeneration

    qwen = Qwen2_5_VLForConditionalGeneration._from_config(
        qwen_config or qwen25_vl_3b_config(), dtype=dtype, attn_implementation="sdpa"
    )
    qwen.generation_config.update(**QWEN25_VL_3B_GENERATION)  # decodes as the released model would
    qwen.requires_grad_(False)
    device = torch.get_default_device()
    if config.quantize != "none" and device.type != "meta":  # as SceneCaptioner.build does, before LoRA
        from clip_vlm_core.model.quantize import quantize_language_model

        quantize_language_model(qwen, config.quantize, dtype or torch.float32, device)
    # open_clip moves its model to `device` (cpu by default), which would undo a meta/cuda context; and
    # it warns that no pretrained weights were loaded, which here is the point.
    logging.disable(logging.WARNING)
    try:
        clip_model = open_clip.create_model(config.clip_model, pretrained=None, device=torch.get_default_device(),
                                            **activation_for(config.clip_model, config.clip_pretrained))
    finally:
        logging.disable(logging.NOTSET)
    model = assemble_model(qwen, ClipViewEncoder(clip_model, config.clip_tokens), config, trainable, lora=lora)
    if dtype is not None:
        model.clip.to(dtype=dtype)
        # Trainable connectors keep fp32 master weights, as SceneCaptioner.build does.
        model.connector.to(dtype=torch.float32 if trainable else dtype)
    model.train(False)
    return model


def build_full_size_model(
    device: torch.device,
    dtype: torch.dtype,
    trainable: bool,
    config: CaptionerConfig | None = None,
    lora: bool | None = None,
    qwen_config: Any = None,
) -> MultiViewCaptionModel:
    """The full-size model with random weights, made directly on `device` (no CPU copy on the way).

    `qwen_config` replaces Qwen2.5-VL-3B's (tests use it shallower, with every width kept)."""
    config = config or full_size_captioner_config()
    torch.manual_seed(0)
    with torch.device(device):
        return assemble_random(config, trainable, dtype, lora, qwen_config)


def part_of(name: str) -> str:
    """Which part of the captioner a parameter belongs to, from its qualified name."""
    if ".lora_" in name:
        return "lora"
    if name.startswith("connector."):
        return "connector"
    if name.startswith("clip."):
        return "clip"
    if ".visual." in name:
        return "qwen_vision"
    return "qwen_language"


def count_parameters(model: nn.Module) -> dict[str, dict[str, int]]:
    """{part: {trainable, frozen}} plus a "total" row; tied weights are counted once."""
    counts = {part: {"trainable": 0, "frozen": 0} for part in PARTS}
    for name, param in model.named_parameters():  # named_parameters() already skips tied duplicates
        counts[part_of(name)]["trainable" if param.requires_grad else "frozen"] += param.numel()
    counts["total"] = {key: sum(counts[p][key] for p in PARTS) for key in ("trainable", "frozen")}
    return counts


def full_size_parameter_counts(config: CaptionerConfig | None = None) -> dict[str, dict[str, int]]:
    """Trainable vs frozen parameters per part of the full-size trainable captioner (meta device)."""
    with torch.device("meta"):
        model = assemble_random(config or full_size_captioner_config(), trainable=True)
    return count_parameters(model)


def format_counts(counts: dict[str, dict[str, int]]) -> str:
    lines = [f"{'part':<14}{'trainable':>16}{'frozen':>16}{'total':>16}"]
    for part, row in counts.items():
        total = row["trainable"] + row["frozen"]
        lines.append(f"{part:<14}{row['trainable']:>16,}{row['frozen']:>16,}{total:>16,}")
    return "\n".join(lines)


def main() -> None:
    print(f"{QWEN25_VL_3B_ID} + OpenCLIP ViT-L-14, two views, connector + LoRA (default recipe)")
    print(format_counts(full_size_parameter_counts()))


if __name__ == "__main__":
    main()
