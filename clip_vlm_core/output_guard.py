"""Nothing of the user's destroyed: what a command may replace, and what never.

Replacing (`guard_output`). A command replaces an existing target only when it wrote that target
itself, or when told `--overwrite`; and never, even with `--overwrite`, a target that is, holds, or
sits inside one of the command's own inputs (compared as resolved paths; inside an input only the
command's own earlier output may be replaced). "Wrote it itself": a folder carries a small marker file
naming the command that wrote it and what it put there (`.clip-vlm-output`), so a folder the user has
since added a file to is no longer taken as the command's own; a single file says so in its first
line (`written by clip-vlm data gallery`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path

from clip_vlm_core.atomic import write_fault, write_text
from clip_vlm_core.errors import UserError
from clip_vlm_core.jsonin import read_json_object
from clip_vlm_core.limits import MAX_SMALL_JSON_BYTES
from clip_vlm_core.paths import file_kind

MARKER = ".clip-vlm-output"


def write_marker(folder: Path, writer: str, entries: list[str] | None = None) -> None:
    """Mark `folder` as written by `writer` (a command such as "clip-vlm data build"). With `entries`
    (what the command put there), a file the user adds later makes the folder no longer only ours."""
    record = {"written_by": writer, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if entries is not None:
        record["entries"] = entries
    write_text(Path(folder) / MARKER, json.dumps(record) + "\n")


def written_by(path: Path) -> str | None:
    """Which clip-vlm command wrote this folder (its marker, when the folder holds nothing else) or
    this file (its first line), if any."""
    try:
        if path.is_dir():
            record = read_json_object(path / MARKER, "output marker", MAX_SMALL_JSON_BYTES)
            extra = set(os.listdir(path)) - {MARKER} - set(record.get("entries", os.listdir(path)))
            return None if extra else record.get("written_by")
        with open(path, "rb") as f:
            first = f.read(256).decode("utf-8", "replace").splitlines()[0]
        found = re.search(r"written by (clip-vlm [a-z -]+[a-z])", first)
        return found[1] if found else None
    except (OSError, ValueError, AttributeError, IndexError, TypeError, UserError):
        return None


def file_mark(writer: str) -> str:
    """The first-line words by which a single output file is recognised as `writer`'s."""
    return f"written by {writer}"


def _refuse_inputs(target: Path, inputs: Mapping[str, str | Path | None] | None, flag: str) -> tuple[str, str] | None:
    """Refuse a target that is or holds one of the inputs; return the (role, path) of an input it lies
    inside, if any (the caller decides whether that is allowed)."""
    shown = f"{flag} {target}"
    real = target.resolve()
    # What is not there cannot be lost (e.g. a hub id); an input the target *is* is named before one it holds.
    sources = [(role, path, Path(path).resolve()) for role, path in (inputs or {}).items()
               if path not in (None, "") and Path(path).exists()]
    for relation, hit in (("is", lambda source: real == source), ("holds", lambda source: source.is_relative_to(real))):
        for role, path, source in sources:
            if hit(source):
                raise UserError(f"{shown} {relation} the {role} {path}; clip-vlm never replaces its own inputs, "
                                f"even with --overwrite: choose another {flag}")
    return next(((role, path) for role, path, source in sources if real.is_relative_to(source)), None)


def guard_append(
    target: str | Path,
    inputs: Mapping[str, str | Path | None] | None,
    is_own: Callable[[dict], bool],
    what: str,
    flag: str = "--log",
) -> None:
    """Refuse, in one sentence, to append to `target` where that would change what the user has: never
    an input, a file inside an input (a checkpoint folder), a folder or special file, nor an existing file
    whose first line is not a JSON record `is_own` recognises (an image, a recipe, a manifest, ...).
    `what` names the file kind in the sentence ("a clip-vlm caption/ask log")."""
    target = Path(target)
    shown = f"{flag} {target}"
    inside_of = _refuse_inputs(target, inputs, flag)
    if inside_of is not None:
        role, path = inside_of
        raise UserError(f"{shown} is inside the {role} {path}; clip-vlm never writes into its inputs: choose "
                        f"another {flag}")
    try:
        info = target.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{shown} is {file_kind(info.st_mode)}, not a log file: choose another {flag}")
    if info.st_size == 0:
        return
    try:
        with open(target, "rb") as f:
            first = f.readline(1 << 20)
        record = json.loads(first)
    except (OSError, ValueError, RecursionError):
        record = None
    if not isinstance(record, dict) or not is_own(record):
        raise UserError(f"{shown} exists and is not {what} (its first line is no such record); clip-vlm appends "
                        f"only to its own logs: choose another {flag}")


def guard_output(
    target: str | Path,
    writer: str,
    inputs: Mapping[str, str | Path | None] | None = None,
    overwrite: bool = False,
    flag: str = "--out",
    kind: str = "folder",
    reuse_own: bool = True,
) -> None:
    """Refuse, in one sentence, to write `target` where that would destroy what the user has.

    `inputs` names what the command reads ({"nuScenes dataroot": path, ...}). `kind` is "folder" or
    "file". `reuse_own=False` asks for --overwrite even for the command's own earlier output (a
    training run's checkpoints are worth a question)."""
    target = Path(target)
    shown = f"{flag} {target}"
    inside_of = _refuse_inputs(target, inputs, flag)
    if not (target.exists() or target.is_symlink()):
        return
    if kind == "folder" and not target.is_dir():
        raise UserError(f"{shown} is a file, not a folder: choose another {flag} or remove it")
    if kind == "file" and target.is_dir():
        raise UserError(f"{shown} is a folder, not a file: choose another {flag}")
    if kind == "folder" and not any(target.iterdir()):
        return
    own = written_by(target) == writer
    if inside_of is not None and not own:
        role, path = inside_of
        raise UserError(f"{shown} is inside the {role} {path} and was not written by {writer}; clip-vlm never "
                        f"replaces its own inputs, even with --overwrite: choose another {flag}")
    if overwrite or (own and reuse_own):
        return
    if not reuse_own:
        raise UserError(f"{shown} already exists; pass --overwrite to replace it, or choose another {flag}")
    raise UserError(f"{shown} already exists and was not written by {writer} (or holds files it did not "
                    f"write); pass --overwrite to replace it, or choose another {flag}")


def remove_output(target: Path) -> None:
    """Delete an output the user asked to overwrite, once `guard_output` has allowed it."""
    try:
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"cannot replace {target}: {write_fault(exc, target)}") from None
