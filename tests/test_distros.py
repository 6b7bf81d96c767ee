"""The ROS 2 distros the suite runs under: each venv runs its own distro and nothing of another, and distros talk.

`make test` (and `make test-slow` for the slow ones) runs the suite under .venv (Kilted's rclpy wheels) and the
tests marked `ros` again under .venv-jazzy (Jazzy's). .venv-jazzy holds Jazzy's ROS wheels and links to .venv's other packages
(scripts/share_site_packages.py); the wheels of both distros share package and library names, so these tests
check that no module or native library of the other distro is found or loaded. Humble is not tested: no
registry reachable here has its rclpy (see the README's Tests section).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from functools import cache
from importlib.metadata import distributions
from importlib.util import find_spec
from pathlib import Path

import pytest
from helper_exit import assert_helper_done
from ros_distro import (
    RCLPY_MAJOR_DISTRO,
    ROOT,
    VENV_DISTRO,
    env_for_another_venv,
    other_venvs,
    running_distro,
    venv_python,
)
from test_node import FAST_DECODING, NODE, probe_command, ros_env, start_node, stop_node

pytestmark = pytest.mark.ros

HERE = Path(sys.prefix).resolve()
DISTRO = running_distro()
needs_rclpy = pytest.mark.skipif(DISTRO is None, reason="rclpy is not installed: run `make venv`")


@cache
def site_packages(prefix: Path) -> Path:
    return next(prefix.glob("lib/python3*/site-packages"))


@cache
def ros_entries(prefix: Path) -> frozenset[str]:
    """What the ROS wheels of the venv at `prefix` installed directly in its site-packages (from their RECORDs)."""
    entries: set[str] = set()
    for dist in distributions(path=[str(site_packages(prefix))]):
        if dist.metadata["Name"].lower().replace("_", "-").startswith("ros-"):
            entries |= {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] not in ("..", "__pycache__")}
    return frozenset(entries)


def belongs_to_another_distro(path: str) -> str | None:
    """The venv whose ROS wheels installed the file at `path`, if it is not the running one."""
    real = Path(path).resolve()
    for name in VENV_DISTRO:
        prefix = (ROOT / name).resolve()
        if prefix == HERE or not real.is_relative_to(prefix):
            continue
        if real.parent == prefix / "lib":  # where the ROS wheels put librcl.so, libfastdds.so, ...
            return name
        site = site_packages(prefix)
        if real.is_relative_to(site) and real.relative_to(site).parts[0] in ros_entries(prefix):
            return name
    return None


# Imports the message packages the node uses, sends one of each through DDS, then lists modules and libraries.
LOADED = r"""
import json, sys, time
import rclpy
from rclpy.lifecycle import LifecycleNode
from rclpy.node import Node
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import State
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from visualization_msgs.msg import Marker

rclpy.init()
node = Node("distro_check")
kinds = {"s": String, "i": Image, "c": CompressedImage, "m": Marker, "d": DiagnosticArray, "l": State}
got = set()
pubs = {}
for topic, kind in kinds.items():
    node.create_subscription(kind, topic, lambda msg, t=topic: got.add(t), 10)
    pubs[topic] = node.create_publisher(kind, topic, 10)
end = time.monotonic() + 10
while got != set(kinds) and time.monotonic() < end:
    for topic in set(kinds) - got:
        pubs[topic].publish(kinds[topic]())
    rclpy.spin_once(node, timeout_sec=0.1)
modules = {name: m.__file__ for name, m in list(sys.modules.items()) if getattr(m, "__file__", None)}
maps = sorted({parts[5].strip() for parts in (line.split(maxsplit=5) for line in open("/proc/self/maps"))
               if len(parts) == 6 and parts[5].startswith("/")})
