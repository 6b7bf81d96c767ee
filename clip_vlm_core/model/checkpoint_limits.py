"""What each weight file may hold, derived from the architecture its config declares; checked before
any tensor is read (clip_vlm_core.model.tensor_files reads the headers).

    the config        bounded JSON, every size within what real models have (QWEN_TEXT_LIMITS, ...)
    the architecture  built on the meta device from that config: nothing is allocated
    the files         every tensor's name, shape and dtype held against it, from the headers alone
    the tensors       read only then; trainable ones (connector, LoRA) checked finite

One path for every loader: a Qwen2.5-VL folder (local or a hub snapshot), an OpenCLIP folder or weights
file, a checkpoint's connector and LoRA adapter (a training run's optimizer and random-number state are
checked the same way, from the same tensor_files, in clip_vlm_core.train_state). A real-size
Qwen2.5-VL-3B + ViT-L/14 checkpoint passes (tests/test_checkpoint_limits.py checks its headers against
its published config without allocating it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from clip_vlm_core.errors import UserError
from clip_vlm_core.jsonin import read_json, read_json_object
from clip_vlm_core.limits import MAX_MODEL_JSON_BYTES, MAX_SMALL_JSON_BYTES, bound_of, check_number, size_text
from clip_vlm_core.model.tensor_files import (
    FLOAT_DTYPES,
    FROZEN,
    TRAINABLE,
    check_finite,
    check_tensors,
    check_torch_zip,
    load_checked,
    read_safetensors_header,
    shape_text,
    specs_of,
)

# Sizes a Qwen2.5-VL config may declare: (low, high), high at least twice the largest released model's
# (values: 3B / 72B). A config beyond them is not a model anyone trained; inside them the weight files must
# still match the architecture exactly, so memory follows what the config declares.
QWEN_TEXT_LIMITS = {
    "vocab_size": (1, 1 << 20),  # 151,936 / 152,064 (the largest vocabularies in use: ~262,000)
    "hidden_size": (1, 16384),  # 2,048 / 8,192
    "intermediate_size": (1, 65536),  # 11,008 / 29,568
    "num_hidden_layers": (1, 160),  # 36 / 80
    "num_attention_heads": (1, 256),  # 16 / 64
    "num_key_value_heads": (1, 256),  # 2 / 8
    "max_position_embeddings": (1, 1 << 22),  # 128,000 / 128,000
}
QWEN_VISION_LIMITS = {
    "depth": (1, 128),  # 32 / 32
    "hidden_size": (1, 8192),  # 1,280 / 1,280
    "intermediate_size": (1, 32768),  # 3,420 / 3,456
    "num_heads": (1, 128),  # 16 / 16
    "out_hidden_size": (1, 16384),  # the language model's hidden_size
    "patch_size": (1, 64),  # 14
    "spatial_merge_size": (1, 8),  # 2
    "temporal_patch_size": (1, 8),  # 2
    "in_channels": (1, 8),  # 3
    "window_size": (1, 4096),  # 112
}
# OpenCLIP configs: ViT-bigG-14 is 1,664 wide and 48 deep, SigLIP's largest images 512 pixels.
OPEN_CLIP_LIMITS = {
    "embed_dim": (1, 8192), "width": (1, 8192), "layers": (1, 128), "heads": (1, 256), "head_width": (1, 1024),
    "image_size": (1, 2048), "patch_size": (1, 256), "context_length": (1, 4096), "vocab_size": (1, 1 << 20),
    "mlp_ratio": (0, 16),
}
# Qwen2.5-VL-72B has 73.4 billion parameters.
MAX_BASE_MODEL_PARAMETERS = 100_000_000_000
# Frozen weights are read at most in fp32 (4 bytes a parameter); quantized ones take less.
_FP32 = 4
_SLACK = 1 << 20  # per-file metadata tensors (quantization maps, scales) beyond the parameters


# -- configs ----------------------------------------------------------------------------------------

def _check_sizes(section: Mapping[str, Any], limits: Mapping[str, tuple[float, float]], where: str) -> None:
    for key, (low, high) in limits.items():
        values = section.get(key)
        for value in values if isinstance(values, list) else [values]:  # image_size [h, w], ResNet layers
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise UserError(f"{where}{key} must be a number, got {value!r}")
            if not low <= value <= high:
                raise UserError(f"{where}{key} is {value:,}, beyond the {low:,} to {high:,} of any real model of "
                                f"this architecture")


def check_qwen_config(raw: Mapping[str, Any], what: str) -> None:
    """A Qwen2.5-VL config.json (the hub's flat layout or transformers 5's nested text_config) within
    QWEN_TEXT_LIMITS / QWEN_VISION_LIMITS, its sizes consistent with each other."""
    if raw.get("model_type") != "qwen2_5_vl":
        raise UserError(f"{what} declares model_type {raw.get('model_type')!r}; clip-vlm loads Qwen2.5-VL "
                        f"(model_type 'qwen2_5_vl')")
    texts = [raw] + ([raw["text_config"]] if isinstance(raw.get("text_config"), dict) else [])
    for text in texts:
        where = f"{what}: {'text_config.' if text is not raw else ''}"
        _check_sizes(text, QWEN_TEXT_LIMITS, where)
    vision = raw.get("vision_config")
    if vision is not None and not isinstance(vision, dict):
        raise UserError(f"{what}: vision_config must be an object")
    _check_sizes(vision or {}, QWEN_VISION_LIMITS, f"{what}: vision_config.")


def qwen_architecture(folder: Path, what: str):
    """The Qwen2.5-VL model its folder's config.json declares, built on the meta device (no memory),
    after the config passed `check_qwen_config`."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    raw = read_json_object(folder / "config.json", f"{what} config", MAX_MODEL_JSON_BYTES)
    check_qwen_config(raw, f"{what} config {folder / 'config.json'}")
    try:
        config = Qwen2_5_VLConfig.from_dict(raw)
        text, vision = config.text_config, config.vision_config
        problems = [
            (text.hidden_size % text.num_attention_heads, "text hidden_size is not a multiple of num_attention_heads"),
            (text.num_attention_heads % text.num_key_value_heads,
             "num_attention_heads is not a multiple of num_key_value_heads"),
            (vision.hidden_size % vision.num_heads, "vision hidden_size is not a multiple of num_heads"),
            (vision.out_hidden_size != text.hidden_size, "vision out_hidden_size differs from the text hidden_size"),
        ]
        for failed, problem in problems:
            if failed:
                raise UserError(f"{what} config {folder / 'config.json'} is inconsistent: {problem}")
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration._from_config(config)
    except (ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError, RuntimeError) as exc:
        raise UserError(f"{what} config {folder / 'config.json'} does not describe a Qwen2.5-VL model "
                        f"({type(exc).__name__}: {exc})") from None
    parameters = sum(p.numel() for p in model.parameters())
    if parameters > MAX_BASE_MODEL_PARAMETERS:
        raise UserError(f"{what} config {folder / 'config.json'} declares {parameters:,} parameters, more than the "
                        f"{MAX_BASE_MODEL_PARAMETERS:,} of any Qwen2.5-VL model")
    return model


