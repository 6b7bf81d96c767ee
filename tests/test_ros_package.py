"""The ROS 2 package as a ROS user installs it: package.xml, the launch files' decisions, the colcon install.

None of this needs `launch`, `ros2` or colcon: package.xml is checked against the package's imports, the
launch files' decisions are plain functions (clip_vlm.launch_plan), and the install runs the very
`setup.py ... install` command colcon runs for an ament_python package.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from clip_vlm.launch_plan import (
    OVERLAY_PACKAGE,
    bag_play_command,
    is_true,
    node_overrides,
    overlay_choice,
    package_installed,
)

from clip_vlm_core.stream import PARAMETERS
from clip_vlm_core.teardown import bounded_teardown

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ros2_ws" / "src" / "clip_vlm"
# Python distributions by rosdep key (rosdep installs them from the distro: apt, dnf, ...).
ROSDEP_KEYS = {"numpy": "python3-numpy", "yaml": "python3-yaml"}
# Run, not imported: `ros2 launch` for the launch files; replay.launch.py runs `ros2 bag play`, which
# needs the MCAP plugin on Humble to read the bags `clip-vlm bag convert` writes by default.
RUN_NOT_IMPORTED = {"ros2launch", "ros2bag", "rosbag2_storage_mcap"}
# Not for rosdep: clip_vlm_core and its dependencies come from pip (README: On a ROS 2 machine).
PIP_INSTALLED = {"clip_vlm_core"}

pytestmark = pytest.mark.ros  # `make test` runs these under Kilted and Jazzy


def imported_modules(path: Path) -> set[str]:
    """Top-level modules a file imports, leaving out optional ones (imported under `except ImportError`)."""
    tree = ast.parse(path.read_text())
    optional = {
        id(node)
        for handler in ast.walk(tree) if isinstance(handler, ast.Try)
        if any(isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in handler.handlers)
        for stmt in handler.body for node in ast.walk(stmt)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def exec_depends() -> set[str]:
    root = ET.parse(PACKAGE / "package.xml").getroot()
    return {e.text.strip() for tag in ("exec_depend", "depend") for e in root.iter(tag)}


def test_package_xml_declares_exactly_what_the_package_imports_and_runs():
    sources = [*sorted((PACKAGE / "clip_vlm").glob("*.py")), *sorted((PACKAGE / "launch").glob("*.launch.py"))]
    imported = set().union(*(imported_modules(p) for p in sources))
    imported -= set(sys.stdlib_module_names) | {"clip_vlm", "__future__"} | PIP_INSTALLED
    needed = {ROSDEP_KEYS.get(name, name) for name in imported} | RUN_NOT_IMPORTED
    declared = exec_depends()
    assert not needed - declared, f"imported or run but not declared in package.xml: {sorted(needed - declared)}"
    assert not declared - needed, f"declared in package.xml but neither imported nor run: {sorted(declared - needed)}"


def test_package_xml_leaves_pip_packages_to_pip():
    assert not exec_depends() & {"clip_vlm_core", "torch", "transformers", "python3-torch"}


# -- launch files' decisions ---------------------------------------------------------------------------
def test_overlay_off_starts_no_overlay_and_says_nothing():
    assert overlay_choice("false", lambda name: True) == (False, None)


def test_overlay_on_with_the_plugin_installed_starts_it():
    assert overlay_choice("true", lambda name: name == OVERLAY_PACKAGE) == (True, None)


def test_overlay_on_without_the_plugin_warns_and_starts_the_node_alone():
    start, warning = overlay_choice("True", lambda name: False)
    assert not start
    assert OVERLAY_PACKAGE in warning and "ros-$ROS_DISTRO-rviz-2d-overlay-plugins" in warning
    assert "without the overlay" in warning


@pytest.mark.parametrize("text", ["maybe", "", "yes please"])
def test_a_launch_argument_that_is_not_true_or_false_is_refused_naming_it(text):
    with pytest.raises(ValueError, match=f"launch argument overlay:={text} must be true or false"):
        overlay_choice(text, lambda name: True)


def test_launch_booleans_read_as_launch_reads_conditions():
    assert [is_true("x", w) for w in ("true", "TRUE", "1", "false", "0", "False")] == [True] * 3 + [False] * 3


def test_empty_model_and_device_leave_the_params_file_in_charge():
    assert node_overrides("", "", "false") == {"use_sim_time": False}
    assert node_overrides("runs/best", "cuda", "true") == {"model": "runs/best", "device": "cuda", "use_sim_time": True}


def test_launch_overrides_are_parameters_the_node_declares():
    names = set(node_overrides("m", "cpu", "true"))
    assert names <= {spec.name for spec in PARAMETERS} | {"use_sim_time"}


def test_replay_plays_with_the_bags_clock_under_either_player():
    assert bag_play_command("ros2", "bags/scene-0061", "0.5", "true") == [
        "ros2", "bag", "play", "bags/scene-0061", "--clock", "--rate", "0.5", "--loop"]
    assert bag_play_command("clip-vlm", "bags/scene-0061", "1.0", "false") == [
        "clip-vlm", "bag", "play", "bags/scene-0061", "--clock", "--rate", "1.0"]


def test_clip_vlm_bag_play_takes_the_replay_launch_files_options():
    from clip_vlm_core.cli import build_parser

    args = build_parser().parse_args(bag_play_command("clip-vlm", "bags/x", "2.0", "true")[1:])
    assert (args.clock, args.rate, args.loop) == (40.0, 2.0, True)  # 40 Hz, as `ros2 bag play --clock`


@pytest.mark.parametrize(("player", "bag", "named"), [("rosbag", "b", "player:=rosbag"), ("ros2", "", "bag:=")])
def test_a_bad_replay_argument_is_refused_before_anything_starts(player, bag, named):
    with pytest.raises(ValueError, match=named):
        bag_play_command(player, bag, "1.0", "false")


def test_a_package_counts_as_installed_when_the_ament_index_has_it(monkeypatch):
    monkeypatch.setenv("AMENT_PREFIX_PATH", sys.prefix)  # the venv's ROS wheels keep an ament index
    assert package_installed("rclpy")
    assert not package_installed(OVERLAY_PACKAGE)


# -- the install colcon makes ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colcon_style_install(tmp_path_factory) -> Path:
    """`setup.py ... install` as colcon's ament_python build runs it, by this test's Python (a venv's,
    as on a ROS machine: `python -m colcon build` run by a venv over the ROS Python)."""
    tmp = tmp_path_factory.mktemp("colcon")
    source, prefix, build = tmp / "src" / "clip_vlm", tmp / "install" / "clip_vlm", tmp / "build" / "clip_vlm"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"))
    build.mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "setup.py", "egg_info", "--egg-base", str(build), "build", "--build-base",
         str(build / "build"), "install", "--prefix", str(prefix), "--record", str(build / "install.log"),
         "--install-scripts", str(prefix / "lib" / "clip_vlm"), "--single-version-externally-managed",
         "install_data"],
        cwd=source, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return prefix


def test_installed_caption_node_runs_with_the_python_that_built_it(colcon_style_install):
    script = colcon_style_install / "lib" / "clip_vlm" / "caption_node"
    assert script.read_text().splitlines()[0] == f"#!{sys.executable}"
    site = sysconfig.get_path("purelib", vars={"base": str(colcon_style_install)})
    env = {**os.environ, "PYTHONPATH": site, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    done = subprocess.run([str(script), "--ros-args", "-p", "rate_hz:=0.0"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("caption_node: error: parameter rate_hz"), done.stderr


def test_installed_package_is_found_as_ros2_run_and_launch_find_it(colcon_style_install, monkeypatch):
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    monkeypatch.setenv("AMENT_PREFIX_PATH", str(colcon_style_install))  # what install/setup.bash sets
    assert get_package_prefix("clip_vlm") == str(colcon_style_install)
    share = Path(get_package_share_directory("clip_vlm"))
    assert {p.name for p in (share / "launch").iterdir()} == {"caption.launch.py", "replay.launch.py"}
    assert (share / "config" / "caption.yaml").is_file() and (share / "package.xml").is_file()


def test_bag_convert_help_tells_a_humble_user_which_storage_plays():
    done = subprocess.run([sys.executable, "-m", "clip_vlm_core", "bag", "convert", "--help"], capture_output=True,
                          text=True, timeout=60)
    text = " ".join(done.stdout.split())
    assert "Humble plays only sqlite3" in text and "ros-humble-rosbag2-storage-mcap" in text
    assert "--storage sqlite3" in text


def test_the_node_logs_warnings_through_warning_not_the_deprecated_warn():
    """rclpy's deprecated `warn()` is wrapped, so every call of it has one call site (the wrapper): after a
    throttled warn (a looping bag's stamp jump), the next warn with other settings raised ValueError in the
    executor and killed the node (found by test_node: a time jump, then a refused question)."""
    sources = {p.name: p.read_text() for p in (PACKAGE / "clip_vlm").glob("*.py")}
    assert not {name for name, text in sources.items() if ".warn(" in text}
    assert ".warning(" in sources["ros_logging.py"]  # the one sink everything the node reports goes through
    # ... called without rclpy's throttle arguments: throttling is clip_vlm_core.stream.logs', per kind
    assert not {name for name, text in sources.items() if "throttle_duration_sec" in text}


def test_rclpy_keeps_warning_call_sites_apart_so_a_throttled_one_and_a_plain_one_can_alternate():
    import rclpy
    from rclpy.node import Node

    rclpy.init()
    node = None
    try:
        node = Node("warning_call_sites")
        for _ in range(2):
            node.get_logger().warning("stamp went back", throttle_duration_sec=10.0)
            node.get_logger().warning("question refused")
    finally:
        with bounded_teardown(exit_code=1):  # a DDS hang ends the run with its stacks rather than stalling it
            if node is not None:
                node.destroy_node()
            rclpy.shutdown()


def test_no_name_in_the_node_package_shadows_a_module_it_imports():
    """A parameter or local named like an imported module (`parameters` in the node, which imports
    clip_vlm.parameters) hides the module inside that function; none may."""
    for path in sorted((PACKAGE / "clip_vlm").glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree)
                   if isinstance(node, ast.Import) for alias in node.names}
        modules |= {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    for alias in node.names if (alias.asname or alias.name).islower()
                    and (PACKAGE / "clip_vlm" / f"{alias.name}.py").exists()}
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
            arguments = {a.arg for a in (*function.args.args, *function.args.kwonlyargs, *function.args.posonlyargs)}
            stored = {n.id for n in ast.walk(function) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            assert not (arguments | stored) & modules, f"{path.name}:{function.name} shadows {(arguments | stored) & modules}"
