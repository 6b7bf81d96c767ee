"""What the launch files decide before they start anything, free of `launch` so tests run it anywhere.

caption.launch.py and replay.launch.py read their arguments, ask these functions what to start, and
only then hand processes to `launch`: an impossible request is settled (warned about or refused) while
nothing runs yet, so no process is ever left behind.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clip_vlm_core.errors import UserError
from clip_vlm_core.stream import POLICIES, validate_parameters
from clip_vlm_core.stream.config import SPECS

OVERLAY_PACKAGE = "rviz_2d_overlay_plugins"
PLAYERS = {"ros2": ["ros2", "bag", "play"], "clip-vlm": ["clip-vlm", "bag", "play"]}
EXECUTABLES = {False: "caption_node", True: "caption_lifecycle_node"}
NODE_NAME = "caption_node"
# A ROS namespace: empty, or /-separated tokens of letters, digits and _ (a leading / optional).
_NAMESPACE = re.compile(r"^(/?[A-Za-z_][A-Za-z0-9_]*)*/?$")
# Parameters every rclpy node declares itself, which a params file may set too.
RCLPY_PARAMETERS = {"use_sim_time", "start_type_description_service"}
# launch reads a condition as true or false from these words (launch.conditions.evaluate_condition_expression).
_TRUE, _FALSE = ("true", "1"), ("false", "0")


def is_true(name: str, text: str) -> bool:
    """A launch argument as a boolean, or a ValueError naming it."""
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError(f"launch argument {name}:={text} must be true or false")


def overlay_choice(requested: str, installed: Callable[[str], bool]) -> tuple[bool, str | None]:
    """(start rviz_2d_overlay_plugins' string_to_overlay_text?, a warning to log first or None).

    The overlay is an extra view of the captions, so its absence costs a warning, not the captions.
    """
    if not is_true("overlay", requested):
        return False, None
    if installed(OVERLAY_PACKAGE):
        return True, None
    return False, (
        f"overlay:=true but {OVERLAY_PACKAGE} is not installed (sudo apt install "
        f"ros-$ROS_DISTRO-rviz-2d-overlay-plugins): starting caption_node without the overlay; "
        "RViz can still show /scene_caption/marker and /scene_caption/image"
    )


def node_overrides(model: str, device: str, use_sim_time: str) -> dict[str, str | bool]:
    """The parameters a launch argument overrides: model and device only when given, so an empty
    argument leaves the params file's value; use_sim_time always."""
    overrides: dict[str, str | bool] = {name: value for name, value in (("model", model), ("device", device)) if value}
    overrides["use_sim_time"] = is_true("use_sim_time", use_sim_time)
    return overrides


def bag_play_command(player: str, bag: str, rate: str, loop: str) -> list[str]:
    """The player's command line: it publishes /clock (--clock) for the node's sim time.

    `ros2 bag play` and `clip-vlm bag play` (for machines without rosbag2) take the same options here.
    """
    if player not in PLAYERS:
        raise ValueError(f"launch argument player:={player} must be one of {', '.join(PLAYERS)}")
    if not bag:
        raise ValueError("launch argument bag:= is empty: name a bag folder, e.g. bag:=bags/scene-0061")
    command = [*PLAYERS[player], bag, "--clock", "--rate", rate]
    if is_true("loop", loop):
        command.append("--loop")
    return command


def node_is_ready(log_text: str) -> bool:
    """True for caption_node's start-up line "captioning <topics> at <rate> Hz, ...", logged once its
    model is loaded and its subscriptions exist: the moment a replay may start without losing frames."""
    return "captioning " in log_text


def package_installed(name: str) -> bool:
    """Whether ROS can find package `name` (its ament index entry), as `ros2 pkg prefix` would."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        get_package_prefix(name)
    except PackageNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class CaptionPlan:
    """What caption.launch.py starts, settled before anything runs."""

    executable: str  # caption_node, or caption_lifecycle_node (lifecycle:=true)
    lifecycle: bool
    namespace: str
    parameters: list[Any]  # the params file, then the overrides
    start_overlay: bool
    warning: str | None


def caption_plan(params_file: str, model: str, device: str, namespace: str, use_sim_time: str, overlay: str,
                 lifecycle: str, installed: Callable[[str], bool], views: str = "") -> CaptionPlan:
    """Every argument of caption.launch.py checked, with the params file's values and the overrides as the
    node will read them: a ValueError names the first argument the node would refuse, before it starts.

    `views` ('' = unset): the camera views as a YAML list. Unset, a model whose views are known before it
    loads (embedded:NAME, a checkpoint folder) brings its own (full views, then context views) when the params
    file lists others, so `model:=embedded:surround` alone subscribes to its six cameras; set, they must be
    the model's."""
    overrides = node_overrides(model, device, use_sim_time)
    values = params_file_values(params_file) | {k: v for k, v in overrides.items() if k in SPECS}
    model_reads = views_of_model(values.get("model", ""))
    if views.strip():
        overrides["views"] = parse_views(views)
        if model_reads is not None and set(overrides["views"]) != set(model_reads):
            raise ValueError(f"launch argument views:={views} does not match the views the model reads: "
                             f"{', '.join(model_reads)}")
    elif model_reads is not None and list(values.get("views", [])) != list(model_reads):
        overrides["views"] = list(model_reads)
    check_node_parameters(params_file, overrides)
    if not _NAMESPACE.match(namespace) or "__" in namespace:
        raise ValueError(f"launch argument namespace:={namespace} is not a valid ROS namespace (letters, digits, "
                         "_ and /, e.g. car1)")
    start_overlay, warning = overlay_choice(overlay, installed)
    managed = is_true("lifecycle", lifecycle)
    return CaptionPlan(EXECUTABLES[managed], managed, namespace, [params_file, overrides], start_overlay, warning)


def parse_views(text: str) -> list[str]:
    """views:= as a launch argument: a YAML list of camera names ("[CAM_FRONT, CAM_BACK]"), or a ValueError."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"launch argument views:={text} must be a list of camera names, e.g. "
                         f"views:='[CAM_FRONT, CAM_BACK]'")
    return value


def views_of_model(model: str) -> tuple[str, ...] | None:
    """The views a model reads (its full views, then its context views), when they are known before it loads:
    the embedded models and checkpoint folders (from their config); None for anything the node alone can
    settle (a hub id, a bare Qwen2.5-VL folder, a value that names nothing, said by the node). An embedded
    name the package does not have is a ValueError now."""
    from clip_vlm_core.jsonin import read_json_object
    from clip_vlm_core.limits import MAX_SMALL_JSON_BYTES
    from clip_vlm_core.model.model_refs import classify_ref, embedded_name

    try:
        if embedded_name(model) is None and not (Path(str(model)).expanduser() / "clip_vlm_config.json").is_file():
            return None
        ref = classify_ref(model, "model")
        config = read_json_object(ref.path / "clip_vlm_config.json", "checkpoint config", MAX_SMALL_JSON_BYTES)
    except UserError as exc:
        raise ValueError(str(exc)) from None
    views, context = config.get("views", []), config.get("context_views", [])
    if not isinstance(views, list) or not isinstance(context, list) or not views:
        return None  # the node's own check says what is wrong with it
    return tuple(str(v) for v in (*views, *context))


def check_node_parameters(params_file: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The node's parameters as the params file and the overrides set them, checked by the node's own
    validator; a ValueError names the file or the launch argument and what is wrong."""
    values = params_file_values(params_file)
    values.update({k: v for k, v in overrides.items() if k in SPECS})
    try:
        validate_parameters(values)
    except UserError as exc:
        text = str(exc)
        named = re.match(r"parameter (\w+)", text)
        if named and named.group(1) in overrides:  # said as the launch argument that set it
            name = named.group(1)
            prefix = f"parameter {name}={overrides[name]!r}"
            text = f"launch argument {name}:={overrides[name]}" + text[len(prefix):] if text.startswith(prefix) \
                else f"launch argument {name}:={overrides[name]}: {text}"
            raise ValueError(text) from None
        raise ValueError(f"params_file {params_file}: {text}") from None
    return values


def params_file_values(params_file: str) -> dict[str, Any]:
    """caption_node's parameters in a ROS params file: those under `/**` and under its own name (any
    namespace); names other nodes may take under `/**` are left to them."""
    path = Path(params_file)
    if not path.is_file():
        raise ValueError(f"launch argument params_file:={params_file} is not a file")
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"params_file {params_file} cannot be read as YAML ({type(exc).__name__})") from None
    if not isinstance(document, dict):
        raise ValueError(f"params_file {params_file} holds no '/**: ros__parameters:' mapping")
    values: dict[str, Any] = {}
    for key, section in document.items():
        name = str(key).rstrip("/").rsplit("/", 1)[-1]
        if name not in ("**", "*", NODE_NAME) or not isinstance(section, dict):
            continue
        found = section.get("ros__parameters")
        if not isinstance(found, dict):
            raise ValueError(f"params_file {params_file}: {key} has no ros__parameters mapping")
        for parameter, value in found.items():
            if parameter in SPECS:
                values[parameter] = value
            elif name == NODE_NAME and parameter not in RCLPY_PARAMETERS:
                raise ValueError(f"params_file {params_file}: caption_node has no parameter {parameter!r}")
    return values


def replay_overrides(policy: str) -> dict[str, str | bool]:
    """The parameters replay.launch.py sets over its params file: the policy, and the bag's clock."""
    return {"policy": policy, **node_overrides("", "", "true")}


def replay_checks(rate: str, policy: str, bag: str) -> None:
    """replay.launch.py's own arguments (the player's are bag_play_command's): a ValueError names the first
    bad one."""
    try:
        speed = float(rate)
    except ValueError:
        speed = float("nan")
    if not speed > 0:
        raise ValueError(f"launch argument rate:={rate} must be a number above 0 (1.0 plays at recorded speed)")
    if policy not in POLICIES:
        raise ValueError(f"launch argument policy:={policy} must be one of {', '.join(POLICIES)}")
    if bag and not Path(bag).exists():
        raise ValueError(f"launch argument bag:={bag} does not exist")
