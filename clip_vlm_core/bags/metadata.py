"""A rosbag2 folder's metadata.yaml, read as untrusted data: every field checked before anything uses it.

rosbag2 (versions 1 to 9 of the format) writes a plain YAML mapping under `rosbag2_bagfile_information`.
Anything else is refused in one sentence naming the bag, the field and the problem: a file over
MAX_BAG_METADATA_BYTES, text that is not UTF-8, YAML aliases (rosbag2 never writes them, and a few lines
of them expand to billions of nodes), a field of the wrong type, a count or time out of range, a storage
file named by an absolute path or through `..`, or a compression rosbag2 does not write.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import yaml
from rosbags.interfaces import Qos

from clip_vlm_core import limits
from clip_vlm_core.errors import UserError

INT64_MAX = 2**63 - 1
STORAGES = ("sqlite3", "mcap")
SUFFIXES = {"sqlite3": ".db3", "mcap": ".mcap"}
METADATA_FILE = "metadata.yaml"


@dataclass(frozen=True)
class TopicRecord:
    """One topic as a bag describes it (metadata.yaml, or a storage file's own tables)."""

    name: str
    msgtype: str
    count: int
    serialization_format: str
    offered_qos: tuple[Qos, ...]


@dataclass(frozen=True)
class BagMetadata:
    version: int
    storage: str  # sqlite3 | mcap
    files: tuple[str, ...]  # storage file names inside the bag folder, in recording order
    start_ns: int
    duration_ns: int
    message_count: int
    compression_mode: str  # "" | "file" | "message"
    topics: tuple[TopicRecord, ...]


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing anchors and aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"it uses the YAML alias *{event.anchor} (line {event.start_mark.line + 1}), "
                                 f"which rosbag2 never writes")
        return super().compose_node(parent, index)


