"""The caption node's parameters: one table (name, default, description, limits) and one validator.

The ROS node declares its parameters from `PARAMETERS`, the launch-file tests check names against it,
and `validate_parameters` turns whatever a params file or `-p` said into a `CaptionNodeConfig`, or one
`UserError` sentence naming the bad parameter.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clip_vlm_core.config import DEFAULT_VIEWS, NUSCENES_CAMERAS, DecodingConfig
from clip_vlm_core.errors import UserError
from clip_vlm_core.limits import MAX_BATCH_SIZE, bound_of, check_batch
from clip_vlm_core.stream.batching import POLICIES
from clip_vlm_core.stream.qos import QOS_RELIABILITIES

IMAGE_TRANSPORTS = ("compressed", "raw")
_DEVICE = re.compile(r"^(|auto|cpu|cuda|cuda:\d+)$")
_VIEW = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # becomes part of a topic name
# A ROS topic name: absolute (/a/b), relative (a/b) or private (~/a/b); tokens of letters, digits, _.
_TOPIC = re.compile(r"^(/|~/)?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")
# Pairs waiting under policy all: a decoded 1600x900 pair is 8.6 MB, so 256 pairs hold 2.2 GB (100,000
# would be 860 GB); at a camera's 12 Hz that is 21 s of backlog, at 2 Hz keyframes two minutes.
MAX_QUEUE_SIZE = 256
# Views the node subscribes to, at most: a car's surround rig (nuScenes' six cameras).
MAX_VIEWS = len(NUSCENES_CAMERAS)
# Messages held per image subscription: a raw 1600x900 frame is 4.3 MB, so 100 hold 430 MB per view.
MAX_QOS_DEPTH = 100


def _decoding_range(name: str) -> dict[str, float]:
    """The node's range for a decoding parameter: DecodingConfig's own bound (one place for both)."""
    bound = bound_of(DecodingConfig, name)
    return {"low": 0.0 if bound.low_open else bound.low, "high": bound.high}


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: Any
    description: str
    read_only: bool = True  # the rest are applied live by the node
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("model", "", "checkpoint folder, hub id, or embedded:NAME ('' = embedded:default; embedded:surround: six "
                  "cameras with a history)"),
    ParameterSpec("base_models_root", "", "a folder the checkpoint's local base models may lie in; '' = "
                  "$CLIP_VLM_BASE_MODELS, else the folder holding the checkpoint"),
    ParameterSpec("device", "", "'' (auto: cuda when available), cpu, cuda or cuda:N"),
    ParameterSpec("views", list(DEFAULT_VIEWS), f"camera views to subscribe to (at most {MAX_VIEWS}): the model's "
                  "views, then its context views if it has any, all paired by stamp"),
    ParameterSpec("image_transport", "compressed", "compressed (sensor_msgs/CompressedImage) or raw (sensor_msgs/Image)",
                  choices=IMAGE_TRANSPORTS),
    ParameterSpec("topic_template", "{view}/image_raw",
                  "base image topic per view, relative so a namespace or remap moves it (a leading / pins it); "
                  "compressed transport appends '/compressed' as image_transport does"),
    ParameterSpec("qos_reliability", "auto", "auto: follow the cameras' publishers (reliable until they are "
                  "seen, then best effort if any offers it, else reliable); reliable or best_effort pin it (a "
                  "best-effort reader may get no large raw frames from a reliable writer)", choices=QOS_RELIABILITIES),
    ParameterSpec("qos_depth", 5, "history depth of each image subscription", low=1, high=MAX_QOS_DEPTH),
    ParameterSpec("max_skew_ms", 50.0, "frames of different views pair when their stamps differ by at most this",
                  low=0.0, high=10_000.0),
    ParameterSpec("max_age_ms", 1000.0, "a pair older than this when its turn comes is dropped (age: newest stamp "
                  "seen minus its stamp, or time waited here, whichever is larger)", low=1.0, high=3_600_000.0),
    ParameterSpec("rate_hz", 2.0, "captions a second, at most, under either policy (a batch of n pairs under "
                  "all counts n)", read_only=False, low=0.001, high=1000.0),
    ParameterSpec("batch_size", 4, "pairs captioned in one model call (policy all)", low=1, high=MAX_BATCH_SIZE),
    ParameterSpec("policy", "latest", "latest: caption only the freshest pair; all: a FIFO of queue_size pairs",
                  choices=POLICIES),
    ParameterSpec("queue_size", 32, "pairs kept waiting under policy all (the oldest dropped when full; a decoded 1600x900 pair is 8.6 MB)",
                  low=1, high=MAX_QUEUE_SIZE),
    ParameterSpec("view_timeout_s", 2.0, "a view silent this long is reported as WARN in /diagnostics",
                  low=0.01, high=3600.0),
    ParameterSpec("caption_missing_views", False, "caption when a view is silent, showing it as a black image",
                  read_only=False),
    ParameterSpec("max_new_tokens", 64, "longest caption, in tokens", read_only=False,
                  **_decoding_range("max_new_tokens")),
    ParameterSpec("num_beams", 1, "beam search width (1 = greedy)", read_only=False, **_decoding_range("num_beams")),
    ParameterSpec("repetition_penalty", 0.0, "divides the scores of tokens already seen: 0.0 = the model's own "
                  "(1.05 for Qwen2.5-VL-Instruct), 1.0 = none, else 0.5 to 2.0", read_only=False,
                  **_decoding_range("repetition_penalty") | {"low": 0.0}),
    ParameterSpec("do_sample", False, "sample the caption instead of greedy/beam decoding", read_only=False),
    ParameterSpec("temperature", 1.0, "sampling temperature (with do_sample)", read_only=False,
                  **_decoding_range("temperature")),
    ParameterSpec("top_p", 1.0, "nucleus sampling mass, above 0 (with do_sample)", read_only=False, **_decoding_range("top_p")),
    ParameterSpec("top_k", 0, "sample among the k most likely tokens (with do_sample); 0 = all", read_only=False,
                  **_decoding_range("top_k")),
    ParameterSpec("prompt", "", "instruction given to the model; '' = the checkpoint's own"),
    ParameterSpec("fast_inference", True, "on a GPU: greedy decoding as CUDA-graph replays, packed vision "
                  "attention, LoRA merged (same captions, see BENCHMARKS.md); false = transformers' generate()"),
    ParameterSpec("publish_image", True, "publish the front image with the caption drawn on it (only while "
                  "someone subscribes)", read_only=False),
    ParameterSpec("question_queue_size", 8, "questions on scene_question kept waiting for an answer (the oldest "
                  "dropped when full)", low=1, high=MAX_QUEUE_SIZE),
    ParameterSpec("max_frame_rate_hz", 200.0, "frames a second the node takes from each view, at most; beyond it "
                  "they wait in the subscription's history, the oldest lost there and counted (a flood on one "
                  "input must not starve the others)", low=1.0, high=100_000.0),
    ParameterSpec("max_question_rate_hz", 50.0, "questions a second the node takes from scene_question, at most; "
                  "beyond it they wait in the subscription's history, the oldest lost there and counted",
                  low=1.0, high=100_000.0),
)
SPECS = {spec.name: spec for spec in PARAMETERS}


@dataclass(frozen=True)
class CaptionNodeConfig:
    """Every parameter of the node, checked (`validate_parameters`); one field per PARAMETERS entry."""

    model: str
    base_models_root: str
    device: str
    views: tuple[str, ...]
    image_transport: str
    topic_template: str
    qos_reliability: str
    qos_depth: int
    max_skew_ms: float
    max_age_ms: float
    rate_hz: float
    batch_size: int
    policy: str
    queue_size: int
    view_timeout_s: float
    caption_missing_views: bool
    max_new_tokens: int
    num_beams: int
    repetition_penalty: float
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int
    prompt: str
    fast_inference: bool
    publish_image: bool
    question_queue_size: int
    max_frame_rate_hz: float
    max_question_rate_hz: float

    def topic_for(self, view: str) -> str:
        base = self.topic_template.format(view=view)
        return base + "/compressed" if self.image_transport == "compressed" else base

    def decoding(self) -> DecodingConfig:
        """How captions and answers are decoded: the one object caption() takes (repetition_penalty 0.0, the
        model's own, stays unset for the captioner to resolve)."""
        return DecodingConfig.of(dataclasses.asdict(self) | {"repetition_penalty": self.repetition_penalty or None})


def validate_parameters(values: Mapping[str, Any]) -> CaptionNodeConfig:
    """Defaults filled in, every value checked; the first problem raises one UserError sentence."""
    unknown = sorted(set(values) - set(SPECS))
    if unknown:
        raise UserError(f"unknown parameter(s) {unknown}; the caption node takes {sorted(SPECS)}")
    checked = {spec.name: _check(spec, values.get(spec.name, spec.default)) for spec in PARAMETERS}
    views = checked["views"]
    if not views:
        raise UserError("parameter views is empty: name at least one camera view, e.g. [CAM_FRONT, CAM_BACK]")
    for view in views:
        if not _VIEW.match(view):
            raise UserError(f"parameter views has {view!r}, which is not a valid view name (letters, digits, _)")
    if len(set(views)) != len(views):
        raise UserError(f"parameter views names a view twice: {views}")
    if len(views) > MAX_VIEWS:
        raise UserError(f"parameter views names {len(views)} views; the node subscribes to at most {MAX_VIEWS}")
    if not _DEVICE.match(checked["device"]):
        raise UserError(f"parameter device={checked['device']!r} is unknown: use '', cpu, cuda or cuda:N")
    template = checked["topic_template"]
    if "{view}" not in template:
        raise UserError(f"parameter topic_template={template!r} must contain {{view}}, e.g. '{{view}}/image_raw'")
    try:
        example = template.format(view=views[0])
    except (KeyError, IndexError, ValueError):
        raise UserError(f"parameter topic_template={template!r} may hold no placeholder but {{view}}") from None
    if not _TOPIC.match(example) or "__" in example:
        raise UserError(f"parameter topic_template={template!r} gives {example!r}, which is not a valid ROS "
                        "topic name (letters, digits, _ and /, e.g. '{view}/image_raw')")
    checked["views"] = tuple(views)
    config = CaptionNodeConfig(**checked)
    try:  # the same check as the CLI's and eval's, for what the table's ranges cannot say
        config.decoding()
        check_batch(config.batch_size, config.num_beams, "parameter batch_size")
    except UserError as exc:
        raise UserError(str(exc) if str(exc).startswith("parameter") else f"parameter {exc}") from None
    return config


def replace_parameter(config: CaptionNodeConfig, name: str, value: Any) -> CaptionNodeConfig:
    """The config with one live-changeable parameter set (validated like at start-up)."""
    if SPECS[name].read_only:
        raise UserError(f"parameter {name} is read-only: restart the node to change it")
    values = dataclasses.asdict(config) | {name: value}
    values["views"] = list(values["views"])
    return validate_parameters(values)


def _check(spec: ParameterSpec, value: Any) -> Any:
    default = spec.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"parameter {spec.name}={value!r} must be true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"parameter {spec.name}={value!r} must be a whole number")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"parameter {spec.name}={value!r} must be a number")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise UserError(f"parameter {spec.name}={value!r} must be a string")
    elif isinstance(default, list):
        if value is None or isinstance(value, list | tuple) and len(value) == 0:
            value = []  # ROS reads `[]` as an unset value or an array of some element type
        elif not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise UserError(f"parameter {spec.name}={value!r} must be a list of strings")
        value = list(value)
    if spec.choices and value not in spec.choices:
        raise UserError(f"parameter {spec.name}={value!r} is unknown: use one of {list(spec.choices)}")
    # written so that NaN, which compares false with everything, is out of range too
    if spec.low is not None and not value >= spec.low or spec.high is not None and not value <= spec.high:
        raise UserError(f"parameter {spec.name}={value!r} is out of range [{spec.low}, {spec.high}]")
    return value
