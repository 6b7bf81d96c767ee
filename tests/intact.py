"""Helpers for the hard-edge tests (outputs, paths, images, bounds, faults): run the real CLI, and prove that files were left intact."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def digest(root: Path) -> dict[str, str]:
    """Every entry under `root` (hidden ones too) by relative path: sha256 of files, link targets, folders."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                entries[key] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                entries[key] = "folder"
            elif path.is_file():
                entries[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                entries[key] = "special"
    return entries


def clip_vlm(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`clip-vlm ARGS` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "clip_vlm_core", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=kwargs.pop("cwd", REPO), **kwargs)


def assert_one_sentence(err: str, command: str, *fragments: str) -> None:
    """stderr is exactly one `clip-vlm COMMAND: error: ...` line holding every fragment, no traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"clip-vlm {command}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


def staging_left(folder: Path) -> list[str]:
    """Hidden staging or set-aside folders of clip-vlm's atomic writes anywhere under `folder`."""
    return [str(p) for p in folder.rglob(".*") if ".partial-" in p.name or ".old-" in p.name]
