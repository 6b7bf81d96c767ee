"""What a rosbag2 folder holds: topics, types, counts, QoS, time span and storage, as a readable table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml
from rosbags.interfaces import ConnectionExtRosbag2
from rosbags.rosbag2 import Reader
from rosbags.rosbag2.errors import ReaderError

from clip_vlm_core.errors import UserError


@dataclass(frozen=True)
class TopicSummary:
    name: str
    msgtype: str
    count: int
    qos: str  # "reliable transient_local", or "default" when the bag records no offer


@dataclass(frozen=True)
class BagInfo:
    path: Path
    version: int
    storage: str
    start_ns: int
    end_ns: int
    message_count: int
    size_bytes: int
    topics: list[TopicSummary]

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9


def open_bag(path: str | Path) -> Reader:
    """An opened rosbags Reader, with any problem with the folder told as a UserError."""
    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise UserError(f"{path} is not a rosbag2 folder (no metadata.yaml)")
    reader = Reader(path)
    try:
        reader.open()
    except (ReaderError, OSError, KeyError, ValueError) as exc:
        raise UserError(f"bag {path} cannot be read ({exc})") from None
    return reader


def read_bag_info(path: str | Path) -> BagInfo:
    path = Path(path)
    reader = open_bag(path)
    try:
        metadata = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        topics = [
            TopicSummary(c.topic, c.msgtype, c.msgcount, _qos_text(c.ext))
            for c in sorted(reader.connections, key=lambda c: c.topic)
        ]
        count = reader.message_count
        # metadata.yaml is what rosbag2 shows; rosbags' end_time is exclusive (one past the last stamp).
        start = int(metadata["starting_time"]["nanoseconds_since_epoch"]) if count else 0
        duration = int(metadata["duration"]["nanoseconds"]) if count else 0
        return BagInfo(
            path=path,
            version=int(metadata["version"]),
            storage=str(metadata["storage_identifier"]),
            start_ns=start,
            end_ns=start + duration,
            message_count=count,
            size_bytes=sum(f.stat().st_size for f in path.iterdir() if f.is_file()),
            topics=topics,
        )
    finally:
        reader.close()


def _qos_text(ext: object) -> str:
    if not isinstance(ext, ConnectionExtRosbag2) or not ext.offered_qos_profiles:
        return "default"
    qos = ext.offered_qos_profiles[0]
    return f"{qos.reliability.name.lower()} {qos.durability.name.lower()}"


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")


def format_bag_info(info: BagInfo) -> str:
    lines = [
        f"bag:       {info.path}",
        f"storage:   {info.storage} (rosbag2 metadata version {info.version}), {info.size_bytes / 1e6:.1f} MB",
        f"duration:  {info.duration_s:.3f} s",
        f"start:     {_time(info.start_ns)} ({info.start_ns} ns)",
        f"end:       {_time(info.end_ns)} ({info.end_ns} ns)",
        f"messages:  {info.message_count}",
        "",
    ]
    header = ("topic", "type", "count", "offered QoS")
    rows = [(t.name, t.msgtype, str(t.count), t.qos) for t in info.topics]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        cells = [cell.rjust(w) if i == 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