print(json.dumps({"received": sorted(got), "modules": modules, "maps": maps}), flush=True)
from clip_vlm_core.teardown import arm_exit_watchdog  # after the lists: it is not among what they check
arm_exit_watchdog(exit_code=0)  # the result is out; rclpy's teardown at exit must not keep the test waiting
"""


@needs_rclpy
def test_the_suite_runs_the_distro_its_venv_was_built_for():
    venv = Path(sys.prefix).name
    if venv not in VENV_DISTRO:
        pytest.skip(f"{sys.prefix} is not a venv `make test` builds")
    assert DISTRO.name == VENV_DISTRO[venv]
    assert RCLPY_MAJOR_DISTRO[int(DISTRO.rclpy_version.split(".")[0])] == DISTRO.name  # meta-package agrees
    assert DISTRO.rclpy_path.resolve().is_relative_to(site_packages(HERE))
    # The node the ros tests start runs this venv's Python (pip writes a /bin/sh exec line for long paths).
    assert NODE.is_file() and f"{sys.prefix}/bin/python" in "\n".join(NODE.read_text().splitlines()[:3])


@needs_rclpy
def test_no_ros_module_of_another_distro_can_be_imported():
    """Every name another venv's ROS wheels install is either this venv's own or not found at all."""
    others = [name for name in VENV_DISTRO if (ROOT / name).resolve() != HERE and (ROOT / name).is_dir()]
    if not others:
        pytest.skip("no other distro's venv here: `make test` builds .venv-jazzy")
    checked = 0
    for name in others:
        for entry in ros_entries((ROOT / name).resolve()):
            module = entry.removesuffix(".py")
            if not module.isidentifier():
                continue  # dist-info folders, .libs folders, .pth files
            spec = find_spec(module)
            checked += 1
            if spec is not None:
                where = spec.origin or next(iter(spec.submodule_search_locations))
                assert belongs_to_another_distro(where) is None, f"{module} is found in {where}"
    assert checked > 20  # rclpy, rcl_interfaces, std_msgs, sensor_msgs, ...


@needs_rclpy
def test_a_ros_process_loads_only_this_distros_modules_and_libraries():
    done = subprocess.run([sys.executable, "-c", LOADED], env=ros_env(), capture_output=True, text=True, timeout=120)
    assert_helper_done(done.returncode, done.stderr, "the distro check")
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["received"] == ["c", "d", "i", "l", "m", "s"]
    foreign = {p: venv for p in [*loaded["modules"].values(), *loaded["maps"]] if (venv := belongs_to_another_distro(p))}
    assert foreign == {}
    own_lib = HERE / "lib"
    assert {Path(p).name for p in loaded["maps"] if Path(p).parent == own_lib} >= {"librcl.so", "librmw_fastrtps_cpp.so"}
    assert Path(loaded["modules"]["rclpy"]).resolve().is_relative_to(site_packages(HERE))


@pytest.mark.slow
@needs_rclpy
@pytest.mark.skipif(not NODE.exists(), reason="caption_node is not installed: run `make venv`")
def test_a_node_under_this_distro_and_a_probe_under_another_exchange_frames_captions_and_answers(tmp_path):
    """Jazzy and Kilted over DDS: the other distro publishes CompressedImage pairs and a question; this
    distro's node answers with captions (String), markers, captioned frames (Image) and /diagnostics."""
    if not other_venvs():
        pytest.skip("no other distro's venv here: `make test` builds .venv-jazzy")
    other = other_venvs()[0]
    env = ros_env()
    other_env = env_for_another_venv(env)
    asked = subprocess.run([str(venv_python(other)), "-c", "import importlib.metadata as m, rclpy; "
                            "print(m.version('ros-rclpy'), rclpy.__file__)"], env=other_env, capture_output=True,
                           text=True, timeout=60)
    assert asked.returncode == 0, asked.stderr[-2000:]
    other_version, other_rclpy = asked.stdout.split()
    assert RCLPY_MAJOR_DISTRO[int(other_version.split(".")[0])] == VENV_DISTRO[other] != DISTRO.name
    assert Path(other_rclpy).resolve().is_relative_to((ROOT / other).resolve())

    node = start_node({"policy": "all", "rate_hz": 20, "batch_size": 4, "queue_size": 64, "max_age_ms": 60000.0,
                       **FAST_DECODING}, env)
    try:
        out = tmp_path / "probe.json"
        plan = [{"kind": "pairs", "count": 4, "rate": 5.0}, {"kind": "wait_captions", "count": 4, "timeout": 60.0},
                {"kind": "ask", "question": "Is anything following us?", "timeout": 60.0}]
        started = time.monotonic()
        done = subprocess.run([str(venv_python(other)), *probe_command(out, plan)[1:]], env=other_env,
                              capture_output=True, text=True, timeout=180)
        assert_helper_done(done.returncode, f"{done.stderr} (after {time.monotonic() - started:.0f} s)", "the probe")
    finally:
        stop_node(node)
    result = json.loads(out.read_text())
    assert [m["stamp_ns"] for m in result["markers"]] == result["sent_pairs"] and len(result["sent_pairs"]) == 4
    assert len(result["captions"]) >= 1 and result["captions"][-1] == result["markers"][-1]["text"]
    assert len(result["answers"]) == 1 and result["answers"][0]
    assert result["captioned_images"] and result["captioned_images"][-1] == [320, 180]
    assert int(result["diagnostics"]["captions"]) == 4


# -- which tests run under every distro -----------------------------------------------------------------------
NOT_UNDER_EVERY_DISTRO = {  # modules that start ROS processes but are meant for .venv's distro alone, and why
    "test_real_weights_settings.py": "one test starts the node to read its start-up log; the rest need no ROS",
}


def runs_ros(path: Path) -> bool:
    """Whether a test module imports rclpy or messages, uses test_node's node and probe, or starts the node or a
    ROS helper script."""
    tree = ast.parse(path.read_text())
    docstrings = {id(body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef) and (body := node.body)
                  and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(n.split(".")[0] in ("rclpy", "test_node") or n.split(".")[0].endswith("_msgs") for n in names):
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if node.value == "rclpy" or any(s in node.value for s in ("caption_node", "node_probe", "bag_subscriber")):
                return True
    return False


def marked_ros(path: Path) -> bool:
    """Whether the module's `pytestmark` names pytest.mark.ros."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            if any(isinstance(n, ast.Attribute) and n.attr == "ros" for n in ast.walk(node.value)):
                return True
    return False


def test_every_test_module_that_runs_ros_is_marked_to_run_under_every_distro():
    modules = sorted(Path(__file__).parent.glob("test_*.py"))
    ros = {p.name for p in modules if runs_ros(p)}
    unmarked = sorted(ros - {p.name for p in modules if marked_ros(p)} - set(NOT_UNDER_EVERY_DISTRO))
    assert unmarked == [], "add `pytestmark = pytest.mark.ros` so that `make test` runs them under Jazzy too"
    assert set(NOT_UNDER_EVERY_DISTRO) <= ros  # no stale exemption
    assert {"test_node.py", "test_node_frames.py", "test_node_replay.py", "test_bag_play.py", "test_ros_package.py",
            "test_distros.py"} <= ros
