"""What a rosbag2 bag holds: topics, types, counts, QoS, time span and storage, as a readable table.

A folder is described from its metadata.yaml, as `ros2 bag info` does, its storage files only checked
from their headers (nothing is inflated); a single storage file from its own tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from clip_vlm_core.bags.reader import open_bag


@dataclass(frozen=True)
class TopicSummary:
    name: str
    msgtype: str
    count: int
    qos: str  # "reliable transient_local", or "default" when the bag records no offer


@dataclass(frozen=True)
class BagInfo:
    path: Path
    version: int | None  # None: a single storage file, without metadata.yaml
    storage: str
    start_ns: int
    end_ns: int
    message_count: int
    size_bytes: int
    topics: list[TopicSummary]
    files: int = 1
    compression: str = ""  # "", "file" or "message" (zstd)

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9


def read_bag_info(path: str | Path) -> BagInfo:
    with open_bag(path) as bag:
        topics = [TopicSummary(t.name, t.msgtype, t.count, _qos_text(t.offered_qos))
                  for t in sorted(bag.topics, key=lambda t: t.name)]
        start = bag.start_ns if bag.message_count else 0
        end = start + bag.duration_ns if bag.message_count else 0
        return BagInfo(path=Path(path), version=bag.version, storage=bag.storage, start_ns=start, end_ns=end,
                       message_count=bag.message_count, size_bytes=bag.size_bytes, topics=topics,
                       files=len(bag.files), compression=bag.compression)


def _qos_text(offers: tuple) -> str:
    if not offers:
        return "default"
    qos = offers[0]
    return f"{qos.reliability.name.lower()} {qos.durability.name.lower()}"


def _layout(info: BagInfo) -> str:
    parts = [f"rosbag2 metadata version {info.version}" if info.version else "a single file, no metadata.yaml"]
    if info.files > 1:
        parts.append(f"{info.files} files")
    if info.compression:
        parts.append(f"zstd-compressed per {info.compression}")
    return ", ".join(parts)


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")


def format_bag_info(info: BagInfo) -> str:
    lines = [
        f"bag:       {info.path}",
        f"storage:   {info.storage} ({_layout(info)}), {info.size_bytes / 1e6:.1f} MB",
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