def check_model_texts(folder: Path, what: str) -> None:
    """Every JSON (and text) file a library will parse from a model folder: bounded size, bounded depth,
    valid JSON, before transformers or tokenizers sees it."""
    for path in sorted(folder.iterdir()):
        if path.suffix == ".json":
            read_json(path, f"{what} file", MAX_MODEL_JSON_BYTES)
        elif path.suffix in (".jinja", ".txt", ".model") and path.is_file():
            size = path.stat().st_size
            if size > MAX_MODEL_JSON_BYTES:
                raise UserError(f"{what} file {path} is {size_text(size)}, more than the "
                                f"{size_text(MAX_MODEL_JSON_BYTES)} such a file may be")


def check_qwen_folder(folder: Path, what: str = "Qwen2.5-VL model") -> None:
    """A Qwen2.5-VL folder (local, or a hub snapshot) before transformers loads it: its texts bounded,
    its config within real models' sizes, every weight tensor's header matching that architecture."""
    check_model_texts(folder, what)
    model = qwen_architecture(folder, what)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{what} folder {folder} holds no .safetensors weights; clip-vlm loads safetensors "
                        f"weights only")
    check_frozen_weights(files, model.state_dict(), _checkpoint_key_renamer(model), what)


def _checkpoint_key_renamer(model) -> Callable[[str], str]:
    """How transformers renames a checkpoint's keys for this model (Qwen2.5-VL's hub files say
    `model.layers.*`, its modules `model.language_model.layers.*`). Another transformers version without
    these helpers: names are compared as they are, and size limits still hold for the rest."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        return lambda key: rename_source_key(key, renamings, converters)[0]
    except Exception:  # noqa: BLE001 - a private API; its absence only loosens the name match
        return lambda key: key


def check_frozen_weights(files: Iterable[Path], state: Mapping[str, torch.Tensor],
                         rename: Callable[[str], str], what: str) -> None:
    """Frozen base weights, from their headers: floating-point tensors the architecture has match its
    shapes exactly; quantized ones (and any others) are no larger than its largest parameter; all of
    them together hold no more than the whole architecture in fp32."""
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    largest = max((math.prod(s) for s in shapes.values()), default=0)
    allowed = sum(math.prod(s) for s in shapes.values()) * _FP32 + _SLACK
    total = 0
    for file in files:
        for name, info in read_safetensors_header(file, f"{what} weights file").items():
            shown = f"{what} weights file {file} holds tensor {name!r}"
            if info.dtype not in FROZEN:
                raise UserError(f"{shown} as {info.dtype}; weights must be one of {', '.join(sorted(FROZEN))}")
            expected = shapes.get(rename(name))
            if expected is not None and info.dtype in FLOAT_DTYPES and info.shape != expected:
                raise UserError(f"{shown} of shape {shape_text(info.shape)}, where the architecture its config "
                                f"declares {shape_text(expected)}")
            if info.numel > largest:
                raise UserError(f"{shown} of {info.numel:,} elements, more than the largest parameter "
                                f"({largest:,}) of the architecture its config declares")
            total += info.nbytes
    if total > allowed:
        raise UserError(f"{what} weights hold {size_text(total)}, more than the {size_text(allowed)} of the whole "
                        f"architecture their config declares")


# -- OpenCLIP -----------------------------------------------------------------------------------------

def check_open_clip_config(folder: Path, what: str) -> None:
    raw = read_json_object(folder / "open_clip_config.json", f"{what} config", MAX_SMALL_JSON_BYTES)
    model_cfg = raw.get("model_cfg")
    if not isinstance(model_cfg, dict):
        raise UserError(f"{what} config {folder / 'open_clip_config.json'} has no model_cfg object")
    shown = f"{what} config {folder / 'open_clip_config.json'}: "
    _check_sizes(model_cfg, OPEN_CLIP_LIMITS, shown)
    for tower in ("vision_cfg", "text_cfg"):
        if isinstance(model_cfg.get(tower), dict):
            _check_sizes(model_cfg[tower], OPEN_CLIP_LIMITS, f"{shown}{tower}.")


def open_clip_architecture(name: str, what: str, **create_kwargs: Any):
    """An OpenCLIP model built from its config on the meta device (nothing allocated, no weights read)."""
    import logging

    import open_clip

    logging.disable(logging.WARNING)  # "no pretrained weights loaded": the point here
    try:
        with torch.device("meta"):
            return open_clip.create_model(name, pretrained=None, load_weights=False, device="meta", **create_kwargs)
    except (ValueError, TypeError, KeyError, RuntimeError, AssertionError, ZeroDivisionError) as exc:
        raise UserError(f"{what} {name!r} cannot be built from its config ({type(exc).__name__}: {exc})") from None
    finally:
        logging.disable(logging.NOTSET)


def check_open_clip_folder(folder: Path, what: str = "OpenCLIP model") -> None:
    """A local OpenCLIP folder (open_clip_config.json + safetensors weights) before open_clip loads it."""
    check_open_clip_config(folder, what)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{what} folder {folder} holds no .safetensors weights; clip-vlm loads safetensors "
                        f"weights only")
    state = open_clip_architecture(f"local-dir:{folder}", what).state_dict()
    for file in files:
        check_tensors(read_safetensors_header(file, f"{what} weights file"), specs_of(state, FROZEN),
                      f"{what} weights file {file}", allow_missing=True)


def check_open_clip_weights(file: Path, name: str, what: str, **create_kwargs: Any) -> None:
    """A named OpenCLIP model's downloaded weights (safetensors, or a torch.save zip read weights-only)."""
    state = open_clip_architecture(name, what, **create_kwargs).state_dict()
    if file.suffix == ".safetensors":
        check_tensors(read_safetensors_header(file, f"{what} weights file"), specs_of(state, FROZEN),
                      f"{what} weights file {file}", allow_missing=True)
        return
    sizes = [t.numel() * _FP32 for t in state.values()]
    check_torch_zip(file, f"{what} weights file", max(sizes, default=0), sum(sizes) + _SLACK)


