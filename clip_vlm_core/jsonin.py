"""JSON read from files is bounded: a file's size, a line's length and how deep the text nests are
checked before anything is parsed.

Every JSON file or JSON line clip-vlm reads comes through here: manifests and their rows, question-answer
lines, checkpoint configs, a training run's state, the JSON files of a local model folder (config.json,
tokenizer.json, ...) before transformers or PEFT parse them. A file over its size limit, a line over its
length limit, text that is not UTF-8, and text nested deeper than `MAX_JSON_DEPTH` are refused in one
sentence naming the file (and line), so a 100,000-deep `[[[...]]]` is a sentence, not a RecursionError
in whichever parser meets it first. The depth is measured on the raw bytes (string contents and escapes
left out) in a few linear regular-expression passes, at about the speed of reading the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from clip_vlm_core.errors import UserError
from clip_vlm_core.limits import MAX_JSON_DEPTH, size_text
from clip_vlm_core.paths import regular_file_info

_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # in valid JSON a backslash only ever escapes one character
_STRING = re.compile(rb'"[^"]*"')  # once escapes are gone, a string runs to the next quote
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


def nesting_depth(data: bytes | str) -> int:
    """How deep the arrays and objects of JSON text nest (0 for a bare number or string), not counting
    brackets inside strings. Linear in the text's length; text that is not JSON gets some number."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", _ESCAPE.sub(b"", data)))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int64)
    return int(np.cumsum(steps).max(initial=0))


def parse_json(data: bytes | str, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON text, refusing text nested deeper than `max_depth` before the parser sees it.
    `what` names the text in the sentence ("question-answer file X line 3")."""
    if isinstance(data, bytes):
        data = decode_utf8(data, what)
    # Text with no more opening brackets than the limit cannot nest deeper (most lines and configs): no scan.
    opened = data.count("[") + data.count("{")
    depth = nesting_depth(data) if opened > max_depth else 0
    if depth > max_depth:
        raise UserError(f"{what} nests {depth:,} levels deep, more than {max_depth} (no file clip-vlm reads nests "
                        f"more than a few levels)")
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} is not valid JSON ({exc})") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4,300 digits
        raise UserError(f"{what} is not valid JSON ({exc})") from None


def decode_utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at byte {exc.start:,})") from None


def read_json(path: str | Path, what: str, max_bytes: int | None) -> Any:
    """The JSON value of a file at most `max_bytes` long (None: a data set's own files, as large as the
    data set; their depth is still bounded). `what` names the file's role ("checkpoint config"); the
    sentence adds its path."""
    path = Path(path)
    shown = f"{what} {path}"
    info = regular_file_info(path, what, missing="is missing")
    if max_bytes is not None and info.st_size > max_bytes:
        raise UserError(f"{shown} is {size_text(info.st_size)}, more than the {size_text(max_bytes)} such a file "
                        f"may be")
    try:
        with open(path, "rb") as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except OSError as exc:
        raise UserError(f"{shown} cannot be read ({exc.strerror})") from None
    if max_bytes is not None and len(data) > max_bytes:  # it grew since stat()
        raise UserError(f"{shown} is more than the {size_text(max_bytes)} such a file may be")
    return parse_json(data, shown)


def read_json_object(path: str | Path, what: str, max_bytes: int) -> dict[str, Any]:
    """`read_json` for files that hold one JSON object."""
    value = read_json(path, what, max_bytes)
    if not isinstance(value, dict):
        raise UserError(f"{what} {path} must hold a JSON object, not {type(value).__name__}")
    return value


def iter_json_lines(path: str | Path, what: str, max_line_bytes: int) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a JSONL file, read one line at a time: a line
    longer than `max_line_bytes` is refused without reading the rest of it, so memory stays bounded
    however large the file is."""
    path = Path(path)
    shown = f"{what} {path}"
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after the generator is exhausted or dropped
    except OSError as exc:
        raise UserError(f"{shown} cannot be read ({exc.strerror})") from None
    with f:
        n = 0
        while True:
            try:
                line = f.readline(max_line_bytes + 1)
            except OSError as exc:
                raise UserError(f"{shown} cannot be read ({exc.strerror})") from None
            if not line:
                return
            n += 1
            if len(line) > max_line_bytes:
                raise UserError(f"{shown} line {n} is longer than {size_text(max_line_bytes)} (a line holds one "
                                f"record)")
            if line.strip():
                yield n, parse_json(line, f"{shown} line {n}")
