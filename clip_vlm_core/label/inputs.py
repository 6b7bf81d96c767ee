"""What `clip-vlm label` reads: bags, folders of bags and manifests, expanded into a list of bags.

An INPUT is, in this order:
- a bag folder (it holds metadata.yaml), or a single storage file (`.mcap`, `.db3`, either `.zstd`), as
  `clip-vlm bag play` and `ros2 bag play` read them: one bag;
- a folder without metadata.yaml: a folder of bags, searched to any depth (sorted, hidden entries and
  symlinked folders left out). A sub-folder with metadata.yaml is one
  bag (not searched further); a storage file outside such a folder is a bag of its own;
- any other file: a manifest, one bag or folder of bags per line (blank lines and `#` comments skipped),
  relative to the manifest's folder; a line may also be a JSON object `{"bag": PATH}`. A manifest
  never names another manifest.

Nothing here reads a bag: a path that does not exist, a manifest line that names nothing usable, a
folder holding no bag are `skipped` with the reason, and the caller goes on with the rest. Each bag gets
a `name` for its labelled copy (`--write-bags DIR/NAME`): a bag folder's name, a storage file's name
without its suffixes, a bag found in a folder of bags its path inside that folder; a name taken already
gets `-2`, `-3`, ... in input order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from clip_vlm_core.bags.metadata import METADATA_FILE
from clip_vlm_core.errors import UserError
from clip_vlm_core.jsonin import decode_utf8, parse_json
from clip_vlm_core.limits import size_text

STORAGE_SUFFIXES = (".mcap", ".db3", ".mcap.zstd", ".db3.zstd")
MAX_MANIFEST_BYTES = 64 << 20  # ~500,000 lines of bag paths
MAX_MANIFEST_LINE_BYTES = 4096  # a path (PATH_MAX) and a little JSON around it
MAX_BAGS = 1_000_000  # a fleet's archive is thousands to tens of thousands of bags
MAX_SEARCH_DEPTH = 32  # car / date / drive / ...: a few levels; deeper is a link loop or not an archive


@dataclass(frozen=True)
class BagInput:
    """One bag to label: where it is, how the user named it, and the name of its labelled copy."""

    path: Path  # absolute, as found (not resolved: a link keeps its own name)
    shown: str  # as given on the command line or in the manifest
    name: str  # relative path of its labelled copy under --write-bags


@dataclass
class InputScan:
    bags: list[BagInput] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input as named, why it was skipped)


def refuse_overlap(target: str | Path, flag: str, inputs: Iterable[tuple[str, str, str | Path]]) -> None:
    """`target` (an output) never is, holds or lies inside an input: one UserError naming the first it would.
    `inputs`: (role, as named, path), e.g. ("input bag", "bags/a", Path("bags/a")). Stricter than the output
    guard's rule for a new target: a label run writes nothing inside a bag or a folder of bags it reads."""
    real = Path(target).resolve()
    sources = [(role, shown, Path(path).resolve()) for role, shown, path in inputs]
    tests = (("is", lambda source: real == source), ("holds", lambda source: source.is_relative_to(real)),
             ("lies inside", lambda source: real.is_relative_to(source)))
    for relation, test in tests:  # the closest relation is named: `is the input bag` before `lies inside the input`
        for role, shown, source in sources:
            if test(source):
                raise UserError(f"{flag} {target} {relation} the {role} {shown}; clip-vlm never writes into its "
                                f"inputs: choose another {flag}")


def is_storage_file(path: Path) -> bool:
    return path.name.endswith(STORAGE_SUFFIXES)


