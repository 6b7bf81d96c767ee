"""The pinned versions that `make venv` installs (constraints.txt, constraints-jazzy.txt; see the Makefile).

A fresh .venv must be the one the suite passed in: every package the project asks for is pinned, and the venv
running this test holds exactly the pinned versions. A dependency upgraded by hand, or a pin edited without
rebuilding, shows here with the package named.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from ros_distro import running_distro

ROOT = Path(__file__).resolve().parents[1]


def pins(name: str) -> dict[str, str]:
    found = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{name}: {line!r} is not pinned with =="
        found[canonicalize_name(requirement.name)] = specifiers[0].version
    return found


def asked_for(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]
    return {canonicalize_name(Requirement(line).name) for line in lines}


@pytest.mark.parametrize("name, extras", [
    ("constraints.txt", ("dev", "ros")),
    ("constraints-jazzy.txt", ("dev", "ros-jazzy")),
])
def test_every_package_the_project_asks_for_is_pinned(name, extras):
    missing = asked_for(*extras) - set(pins(name))
    assert not missing, f"{name} pins none of {sorted(missing)}: run `make constraints`"


@pytest.mark.ros  # not DDS, but run under every distro's venv by `make test`: .venv-jazzy is checked too
def test_this_venv_holds_the_pinned_versions():
    distro = running_distro()
    name = "constraints-jazzy.txt" if distro is not None and distro.name == "jazzy" else "constraints.txt"
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    wrong = {package: (installed[package], pinned) for package, pinned in pins(name).items()
             if package in installed and installed[package] != pinned}
    assert not wrong, f"installed vs {name}: {wrong}; `make venv` installs the pins, `make constraints` re-pins"
    assert len(set(pins(name)) & set(installed)) > 100  # the check saw the venv, not an empty list
