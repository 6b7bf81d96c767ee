"""Configuration dataclasses: one flat dataclass per concern, prefixed field names, JSON/YAML round trip."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from clip_vlm_core.data.history import DEFAULT_HISTORY_STRIDE_S, MAX_HISTORY_FRAMES, MAX_HISTORY_STRIDE_S
from clip_vlm_core.errors import UserError
from clip_vlm_core.limits import (
    MAX_EOS_TOKEN_IDS,
    MAX_NEW_TOKENS,
    MAX_NUM_BEAMS,
    MAX_REPETITION_PENALTY,
    MAX_SMALL_JSON_BYTES,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    MIN_REPETITION_PENALTY,
    MIN_TEMPERATURE,
    bounded,
    check_fields,
    check_prompt,
    one_of,
)

DEFAULT_VIEWS = ("CAM_FRONT", "CAM_BACK")
# Inference settings (clip_vlm_core.model.inference); here so the CLI offers them without importing torch.
DECODERS = ("auto", "static", "transformers")
VISION_ATTENTIONS = ("auto", "varlen", "sdpa")
# The frozen language model's weights (clip_vlm_core.model.quantize): as loaded, 4-bit NF4 (QLoRA) or LLM.int8().
QUANTIZE_MODES = ("none", "nf4", "int8")
NUSCENES_CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_LEFT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
VIEW_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_PROMPT = "Describe what the car's cameras see, front then back, in plain language."
# LoRA goes on the language model's attention and MLP projections only. The vision tower has modules
# of the same names (gate_proj, up_proj, ...), hence the path anchor.
LANGUAGE_MODEL_LORA_TARGETS = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


# Qwen2.5-VL's processor sees images between 4 and 16,384 patches of 28x28 pixels (its own defaults).
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 28 * 28 * 4, 28 * 28 * 16384
_PIXELS = "Qwen2.5-VL's range, 4 to 16,384 patches of 28x28"
_DROPOUT = "a dropout probability"


@dataclass
class CaptionerConfig:
    """What a captioner is made of; saved as `clip_vlm_config.json` in every checkpoint."""

    qwen_model: str = "Qwen/Qwen2.5-VL-3B-Instruct"  # hub id or local folder
    clip_model: str = "ViT-L-14"  # open_clip model name, or a local open_clip folder
    clip_pretrained: str = "openai"  # open_clip pretrained tag (ignored for a local folder)
    clip_tokens: str = one_of("pooled", ("pooled", "patch"))  # "pooled": one token per view; "patch": every patch
    views: tuple[str, ...] = DEFAULT_VIEWS
    prompt: str = DEFAULT_PROMPT
    label_views: bool = True  # write "CAM_FRONT:" before each view's image in the prompt
    # The instruction (caption prompt or question) before the images instead of after them: the visual
    # tokens then see the question, so even a shallow language model reads the view it asks about.
    instruction_first: bool = False
    # Qwen's per-image pixel budget; None keeps the processor's
    min_pixels: int | None = bounded(None, QWEN_MIN_PIXELS, QWEN_MAX_PIXELS, why=_PIXELS)
    max_pixels: int | None = bounded(None, QWEN_MIN_PIXELS, QWEN_MAX_PIXELS, why=_PIXELS)
    connector_layers: int = bounded(2, 0, 24, why="a connector deeper than 24 layers outweighs the model it adapts")
    connector_heads: int = bounded(8, 1, 128, why="it must divide the language model's width")
    connector_dropout: float = bounded(0.0, 0.0, 1.0, high_open=True, why=_DROPOUT)
    lora_r: int = bounded(16, 1, 1024, why="LoRA's rank, far below the projections' width")
    lora_alpha: int = bounded(32, 1, 4096, why="LoRA's scale is alpha / r")
    lora_dropout: float = bounded(0.05, 0.0, 1.0, high_open=True, why=_DROPOUT)
    lora_targets: str = LANGUAGE_MODEL_LORA_TARGETS
    # The frozen language model in 4 bits (nf4: QLoRA) or 8 bits (int8) through bitsandbytes; vision tower,
    # CLIP and connector stay in full precision (clip_vlm_core.model.quantize).
    quantize: str = one_of("none", QUANTIZE_MODES)
    # Seeing more for little: CLIP tokens only, no Qwen tokens (model/connector.py). `context_views`: views
    # whose CLIP token joins the connector's memory beside the full views' (e.g. the four side cameras);
    # `history_frames`: each view's previous frames, `history_stride_s` apart, in the memory too. Neither:
    # the model is exactly the one without them (same tensors, same outputs).
    context_views: tuple[str, ...] = ()
    history_frames: int = bounded(0, 0, MAX_HISTORY_FRAMES, why="past frames per view; Alpamayo sees 4, video captioners 8")
    history_stride_s: float = bounded(DEFAULT_HISTORY_STRIDE_S, 0.0, MAX_HISTORY_STRIDE_S, low_open=True,
                                      why="seconds between past frames: nuScenes' keyframes are 0.5 s apart")

    def __post_init__(self) -> None:
        self.views = _view_names(self.views, "captioner.views")
        if not self.views:
            raise UserError("the captioner needs at least one camera view")
        self.context_views = _view_names(self.context_views, "captioner.context_views")
        both = sorted(set(self.views) & set(self.context_views))
        if both:
            raise UserError(f"captioner.context_views {both} are full views already (captioner.views); a view is one "
                            f"or the other")
        check_fields(self, "captioner.")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise UserError(f"captioner.min_pixels ({self.min_pixels}) must not exceed max_pixels ({self.max_pixels})")
        # Every prompt, wherever it comes from (a checkpoint's config, a recipe, --prompt, the node's prompt
        # parameter through with_prompt()), passes the check questions pass.
        self.prompt = check_prompt(self.prompt, "captioner.prompt")
        try:
            re.compile(self.lora_targets)
        except re.error as exc:
            raise UserError(f"captioner.lora_targets is not a valid regular expression ({exc})") from None


def _view_names(names: Any, field_name: str) -> tuple[str, ...]:
    """Camera names as a tuple, each valid in a prompt ("CAM_FRONT: ") and none twice."""
    if not isinstance(names, list | tuple):
        raise UserError(f"{field_name} must be a list of camera names, got {names!r}")
    for view in names:
        if not isinstance(view, str) or not VIEW_NAME.fullmatch(view):
            raise UserError(f"{field_name} holds {view!r}; a camera name is 1 to 64 letters, digits, '_' "
                            f"or '-', e.g. CAM_FRONT")
    if len(set(names)) != len(names):
        raise UserError(f"camera views must be distinct, got {list(names)}")
    return tuple(names)


@dataclass(frozen=True)
class DecodingConfig:
    """Generation settings; greedy by default so captions are reproducible.

    The one form decoding settings take from where they are set (the node's parameters, the CLI's flags,
    a recipe) to generate() and the static-cache decoder: CaptionNodeConfig.decoding() ->
    SceneCaptioner.caption(decoding=...) -> decoding_in_effect() -> MultiViewCaptionModel.generate().

    Left as None, `repetition_penalty` and `eos_token_ids` are the base model's own, from its
    generation_config.json (Qwen2.5-VL-Instruct: stop on <|im_end|> or <|endoftext|>, penalty 1.05):
    `SceneCaptioner.decoding_in_effect()` resolves them. Sampling settings are never taken from there:
    Qwen's (top_k 1, top_p 0.001, temperature 0.1) describe greedy decoding, and would silently turn
    `--sample` back into it. Every setting is passed to generate() explicitly.
    """

    max_new_tokens: int = bounded(64, 1, MAX_NEW_TOKENS, why="every new token grows each sequence's KV cache")
    # no end token before this many (the benchmark times captions of a fixed length)
    min_new_tokens: int = bounded(0, 0, MAX_NEW_TOKENS, why="at most max_new_tokens")
    num_beams: int = bounded(1, 1, MAX_NUM_BEAMS, why="each beam is a sequence with its own KV cache")
    do_sample: bool = False
    temperature: float = bounded(1.0, MIN_TEMPERATURE, MAX_TEMPERATURE,
                                 why="below, sampling is greedy; above, noise")
    top_p: float = bounded(1.0, 0.0, 1.0, low_open=True, why="a probability mass; 1 keeps every word")
    top_k: int = bounded(0, 0, MAX_TOP_K, why="0 keeps every word")
    repetition_penalty: float | None = bounded(None, MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY,
                                               why="beyond, captions loop or lose their common words")
    eos_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.do_sample, bool):
            raise UserError(f"do_sample must be true or false, got {self.do_sample!r}")
        check_fields(self)
        if self.min_new_tokens > self.max_new_tokens:
            raise UserError(f"min_new_tokens ({self.min_new_tokens}) cannot exceed max_new_tokens ({self.max_new_tokens})")
        if self.eos_token_ids is not None:
            ids = tuple([self.eos_token_ids] if isinstance(self.eos_token_ids, int) else self.eos_token_ids)
            object.__setattr__(self, "eos_token_ids", ids)  # frozen: set once, here
            if not 1 <= len(ids) <= MAX_EOS_TOKEN_IDS or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
            ):
                raise UserError(f"eos_token_ids must be 1 to {MAX_EOS_TOKEN_IDS} token ids (whole numbers >= 0), "
                                f"got {list(ids)}")
        if self.do_sample and self.num_beams > 1:
            raise UserError(f"do_sample cannot be combined with num_beams {self.num_beams} (beam search does not "
                            "sample here): choose one")

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> DecodingConfig:
        """The settings `values` hold under DecodingConfig's field names (parsed flags, a parameter table);
        other keys are theirs, not decoding settings, and left alone."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    def with_overrides(self, **overrides: Any) -> DecodingConfig:
        """These settings with some replaced (None keeps a setting), checked as at construction; an unknown
        name is one sentence."""
        overrides = {key: value for key, value in overrides.items() if value is not None}
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise UserError(f"unknown decoding setting(s) {unknown}; see DecodingConfig")
        return dataclasses.replace(self, **overrides) if overrides else self

    def record(self) -> dict[str, Any]:
        """Every setting by name, JSON-ready (EOS ids as a list): what a log line or a label records."""
        record = dataclasses.asdict(self)
        record["eos_token_ids"] = list(self.eos_token_ids or ())
        return record

    def generate_kwargs(self) -> dict[str, Any]:
        """generate() arguments, every one explicit; unset (None) ones are left to the model's config."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
        }
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = float(self.repetition_penalty)
        if self.eos_token_ids is not None:
            kwargs["eos_token_id"] = list(self.eos_token_ids)
        if self.do_sample:  # top_k explicitly: the model's config (Qwen's top_k 1) would otherwise apply
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:  # unset, so that the model's sampling settings neither apply nor warn in greedy/beam mode
            kwargs.update(temperature=None, top_p=None, top_k=None)
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
    """A dataclass from a JSON object file (a checkpoint's clip_vlm_config.json), read bounded."""
    from clip_vlm_core.jsonin import read_json_object

    data = read_json_object(path, "config", MAX_SMALL_JSON_BYTES)
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
