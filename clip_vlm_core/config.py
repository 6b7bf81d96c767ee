"""Configuration dataclasses: one flat dataclass per concern, prefixed field names, JSON/YAML round trip."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from clip_vlm_core.errors import UserError

DEFAULT_VIEWS = ("CAM_FRONT", "CAM_BACK")
# Inference settings (clip_vlm_core.model.inference); here so the CLI offers them without importing torch.
DECODERS = ("auto", "static", "transformers")
VISION_ATTENTIONS = ("auto", "varlen", "sdpa")
NUSCENES_CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_LEFT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
DEFAULT_PROMPT = "Describe what the car's cameras see, front then back, in plain language."
# LoRA goes on the language model's attention and MLP projections only. The vision tower has modules
# of the same names (gate_proj, up_proj, ...), hence the path anchor.
LANGUAGE_MODEL_LORA_TARGETS = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class CaptionerConfig:
    """What a captioner is made of; saved as `clip_vlm_config.json` in every checkpoint."""

    qwen_model: str = "Qwen/Qwen2.5-VL-3B-Instruct"  # hub id or local folder
    clip_model: str = "ViT-L-14"  # open_clip model name, or a local open_clip folder
    clip_pretrained: str = "openai"  # open_clip pretrained tag (ignored for a local folder)
    clip_tokens: str = "pooled"  # "pooled": one token per view; "patch": every patch token
    views: tuple[str, ...] = DEFAULT_VIEWS
    prompt: str = DEFAULT_PROMPT
    label_views: bool = True  # write "CAM_FRONT:" before each view's image in the prompt
    # The instruction (caption prompt or question) before the images instead of after them: the visual
    # tokens then see the question, so even a shallow language model reads the view it asks about.
    instruction_first: bool = False
    min_pixels: int | None = None  # Qwen's per-image pixel budget; None keeps the processor's
    max_pixels: int | None = None
    connector_layers: int = 2
    connector_heads: int = 8
    connector_dropout: float = 0.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = LANGUAGE_MODEL_LORA_TARGETS

    def __post_init__(self) -> None:
        self.views = tuple(self.views)
        if not self.views:
            raise UserError("the captioner needs at least one camera view")
        if len(set(self.views)) != len(self.views):
            raise UserError(f"camera views must be distinct, got {list(self.views)}")
        if self.clip_tokens not in ("pooled", "patch"):
            raise UserError(f"clip_tokens must be 'pooled' or 'patch', got {self.clip_tokens!r}")
        if self.connector_layers < 0 or self.connector_heads < 1:
            raise UserError("connector_layers must be >= 0 and connector_heads >= 1")


@dataclass
class DecodingConfig:
    """Generation knobs; greedy by default so captions are reproducible."""

    max_new_tokens: int = 64
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise UserError(f"num_beams must be at least 1, got {self.num_beams}")
        if self.temperature <= 0:
            raise UserError(f"temperature must be positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise UserError(f"repetition_penalty must be positive, got {self.repetition_penalty}")

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a dataclass from a dict, naming any unknown key (typos must not pass silently)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{where} has unknown key(s) {unknown}; known keys are {sorted(names)}")
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    data = {key: _coerce(value, types[key], f"{where}: {key}") for key, value in data.items()}
    try:
        return cls(**data)
    except TypeError as exc:
        raise UserError(f"{where} is invalid: {exc}") from exc


def _coerce(value: Any, annotation: str, name: str) -> Any:
    """YAML reads 1e-4 as a string and users write 8 for 8.0: accept what is meant, refuse what is not."""
    kind = str(annotation).replace(" | None", "")
    if value is None and "None" in str(annotation):
        return None
    try:
        if kind == "float" and not isinstance(value, bool):
            return float(value)
        if kind == "int" and not isinstance(value, bool) and float(value) == int(float(value)):
            return int(float(value))
    except (TypeError, ValueError):
        pass
    else:
        if kind not in ("float", "int"):
            if kind == "bool" and not isinstance(value, bool):
                raise UserError(f"{name} must be true or false, got {value!r}")
            if kind == "str" and not isinstance(value, str):
                raise UserError(f"{name} must be text, got {value!r}")
            return value
    raise UserError(f"{name} must be a{'n integer' if kind == 'int' else ' number'}, got {value!r}")


def save_json(obj: Any, path: Path) -> None:
    """Write a dataclass as indented JSON (tuples become lists)."""
    path.write_text(json.dumps(dataclasses.asdict(obj), indent=2) + "\n")


def load_json(cls: type[T], path: Path) -> T:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object")
    return from_dict(cls, data, where=str(path))


__all__ = [
    "CaptionerConfig",
    "DecodingConfig",
    "DEFAULT_VIEWS",
    "NUSCENES_CAMERAS",
    "from_dict",
    "load_json",
    "save_json",
    "field",
]