def read_metadata(folder: Path, shown: str | Path) -> BagMetadata:
    """The checked metadata of the bag folder `folder` (`shown` names the bag in messages)."""
    path = folder / METADATA_FILE
    where = f"bag {shown}: {METADATA_FILE}"
    if not path.is_file():
        raise UserError(f"{where} is not a regular file")
    size = path.stat().st_size
    if size > limits.MAX_BAG_METADATA_BYTES:
        raise UserError(f"{where} is {size:,} bytes, more than {limits.MAX_BAG_METADATA_BYTES:,} "
                        f"(rosbag2 writes a few hundred bytes a topic)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{where} is not UTF-8 text (byte {exc.start})") from None
    try:
        document = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise UserError(f"{where} cannot be read as YAML: {_one_line(exc)}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise UserError(f"{where} is nested too deeply to be rosbag2 metadata (rosbag2 nests 5 levels)") from None
    return _Fields(where).bag(document)


class _Fields:
    """Checks one field at a time, naming its path (`topics_with_message_count[2].message_count`) in errors."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, problem: str) -> UserError:
        return UserError(f"{self.where}: {field} {problem}")

    def mapping(self, value: Any, field: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be a mapping, got {_kind(value)}")
        return value

    def get(self, parent: dict, key: str, field: str, default: Any = ...) -> Any:
        if key not in parent:
            if default is not ...:
                return default
            raise self.fail(field, "is missing")
        return parent[key]

    def text(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"must be text, got {_kind(value)}")
        return value

    def whole(self, value: Any, field: str, low: int = 0, high: int = INT64_MAX, why: str = "") -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"must be a whole number, got {_kind(value)}")
        if not low <= value <= high:
            why = why or ("a 64-bit count" if low == 0 else "a 64-bit time")
            raise self.fail(field, f"must be from {low:,} to {high:,} ({why}), got {value:,}")
        return value

    def bag(self, document: Any) -> BagMetadata:
        top = self.mapping(document, "the document")
        info = self.mapping(self.get(top, "rosbag2_bagfile_information", "rosbag2_bagfile_information"),
                            "rosbag2_bagfile_information")
        version = self.whole(self.get(info, "version", "version"), "version", 1, 9,
                             why="the rosbag2 formats that exist")
        storage = self.text(self.get(info, "storage_identifier", "storage_identifier"), "storage_identifier")
        if storage not in STORAGES:
            raise self.fail("storage_identifier", f"is {storage!r}; clip-vlm reads {' and '.join(STORAGES)} bags")
        count = self.whole(self.get(info, "message_count", "message_count"), "message_count")
        start, duration = self.times(info, count)
        mode = self.compression(info)
        paths = self.get(info, "relative_file_paths", "relative_file_paths")
        if not isinstance(paths, list) or not paths:
            raise self.fail("relative_file_paths", f"must be a list of the bag's storage files, got {_kind(paths)}")
        files = tuple(self.file_name(p, f"relative_file_paths[{i}]") for i, p in enumerate(paths))
        topics = self.get(info, "topics_with_message_count", "topics_with_message_count")
        if not isinstance(topics, list):
            raise self.fail("topics_with_message_count", f"must be a list, got {_kind(topics)}")
        records = tuple(self.topic(t, f"topics_with_message_count[{i}]") for i, t in enumerate(topics))
        return BagMetadata(version, storage, files, start, duration, count, mode, records)

    def times(self, info: dict, count: int) -> tuple[int, int]:
        start_field, duration_field = "starting_time.nanoseconds_since_epoch", "duration.nanoseconds"
        start_map = self.mapping(self.get(info, "starting_time", "starting_time"), "starting_time")
        duration_map = self.mapping(self.get(info, "duration", "duration"), "duration")
        if not count:  # rosbag2 writes an empty bag's start as INT64_MAX: any 64-bit value will do
            start = self.whole(self.get(start_map, "nanoseconds_since_epoch", start_field), start_field, -INT64_MAX - 1)
            duration = self.whole(self.get(duration_map, "nanoseconds", duration_field), duration_field, -INT64_MAX - 1)
            return start, duration
        start = self.whole(self.get(start_map, "nanoseconds_since_epoch", start_field), start_field)
        duration = self.whole(self.get(duration_map, "nanoseconds", duration_field), duration_field,
                              high=INT64_MAX - start, why="the bag's end must be a 64-bit time")
        return start, duration

    def compression(self, info: dict) -> str:
        mode = self.text(self.get(info, "compression_mode", "compression_mode", ""), "compression_mode").lower()
        fmt = self.text(self.get(info, "compression_format", "compression_format", ""), "compression_format")
        if mode in ("", "none"):
            return ""
        if mode not in ("file", "message"):
            raise self.fail("compression_mode", f"is {mode!r}; rosbag2 writes none, file or message")
        if fmt != "zstd":
            raise self.fail("compression_format", f"is {fmt!r}; rosbag2 compresses with zstd")
        return mode

    def file_name(self, value: Any, field: str) -> str:
        name = self.text(value, field)
        # rosbag2 before format 4 wrote "<bag folder>/<file>"; later ones the file name alone.
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if not name or PureWindowsPath(name).is_absolute() or name.startswith("/") or ".." in parts:
            raise self.fail(field, f"{name!r} leads out of the bag folder; rosbag2 names files inside it")
        return parts[-1]

    def topic(self, value: Any, field: str) -> TopicRecord:
        from rosbags.rosbag2.metadata import parse_qos

        entry = self.mapping(value, field)
        count = self.whole(self.get(entry, "message_count", f"{field}.message_count"), f"{field}.message_count")
        meta = self.mapping(self.get(entry, "topic_metadata", f"{field}.topic_metadata"), f"{field}.topic_metadata")
        name = self.text(self.get(meta, "name", f"{field}.topic_metadata.name"), f"{field}.topic_metadata.name")
        msgtype = self.text(self.get(meta, "type", f"{field}.topic_metadata.type"), f"{field}.topic_metadata.type")
        fmt = self.text(self.get(meta, "serialization_format", f"{field}.topic_metadata.serialization_format"),
                        f"{field}.topic_metadata.serialization_format")
        qos_field = f"{field}.topic_metadata.offered_qos_profiles"
        offers = self.get(meta, "offered_qos_profiles", qos_field, "")
        if not isinstance(offers, str | list):
            raise self.fail(qos_field, f"must be YAML text or a list, got {_kind(offers)}")
        try:
            if isinstance(offers, str):  # versions 4-8: a YAML document inside the YAML, aliases refused too
                offers = yaml.load(offers, Loader=_NoAliasLoader) or []  # noqa: S506 - a SafeLoader subclass
            qos = tuple(parse_qos(offers))
        except Exception as exc:  # a malformed offer: KeyError, TypeError, ValueError, RecursionError, ...
            raise self.fail(qos_field, f"of topic {name!r} cannot be read ({_one_line(exc)})") from None
        return TopicRecord(name, msgtype, count, fmt, qos)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
