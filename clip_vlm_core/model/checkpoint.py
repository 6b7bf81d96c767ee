"""A captioner checkpoint: what its folder holds, how the model is assembled from it, how it is saved.

    clip_vlm_config.json    CaptionerConfig (base model ids or paths, views, prompt, connector/LoRA shape)
    connector.safetensors   the fusion connector
    adapter/                the PEFT LoRA adapter (standard PEFT format), when trained

A path names a checkpoint folder, a bare Qwen2.5-VL (hub id or folder: an untrained connector, which
captions exactly like that base model), or nothing (the embedded default model), by the rule of
clip_vlm_core.model.model_refs. Every weight file is checked from its header before a byte of it is read
(clip_vlm_core.model.checkpoint_limits); nothing is unpickled and no remote code runs.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clip_vlm_core.atomic import staged_dir
from clip_vlm_core.config import CaptionerConfig, load_json, save_json
from clip_vlm_core.errors import UserError
from clip_vlm_core.model.checkpoint_limits import (
    check_adapter,
    check_lora_finite,
    check_qwen_folder,
    load_connector_state,
)
from clip_vlm_core.model.clip_encoder import ClipViewEncoder, load_open_clip
from clip_vlm_core.model.connector import FusionConnector
from clip_vlm_core.model.fusion import MultiViewCaptionModel
from clip_vlm_core.model.model_refs import (
    QWEN_HUB_FILES,
    ModelRef,
    classify_ref,
    embedded_assets,
    hub_snapshot,
    resolve_config_ref,
)

# PEFT 0.21 asks transformers 5 a deprecated question on every adapter load; users cannot act on it.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

CONFIG_FILE = "clip_vlm_config.json"
CONNECTOR_FILE = "connector.safetensors"
ADAPTER_DIR = "adapter"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def default_model_path() -> Path:
    """The embedded default model shipped inside the package (used when no model is named)."""
    return embedded_assets() / "default_model"


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was requested but no CUDA GPU is available")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU unless told otherwise."""
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise UserError(f"unknown dtype {dtype!r}: use one of {sorted(names)}")
    return names[dtype]


# -- reading ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckpointParts:
    """What a path names, as SceneCaptioner.build() takes it."""

    config: CaptionerConfig
    base_dir: Path | None = None  # the checkpoint folder: its config's relative base-model paths start here
    connector_file: Path | None = None
    adapter_dir: Path | None = None
    name: str | None = None


def open_checkpoint(path: str | Path | None) -> CheckpointParts:
    """The checkpoint (or bare Qwen2.5-VL) a path names, read as far as its config; one sentence when it is
    neither."""
    ref = classify_ref(path, "checkpoint")
    if ref.kind == "hub":  # a bare Qwen2.5-VL from the hub
        return CheckpointParts(CaptionerConfig(qwen_model=ref.value))
    folder = ref.path
    if not (folder / CONFIG_FILE).exists():
        if not folder.is_dir():
            raise UserError(f"checkpoint {folder} is a file, not a checkpoint folder")
        if any(folder.glob("connector*")):
            raise UserError(f"checkpoint {folder} has no {CONFIG_FILE}")
        if not (folder / "config.json").is_file():
            raise UserError(f"checkpoint {folder} is neither a clip-vlm checkpoint (no {CONFIG_FILE}) nor a "
                            f"Qwen2.5-VL model folder (no config.json)")
        return CheckpointParts(CaptionerConfig(qwen_model=str(folder)))  # a bare Qwen2.5-VL folder
    adapter = folder / ADAPTER_DIR
    return CheckpointParts(
        load_json(CaptionerConfig, folder / CONFIG_FILE),
        base_dir=folder.resolve(),
        connector_file=folder / CONNECTOR_FILE,
        adapter_dir=adapter if adapter.exists() else None,
        name=f"embedded-{ref.value}" if ref.kind == "embedded" else folder.name,
    )


def build_model(parts: CheckpointParts, device: torch.device, dtype: torch.dtype, local_files_only: bool,
                base_models_root: Path | None, trainable: bool) -> tuple[MultiViewCaptionModel, Any, CaptionerConfig]:
    """Frozen Qwen + frozen CLIP + connector (+ LoRA when trainable or given an adapter) on `device`, the
    Qwen processor, and the config with its base models named where they really are."""
    config = parts.config
    # Where the models are, and whether they may be loaded at all, before seconds of library imports.
    qwen_ref = resolve_config_ref(config.qwen_model, parts.base_dir, base_models_root, "Qwen2.5-VL base model")
    clip_ref = resolve_config_ref(config.clip_model, parts.base_dir, base_models_root, "OpenCLIP model",
                                  open_clip_names=True)
    qwen_folder = _qwen_folder(qwen_ref, local_files_only)
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor bar on every load; hub downloads keep theirs
    # Where the base models really are, so that saving this model again (best/ of a resumed run)
    # writes refs relative to the new folder, not the old folder's relative refs unchanged.
    config = dataclasses.replace(config, qwen_model=str(qwen_ref.path or qwen_ref.value),
                                 clip_model=str(clip_ref.path or clip_ref.value))
    try:
        # use_kernels=False: transformers 5.25 made hub kernels the default, code fetched from the Hugging Face
        # hub at load time and swapped into the model's layers; this loads only the weights it is given.
        qwen = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            qwen_folder, dtype=dtype, local_files_only=True, attn_implementation="sdpa", use_safetensors=True,
            use_kernels=False,
        )
        pixel_budget = {k: v for k, v in (("min_pixels", config.min_pixels), ("max_pixels", config.max_pixels)) if v}
        processor = AutoProcessor.from_pretrained(qwen_folder, local_files_only=True, **pixel_budget)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot load Qwen2.5-VL from {qwen_ref.value!r}: {exc}") from None
    processor.tokenizer.padding_side = "left"  # generation appends on the right
    qwen.requires_grad_(False)
    if config.quantize != "none":  # before LoRA, so that PEFT puts its k-bit LoRA layers on the quantized ones
        from clip_vlm_core.model.quantize import quantize_language_model

        quantize_language_model(qwen, config.quantize, dtype, device)

    clip = ClipViewEncoder(load_open_clip(clip_ref, config.clip_pretrained, local_files_only), config.clip_tokens)
    model = assemble_model(qwen, clip, config, trainable, parts.connector_file, parts.adapter_dir)
    model.clip.to(device=device, dtype=dtype)
    model.qwen.to(device)
    # The trainable connector keeps fp32 master weights when training; inference runs in `dtype`.
    model.connector.to(device=device, dtype=torch.float32 if trainable else dtype)
    model.train(False)
    return model, processor, config