# -- a checkpoint's trainable parts --------------------------------------------------------------------

def load_connector_state(path: Path, connector: torch.nn.Module) -> dict[str, torch.Tensor]:
    """connector.safetensors, read only once its header matches the connector the config builds."""
    return load_checked(path, specs_of(connector.state_dict(), TRAINABLE), "checkpoint file")


def _lora_bounds():
    from clip_vlm_core.config import CaptionerConfig

    return bound_of(CaptionerConfig, "lora_r"), bound_of(CaptionerConfig, "lora_alpha")


def check_adapter(adapter_dir: Path, base_model: torch.nn.Module) -> None:
    """A PEFT LoRA adapter folder, before PEFT reads it: adapter_config.json bounded (rank and alpha
    within the captioner's bounds), and every tensor of adapter_model.safetensors a lora_A [r, in] or
    lora_B [out, r] of a module its target_modules names in the base model."""
    config_path = adapter_dir / "adapter_config.json"
    shown = f"LoRA adapter config {config_path}"
    config = read_json_object(config_path, "LoRA adapter config", MAX_SMALL_JSON_BYTES)
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{shown} is a {config.get('peft_type')!r} adapter; clip-vlm loads LoRA adapters")
    for key in ("modules_to_save", "trainable_token_indices", "layer_replication", "use_dora", "target_parameters"):
        if config.get(key) not in (None, False, [], {}):
            raise UserError(f"{shown} sets {key}, which clip-vlm's LoRA adapters never use")
    rank_bound, alpha_bound = _lora_bounds()
    ranks = {_bounded_number(config.get("r"), rank_bound, f"{shown}: r", whole=True)}
    ranks |= {_bounded_number(v, rank_bound, f"{shown}: rank_pattern[{k!r}]", whole=True)
              for k, v in _mapping(config.get("rank_pattern"), f"{shown}: rank_pattern").items()}
    _bounded_number(config.get("lora_alpha", 8), alpha_bound, f"{shown}: lora_alpha")
    for key, value in _mapping(config.get("alpha_pattern"), f"{shown}: alpha_pattern").items():
        _bounded_number(value, alpha_bound, f"{shown}: alpha_pattern[{key!r}]")
    targets = _target_matcher(config.get("target_modules"), shown)
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file() and any(adapter_dir.glob("adapter_model.*")):
        raise UserError(f"LoRA adapter folder {adapter_dir} holds no adapter_model.safetensors; clip-vlm loads "
                        f"safetensors weights only")
    header = read_safetensors_header(weights, "LoRA adapter file")
    modules = {name: m for name, m in base_model.named_modules() if isinstance(m, torch.nn.Linear) and targets(name)}
    for key, info in header.items():
        match = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key)
        module = modules.get(match[1]) if match else None
        shown_key = f"LoRA adapter file {weights} holds tensor {key!r} {shape_text(info.shape)}"
        if module is None:
            raise UserError(f"{shown_key}, which is no LoRA weight of a module its target_modules names")
        rank = info.shape[0 if match[2] == "A" else -1] if len(info.shape) == 2 else -1
        rank = rank if rank in ranks else min(ranks)
        want = (rank, module.in_features) if match[2] == "A" else (module.out_features, rank)
        if info.shape != want:
            raise UserError(f"{shown_key}, where its rank ({', '.join(map(str, sorted(ranks)))}) and the base "
                            f"model's {match[1]} give {shape_text(want)}")
        if info.dtype not in TRAINABLE:
            raise UserError(f"{shown_key} as {info.dtype}; trainable weights must be one of "
                            f"{', '.join(sorted(TRAINABLE))}")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value in (None, {}):
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where} must be an object")
    return value


def _bounded_number(value: Any, bound, where: str, whole: bool = False) -> Any:
    check_number(where, value, bound, whole=whole)
    return value


def _target_matcher(targets: Any, where: str) -> Callable[[str], bool]:
    """PEFT's rule: a string is a regular expression the whole module name matches; a list names
    modules by their last name components."""
    if isinstance(targets, str) and len(targets) <= 1000:
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            raise UserError(f"{where}: target_modules is not a valid regular expression ({exc})") from None
        return lambda name: pattern.fullmatch(name) is not None
    if isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets) and len(targets) <= 1000:
        names = set(targets)
        return lambda name: name in names or name.rsplit(".", 1)[-1] in names
    raise UserError(f"{where}: target_modules must be a regular expression or a list of module names")


def check_lora_finite(model: torch.nn.Module, where: Path) -> None:
    """The LoRA weights PEFT loaded hold finite numbers."""
    check_finite({n: p for n, p in model.named_parameters() if ".lora_" in n}, f"LoRA adapter in {where}")
