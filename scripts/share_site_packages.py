"""Let a second venv use the first one's non-ROS packages without copying them (`make` runs this for .venv-jazzy).

    python scripts/share_site_packages.py SOURCE_VENV TARGET_VENV

ROS 2 wheels of different distros share package names (rclpy, std_msgs, librcl.so, ...), so each distro needs
a venv of its own; torch, transformers and open_clip are the same in both and are most of a venv's 7 GB.
This links what every distribution installed in SOURCE_VENV's site-packages, except the ROS 2 wheels (`ros-*`,
with the .egg-info folders and libraries they carry) and this project's own editable installs, into
TARGET_VENV/shared-site/, and names that folder in a .pth file in TARGET_VENV's site-packages. Python puts a .pth
folder after site-packages, so TARGET_VENV's own packages come first; and as the folder holds links to non-ROS
files only, no module or library of SOURCE_VENV's ROS distro can be found from TARGET_VENV at all
(tests/test_distros.py checks both). Which files a distribution owns is read from its RECORD, as pip reads it.

TARGET_VENV is made with `venv --without-pip`: pip and setuptools are shared too, and install into TARGET_VENV.
Install into it with `pip install -c TARGET_VENV/shared-site.constraints.txt`, so that pip never replaces a
shared distribution (it would delete SOURCE_VENV's files through the links): it stops with a conflict instead.
"""

from __future__ import annotations

import shutil
import sys
from importlib.metadata import Distribution, distributions
from pathlib import Path

SHARED = "shared-site"
PTH = "zz-shared-site.pth"  # .pth files are read in name order: this one after those the venv's own packages install
CONSTRAINTS = "shared-site.constraints.txt"  # for pip -c: the shared distributions, pinned at their versions
OWN = {"clip-vlm", "clip-vlm-ros2"}  # editable installs: each venv installs the project itself


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if len(found) != 1:
        sys.exit(f"share_site_packages: error: {venv} has no single lib/python3*/site-packages (found {len(found)}).")
    return found[0]


def top_level_entries(dist: Distribution) -> set[str]:
    """The names directly in site-packages that `dist` installed (its RECORD), scripts and caches left out."""
    return {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] not in ("..", "__pycache__")}


def shared_distributions(source: Path) -> tuple[dict[str, str], list[str]]:
    """The distributions of `source` to share ({name: version}) and the site-packages entries they own."""
    ros: set[str] = set()
    shared: set[str] = set()
    versions: dict[str, str] = {}
    for dist in distributions(path=[str(source)]):
        name = canonical(dist.metadata["Name"])
        if name.startswith("ros-"):
            ros |= top_level_entries(dist)
        elif name not in OWN and dist.files is not None and any(f.name == "RECORD" for f in dist.files):
            versions[name] = dist.version
            shared |= top_level_entries(dist)
    clash = shared & ros
    if clash:
        sys.exit(f"share_site_packages: error: {', '.join(sorted(clash))} in {source} belong to a ROS wheel and to "
                 "another distribution, so they cannot be shared without the ROS one; build a full venv instead.")
    return versions, sorted(shared)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.exit("usage: python scripts/share_site_packages.py SOURCE_VENV TARGET_VENV")
    source, target = (site_packages(Path(a).resolve()) for a in argv)
    folder = target.parents[2] / SHARED
    staging = folder.with_name(SHARED + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    versions, entries = shared_distributions(source)
    for entry in entries:
        (staging / entry).symlink_to(source / entry, target_is_directory=(source / entry).is_dir())
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    (target / PTH).write_text(f"{folder}\n")
    # pip must never replace a shared distribution: it would delete the files of SOURCE_VENV through the links.
    (folder.parent / CONSTRAINTS).write_text("".join(f"{n}=={v}\n" for n, v in sorted(versions.items())))
    print(f"{target.parents[2].name}: {len(entries)} entries of {source.parents[2].name}'s non-ROS packages linked "
          f"in {folder.name}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