def assemble_model(
    qwen,
    clip: ClipViewEncoder,
    config: CaptionerConfig,
    trainable: bool,
    connector_file: Path | None = None,
    adapter_dir: Path | None = None,
    lora: bool | None = None,
) -> MultiViewCaptionModel:
    """Frozen Qwen + frozen CLIP + the connector (fresh or loaded), with LoRA when trainable or given.

    `lora=True` adds fresh (frozen, unless trainable) adapters to an untrainable model too, as a
    fine-tuned checkpoint would bring: the benchmark times inference with them.
    """
    width = qwen.config.text_config.hidden_size
    if width % config.connector_heads:
        raise UserError(f"captioner.connector_heads ({config.connector_heads}) must divide the language model's "
                        f"width ({width})")
    connector = FusionConnector(
        clip_dim=clip.token_dim,
        hidden_size=width,
        num_views=len(config.views) + len(config.context_views),
        num_layers=config.connector_layers,
        num_heads=config.connector_heads,
        dropout=config.connector_dropout,
        num_frames=config.history_frames + 1,
    )
    if connector_file is not None:  # read only once its header matches the connector the config builds
        connector.load_state_dict(load_connector_state(connector_file, connector))
    if adapter_dir is not None:
        qwen = _load_adapter(qwen, adapter_dir, trainable)
    elif trainable if lora is None else lora:
        from peft import LoraConfig, get_peft_model

        qwen = get_peft_model(qwen, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                               lora_dropout=config.lora_dropout, target_modules=config.lora_targets))
        qwen.requires_grad_(False)
        if trainable:
            for name, param in qwen.named_parameters():
                param.requires_grad_(".lora_" in name)
    connector.requires_grad_(trainable)
    return MultiViewCaptionModel(qwen, clip, connector, len(config.views))


def _check_safetensors_only(folder: Path, what: str) -> None:
    """Unpickling weights can run code: a local model folder must hold safetensors, and nothing else is loaded."""
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise UserError(f"{what} folder {folder} holds pickled weights ({pickled[0]}) and no .safetensors file; "
                        f"clip-vlm loads safetensors weights only")


def _qwen_folder(ref: ModelRef, local_files_only: bool) -> Path:
    """The local folder a Qwen2.5-VL reference names (a hub id through the cache), checked whole
    (clip_vlm_core.model.checkpoint_limits) before transformers reads a byte of it."""
    what = "Qwen2.5-VL model"
    if ref.kind == "hub":
        folder = hub_snapshot(ref.value, what, local_files_only, QWEN_HUB_FILES)
    elif ref.kind == "folder":
        folder = ref.path
        if not folder.is_dir():
            raise UserError(f"{what} {folder} is a file, not a model folder")
    else:
        raise UserError(f"{what} {ref.value!r} is neither a local folder nor a hub id like 'org/name'")
    _check_safetensors_only(folder, what)
    check_qwen_folder(folder, what)
    return folder


def _load_adapter(qwen, adapter_dir: Path, trainable: bool):
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"LoRA adapter folder {adapter_dir} has no adapter_config.json")
    check_adapter(adapter_dir, qwen)  # rank, targets and every tensor's shape, before PEFT reads a byte
    try:
        model = PeftModel.from_pretrained(qwen, str(adapter_dir), is_trainable=trainable)
    except Exception as exc:  # PEFT raises many types for a damaged adapter; all mean the same to a user
        raise UserError(f"LoRA adapter in {adapter_dir} cannot be loaded ({type(exc).__name__}: {exc})") from None
    check_lora_finite(model, adapter_dir)
    return model


# -- writing ---------------------------------------------------------------------------------------

def save_checkpoint(model: MultiViewCaptionModel, config: CaptionerConfig, out_dir: Path,
                    base_models_relative_to: Path | None = None) -> Path:
    """Write the checkpoint folder atomically: a temporary folder beside it, renamed when complete. Local
    base models are written relative to the checkpoint (or `base_models_relative_to`): loading refuses
    absolute paths."""
    from safetensors.torch import save_file

    relative_to = base_models_relative_to or out_dir
    config = dataclasses.replace(config, qwen_model=_relative(config.qwen_model, relative_to),
                                 clip_model=_relative(config.clip_model, relative_to))
    with staged_dir(out_dir) as tmp:
        save_json(config, tmp / CONFIG_FILE)
        state = {k: v.detach().float().cpu().contiguous() for k, v in model.connector.state_dict().items()}
        save_file(state, tmp / CONNECTOR_FILE)
        if hasattr(model.qwen, "peft_config"):
            model.qwen.save_pretrained(tmp / ADAPTER_DIR)
    return out_dir


def _relative(ref: str, base: Path) -> str:
    """A local base-model folder written relative to `base`, so a checkpoint can move with its models."""
    path = Path(ref)
    return os.path.relpath(path.resolve(), base.resolve()) if path.exists() else ref