def bag_name(path: Path) -> str:
    """The name a bag is known by: its folder's name, or a storage file's name without its suffixes."""
    name = path.name
    for suffix in sorted(STORAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def expand_inputs(inputs: Iterable[str | Path]) -> InputScan:
    """Every bag the inputs name, once each (by resolved path), in the order given."""
    scan = InputScan()
    found: list[tuple[Path, str, str]] = []  # (path, shown, name)
    for given in inputs:
        _expand(Path(given), str(given), found, scan, manifest=None)
    seen: set[Path] = set()
    names: dict[str, int] = {}
    for path, shown, name in found:
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        if len(scan.bags) >= MAX_BAGS:
            raise UserError(f"the inputs name more than {MAX_BAGS:,} bags; label the archive in parts")
        count = names.get(name, 0) + 1
        names[name] = count
        scan.bags.append(BagInput(path.absolute(), shown, name if count == 1 else f"{name}-{count}"))
    return scan


def _expand(path: Path, shown: str, found: list, scan: InputScan, manifest: Path | None) -> None:
    where = f"{shown} (in manifest {manifest})" if manifest else shown
    if not path.exists():
        scan.skipped.append((where, "it does not exist" if not path.is_symlink() else "it is a broken link"))
    elif path.is_dir():
        if (path / METADATA_FILE).exists():
            found.append((path, shown, bag_name(path.absolute())))
        else:
            before = len(found)
            _search_folder(path, shown, path, found, scan, depth=0)
            if len(found) == before:
                scan.skipped.append((where, f"it is a folder that holds no bag (no {METADATA_FILE}, .mcap or .db3 "
                                            f"file in it or below it)"))
    elif is_storage_file(path):
        found.append((path, shown, bag_name(path)))
    elif not path.is_file():
        scan.skipped.append((where, "it is neither a bag, a folder of bags nor a manifest file"))
    elif manifest is not None:
        scan.skipped.append((where, "a manifest may not name another manifest"))
    else:
        try:
            entries, problems = read_manifest(path)
        except UserError as exc:
            scan.skipped.append((shown, str(exc)))
            return
        scan.skipped.extend(problems)
        if not entries and not problems:
            scan.skipped.append((shown, "the manifest names no bag"))
        for entry in entries:
            target = Path(entry).expanduser()
            target = target if target.is_absolute() else path.parent / target
            _expand(target, entry, found, scan, manifest=path)


def _search_folder(folder: Path, shown: str, root: Path, found: list, scan: InputScan, depth: int) -> None:
    if depth > MAX_SEARCH_DEPTH:
        scan.skipped.append((f"{shown}/{folder.relative_to(root).as_posix()}",
                             f"it lies more than {MAX_SEARCH_DEPTH} folders deep; not searched"))
        return
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        scan.skipped.append((f"{shown}/{folder.relative_to(root).as_posix()}", f"it cannot be listed ({exc.strerror})"))
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith("."):
            continue  # staging folders, markers
        relative = PurePosixPath(path.relative_to(root).as_posix())
        if entry.is_dir(follow_symlinks=False):
            if (path / METADATA_FILE).exists():
                found.append((path, f"{shown.rstrip('/')}/{relative}", str(relative)))
            else:
                _search_folder(path, shown, root, found, scan, depth + 1)
        elif is_storage_file(path) and entry.is_file():
            found.append((path, f"{shown.rstrip('/')}/{relative}", str(relative.parent / bag_name(path))))


def read_manifest(path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The paths a manifest lists, as written (one a line, or `{"bag": PATH}`), and its lines that name
    none (line, why). A manifest that is too large or not text is refused whole (UserError)."""
    shown = f"manifest {path}"
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise UserError(f"{shown} is {size_text(size)}, more than the {size_text(MAX_MANIFEST_BYTES)} a "
                            f"manifest may be (list folders of bags instead of single bags)")
        data = path.read_bytes()[: MAX_MANIFEST_BYTES + 1]
    except OSError as exc:
        raise UserError(f"{shown} cannot be read ({exc.strerror})") from None
    if b"\x00" in data[:8192]:
        raise UserError(f"{path} is neither a bag (a folder with {METADATA_FILE}, or a .mcap or .db3 file) nor a "
                        f"manifest (a text file listing one bag a line)")
    entries, problems = [], []
    for number, line in enumerate(decode_utf8(data, shown).splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{shown} line {number}"
        try:
            entries.append(_manifest_entry(text, where))
        except UserError as exc:
            problems.append((where, str(exc).removeprefix(f"{where} ")))
    return entries, problems


def _manifest_entry(text: str, where: str) -> str:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_MANIFEST_LINE_BYTES:
        raise UserError(f"{where} is longer than {MAX_MANIFEST_LINE_BYTES:,} bytes, which no path is")
    if text.startswith("{"):
        record = parse_json(text, where)
        text = record.get("bag") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise UserError(f'{where} is a JSON object without a "bag" path')
    return text
