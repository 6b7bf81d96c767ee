"""What the launch files decide before they start anything, free of `launch` so tests run it anywhere.

caption.launch.py and replay.launch.py read their arguments, ask these functions what to start, and
only then hand processes to `launch`: an impossible request is settled (warned about or refused) while
nothing runs yet, so no process is ever left behind.
"""

from __future__ import annotations

from collections.abc import Callable

OVERLAY_PACKAGE = "rviz_2d_overlay_plugins"
PLAYERS = {"ros2": ["ros2", "bag", "play"], "clip-vlm": ["clip-vlm", "bag", "play"]}
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
