"""Which ROS 2 distro's rclpy this Python runs, and how to start another venv's Python cleanly.

`make test` runs the suite under .venv (Kilted's rclpy wheels) and its `ros` tests again under .venv-jazzy
(Jazzy's). The wheels of both distros are named alike (ros-rclpy, ros-std-msgs, ...): the distro is told by
rclpy's version, whose major number each distro bumps, and by the `ros-<distro>-rclpy` meta-package where one
pinned it.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distributions, version
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RCLPY_MAJOR_DISTRO = {3: "humble", 4: "iron", 7: "jazzy", 9: "kilted", 10: "rolling"}
VENV_DISTRO = {".venv": "kilted", ".venv-jazzy": "jazzy"}  # the venvs `make test` builds, and their distros
# The ROS wheels' Python re-executes itself once with LD_LIBRARY_PATH naming its venv's ROS libraries, and sets
# this so that it does not do it again; children inherit both (ros_wheels_bootstrapper).
BOOTSTRAPPED = "_ROS_WHEELS_BOOTSTRAP_COMPLETE"


@dataclass(frozen=True)
class RosDistro:
    name: str  # "jazzy", "kilted", ...
    rclpy_version: str
    meta_package: str | None  # ros-jazzy-rclpy, where the venv installed rclpy through one
    rclpy_path: Path

    def describe(self) -> str:
        told_by = f"{self.meta_package} installed" if self.meta_package else "rclpy's major version"
        return f"{self.name} (rclpy {self.rclpy_version}, told by {told_by}; {self.rclpy_path})"


def running_distro() -> RosDistro | None:
    """The distro of the rclpy this Python imports, or None if it has none."""
    spec = find_spec("rclpy")
    try:
        rclpy_version = version("ros-rclpy")
    except PackageNotFoundError:
        return None
    if spec is None or spec.origin is None:
        return None
    metas = sorted(m.group(1) for d in distributions()
                   if (m := re.fullmatch(r"ros-([a-z]+)-rclpy", d.metadata["Name"].lower().replace("_", "-"))))
    by_version = RCLPY_MAJOR_DISTRO.get(int(rclpy_version.split(".")[0]), f"unknown (rclpy {rclpy_version})")
    name = metas[0] if len(metas) == 1 else by_version
    return RosDistro(name, rclpy_version, f"ros-{metas[0]}-rclpy" if len(metas) == 1 else None,
                     Path(spec.origin).parent)


def describe_running_distro() -> str:
    distro = running_distro()
    if distro is None:
        return f"none: {sys.prefix} has no rclpy, so the tests that need it skip"
    return distro.describe()


def venv_python(name: str) -> Path:
    return ROOT / name / "bin" / "python"


def other_venvs() -> list[str]:
    """The venvs `make test` builds, other than the one running, that exist."""
    here = Path(sys.prefix).resolve()
    return [name for name in VENV_DISTRO if (ROOT / name).resolve() != here and venv_python(name).exists()]


def env_for_another_venv(env: dict[str, str]) -> dict[str, str]:
    """`env` without what this venv's ROS wheels set for themselves, so another venv's Python finds its own
    ROS libraries, not this one's (with them, it would load this distro's librcl.so under its own rclpy)."""
    here = Path(sys.prefix).resolve()
    clean = {k: v for k, v in env.items() if k != BOOTSTRAPPED}
    kept = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and not Path(p).resolve().is_relative_to(here)]
    if kept:
        clean["LD_LIBRARY_PATH"] = os.pathsep.join(kept)
    else:
        clean.pop("LD_LIBRARY_PATH", None)
    return clean
