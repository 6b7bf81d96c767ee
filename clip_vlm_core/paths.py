"""Paths written inside data files are untrusted: resolved against their root, and kept inside it.

nuScenes tables (`sample_data.filename`), manifest rows and checkpoint configs (`qwen_model`,
`clip_model`) come from files a user downloaded. A path read from such a file is relative to a root
(the dataroot, the checkpoint's parent folder) and is refused, with the record that holds it and the
reason, when it is absolute, climbs out of the root with `..`, resolves out of the root through a
symlink, or (for a data file) is not a regular file: a folder, a FIFO or a device such as /dev/zero is
never opened.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from clip_vlm_core.errors import UserError


class MissingDataFile(UserError):
    """A data file that is safe to look for but is not there (callers may skip it rather than stop)."""


def relative_problem(relative: object) -> str | None:
    """Why a path string read from a data file cannot be relative to a root, or None. Checks the text
    only (no file system access), so it serves when a manifest is read as well as when a file is opened."""
    if not isinstance(relative, str) or not relative.strip():
        return "is not a relative path"
    if "\x00" in relative:
        return "holds a NUL character"
    if PurePosixPath(relative).is_absolute():
        return "is an absolute path, not one relative to its root"
    depth = 0
    for part in PurePosixPath(relative).parts:
        depth += -1 if part == ".." else 0 if part in ("", ".") else 1
        if depth < 0:
            return "climbs out of its root with '..'"
    return None


def check_relative(relative: object, what: str) -> str:
    """`relative` itself when it is a safe relative path; else one UserError naming `what` and why."""
    problem = relative_problem(relative)
    if problem is not None:
        raise UserError(f"{what} {relative!r} {problem}")
    return relative  # type: ignore[return-value]


def resolve_inside(root: str | Path, relative: object, what: str, kind: str = "file") -> Path:
    """`root / relative`, after checking it stays inside `root` (text and symlinks) and, for `kind`
    "file", is a regular file, or for "folder", a folder. `what` names the record ("sample_data
    3e87... filename") for the one-sentence refusal. A path that does not exist raises MissingDataFile.
    """
    check_relative(relative, what)
    root = Path(root)
    path = root / str(relative)
    real_root = root.resolve()
    try:
        info = path.stat()  # follows symlinks: what would be opened
    except FileNotFoundError:
        raise MissingDataFile(f"{what} {relative!r} does not exist in {root}") from None
    except NotADirectoryError:
        raise MissingDataFile(f"{what} {relative!r} does not exist in {root} (a parent is a file)") from None
    except OSError as exc:
        raise UserError(f"{what} {relative!r} in {root} cannot be read ({exc.strerror})") from None
    if not path.resolve().is_relative_to(real_root):
        raise UserError(f"{what} {relative!r} leads out of {root} through a symlink (to {path.resolve()})")
    if kind == "folder":
        if not stat.S_ISDIR(info.st_mode):
            raise UserError(f"{what} {relative!r} in {root} is not a folder")
    elif not stat.S_ISREG(info.st_mode):
        raise UserError(f"{what} {relative!r} in {root} is {file_kind(info.st_mode)}, not a regular file")
    return path


def data_file(root: str | Path, relative: object, what: str) -> Path:
    """A data file named in a table or manifest row: `resolve_inside(..., kind="file")`."""
    return resolve_inside(root, relative, what, kind="file")


def regular_file(path: str | Path, what: str) -> Path:
    """A file a user named on the command line, checked before it is opened: one sentence when it does not
    exist or is a folder, FIFO (a read would block forever) or device (a read would never end)."""
    regular_file_info(path, what)
    return Path(path)


def regular_file_info(path: str | Path, what: str, missing: str = "does not exist", *, shown: str | None = None,
                      wanted: str = "a regular file", folder_wanted: str | None = None) -> os.stat_result:
    """`regular_file`'s checks, returning the file's stat (its size, for a reader that bounds it).

    The sentence names the file as `shown` (default "{what} {path}"), says `missing` when it is not there
    ("is missing" for a file a folder should hold), and what was `wanted` instead of a folder, FIFO or
    device (`folder_wanted` for a folder, when that reads better: "is a folder, not an image file")."""
    path = Path(path)
    shown = shown or f"{what} {path}"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UserError(f"{shown} {missing}") from None
    except OSError as exc:
        raise UserError(f"{shown} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        instead = folder_wanted if folder_wanted and stat.S_ISDIR(info.st_mode) else wanted
        raise UserError(f"{shown} is {file_kind(info.st_mode)}, not {instead}")
    return info


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a folder", "a FIFO (named pipe)", "a device", ...)."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"

