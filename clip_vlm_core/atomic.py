"""Nothing half-written, nothing of the user's destroyed: every folder or file a command writes goes
through here.

Writing. A folder or file is built in a hidden staging folder beside its target,
`.NAME.partial-HOST-PID-XXXXXXXX`, and renamed into place only when complete (a previous target is
kept until the new one is there). The host and PID in the name let any later run remove what a killed
run (kill -9, power loss) left behind: staging whose process is gone is swept on the next write into
the same folder. A fault while writing (full disk, read-only folder) is one sentence, and the previous
target is untouched.

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
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from clip_vlm_core.errors import UserError
from clip_vlm_core.jsonin import read_json_object
from clip_vlm_core.limits import MAX_SMALL_JSON_BYTES
from clip_vlm_core.paths import file_kind

log = logging.getLogger(__name__)

MARKER = ".clip-vlm-output"
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32]
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


# -- writing ----------------------------------------------------------------------------------------

@contextmanager
def staging_area(target: str | Path) -> Iterator[Path]:
    """A fresh hidden folder beside `target`, removed on exit whatever happens. Stale staging of dead
    processes in the same folder is removed first. A write fault inside the block (full disk,
    read-only folder) becomes one UserError naming `target`; any other error stays as it is."""
    target = Path(target).absolute()  # "." has no name to stage beside
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_staging(target.parent)
        area = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{_HOST}-{os.getpid()}-", dir=target.parent))
    except OSError as exc:  # the folder itself refuses (read-only, full, a file in the way)
        raise UserError(f"cannot write {target}: {exc.strerror or exc}; nothing there was changed") from None

    def as_user_knows_it(text: str) -> str:  # a file is named by its final path, not its staging path
        return text.replace(str(area / target.name), str(target)).replace(str(area), str(target.parent))

    try:
        yield area
    except UserError as exc:  # e.g. a nested staged write that failed: keep its sentence, fix its paths
        if str(area) not in str(exc):
            raise
        raise UserError(as_user_knows_it(str(exc))) from None
    except Exception as exc:
        fault = write_fault(exc, target)
        if fault is None:
            raise
        raise UserError(f"cannot write {target}: {as_user_knows_it(fault)}; nothing there was changed") from None
    finally:
        shutil.rmtree(area, ignore_errors=True)


@contextmanager
def staged_dir(target: str | Path, writer: str | None = None) -> Iterator[Path]:
    """Yield a fresh folder that becomes `target` if the block succeeds (carrying the marker of
    `writer`, e.g. "clip-vlm data build", when given); if it fails, `target` is untouched.

    The folder yielded already has the target's name (inside the staging area), for writers that name
    files after their folder (rosbag2)."""
    target = Path(target).absolute()
    with staging_area(target) as area:
        staged = area / target.name
        staged.mkdir()
        yield staged
        if writer:
            write_marker(staged, writer, entries=sorted(os.listdir(staged)))
        replace_dir(staged, target)


@contextmanager
def staged_file(target: str | Path) -> Iterator[Path]:
    """Yield a path to write; it replaces `target` by rename if the block succeeds."""
    target = Path(target).absolute()
    with staging_area(target) as area:
        staged = area / target.name
        yield staged
        os.replace(staged, target)


def write_text(target: str | Path, text: str) -> None:
    """Write a whole text file atomically (temp + rename)."""
    with staged_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def replace_dir(staged: Path, target: Path) -> None:
    """Put a complete folder at `target`, moving any previous one aside first and deleting it after.

    Between the two renames the previous folder is `.NAME.old-HOST-PID-X`; should the process die
    there, the next sweep puts it back."""
    if not (target.exists() or target.is_symlink()):
        staged.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{_HOST}-{os.getpid()}-", dir=target.parent))
    old.rmdir()
    target.rename(old)
    try:
        staged.rename(target)
    except OSError:
        old.rename(target)  # keep what was there
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_stale_staging(folder: Path) -> list[Path]:
    """Remove staging left in `folder` by processes of this host that no longer run; restore a
    previous output that a process died while replacing. Returns what was removed."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _STAGING.match(entry.name)
        if not match or match["host"] != _HOST or _alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not (folder / match["name"]).exists():
            restore_interrupted(folder / match["name"])
            continue
        try:
            _remove(entry)
            removed.append(entry)
        except OSError:
            pass  # someone else's to clean; never fail a write over it
    return removed


# How long a live process may take between the two renames of replace_dir(): microseconds, unless it hangs.
_REPLACE_WINDOW_S = 2.0


def restore_interrupted(target: str | Path) -> bool:
    """Put back a folder that a run killed between the two renames of `replace_dir` left set aside:
    `target` missing, its complete previous copy in `.NAME.old-HOST-PID-X` beside it. Returns whether it
    restored one. A copy set aside by a process that still runs on this host is left to it for a moment
    (it is about to finish); a missing target is then restored whoever set it aside."""
    target = Path(target).absolute()
    if target.exists() or target.is_symlink():
        return False
    try:
        copies = [p for p in target.parent.iterdir()
                  if (m := _STAGING.match(p.name)) and m["kind"] == "old" and m["name"] == target.name and p.is_dir()]
    except OSError:
        return False
    if not copies:
        return False
    newest = max(copies, key=lambda p: p.stat().st_mtime)
    match = _STAGING.match(newest.name)
    pid = int(match["pid"])
    if match["host"] == _HOST and pid != os.getpid() and _alive(pid):
        deadline = time.monotonic() + _REPLACE_WINDOW_S
        while time.monotonic() < deadline and not target.exists():
            time.sleep(0.05)
    try:
        newest.rename(target)
    except OSError:
        return False  # put there meanwhile by its writer, or a read-only folder: nothing to restore here
    log.warning("restored %s from %s, which a run killed while replacing it left behind", target, newest.name)
    return True


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def write_fault(exc: BaseException, target: Path) -> str | None:
    """The file-system fault behind a failed write, in words, or None when it is not one (a bug stays loud).

    Writers report a full disk in their own ways: Python as OSError, safetensors and tokenizers as
    "... (os error 28)", torch.save as a RuntimeError of its stream writer."""
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(target) else ""
        return f"{exc.strerror or exc}{where}"
    text = str(exc)
    code = re.search(r"os error (\d+)", text)
    if code:
        return os.strerror(int(code[1]))
    if isinstance(exc, RuntimeError) and ("PytorchStreamWriter" in text or "inline_container" in text):
        try:
            if shutil.disk_usage(target.parent).free < 64 << 20:
                return os.strerror(28)  # ENOSPC: what a short write on a full disk means
        except OSError:
            pass
        return "a file could not be written in full (a full disk or a file-size limit)"
    return None


# -- replacing ---------------------------------------------------------------------------------------

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
