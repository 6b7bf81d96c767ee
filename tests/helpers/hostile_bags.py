"""Bags an adversary writes: small files that declare or inflate to huge sizes, cut files, lying metadata.

Each builder writes into a folder and returns the path to hand to `clip-vlm bag info|play`. The MCAP
files are put together record by record (https://mcap.dev/spec), so a test can make any field lie.
"""

from __future__ import annotations

import struct
from pathlib import Path

import yaml
from backports import zstd

MAGIC = b"\x89MCAP0\r\n"
T0 = 1_700_000_000_000_000_000  # every message's time, ns
STRING_CDR = b"\x00\x01\x00\x00" + struct.pack("<I", 6) + b"hello\x00"  # std_msgs/String "hello", CDR LE
QOS_V8 = ("- history: 3\n  depth: 0\n  reliability: 1\n  durability: 2\n  deadline:\n    sec: 2147483647\n"
          "    nsec: 4294967295\n  lifespan:\n    sec: 2147483647\n    nsec: 4294967295\n  liveliness: 1\n"
          "  liveliness_lease_duration:\n    sec: 2147483647\n    nsec: 4294967295\n"
          "  avoid_ros_namespace_conventions: false")


def _u16(v: int) -> bytes:
    return struct.pack("<H", v)


def _u32(v: int) -> bytes:
    return struct.pack("<I", v)


def _u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def _str(s: str) -> bytes:
    return _u32(len(s.encode())) + s.encode()


def record(op: int, body: bytes, declared: int | None = None) -> bytes:
    return bytes([op]) + _u64(len(body) if declared is None else declared) + body


def schema_record(msgtype: str = "std_msgs/msg/String") -> bytes:
    return record(0x03, _u16(1) + _str(msgtype) + _str("ros2msg") + _str("string data"))


def channel_record(topic: str = "/topic") -> bytes:
    metadata = _str("offered_qos_profiles") + _str(QOS_V8)
    return record(0x04, _u16(1) + _u16(1) + _str(topic) + _str("cdr") + _u32(len(metadata)) + metadata)


def message_record(t: int, data: bytes = STRING_CDR, declared: int | None = None) -> bytes:
    return record(0x05, _u16(1) + _u32(0) + _u64(t) + _u64(t) + data, declared)


def mcap_with_chunk(path: Path, compressed: bytes, uncompressed_size: int, compression: str = "zstd",
                    msgtype: str = "std_msgs/msg/String", topic: str = "/topic") -> Path:
    """An indexed MCAP with one channel and one chunk of the given bytes, declaring `uncompressed_size`."""
    t = T0
    out = bytearray(MAGIC + record(0x01, _str("ros2") + _str("hostile")))
    out += schema_record(msgtype) + channel_record(topic)
    chunk_start = len(out)
    body = _u64(t) + _u64(t) + _u64(uncompressed_size) + _u32(0) + _str(compression) + _u64(len(compressed)) + compressed
    out += record(0x06, body)
    chunk_length = len(out) - chunk_start
    index_start = len(out)
    out += record(0x07, _u16(1) + _u32(16) + _u64(t) + _u64(0))
    index_length = len(out) - index_start
    out += record(0x0F, _u32(0))
    summary_start = len(out)
    out += schema_record(msgtype) + channel_record(topic)
    out += record(0x0B, _u64(1) + _u16(1) + _u32(1) + _u32(0) + _u32(0) + _u32(1) + _u64(t) + _u64(t)
                  + _u32(10) + _u16(1) + _u64(1))
    offsets = _u16(1) + _u64(index_start)
    out += record(0x08, _u64(t) + _u64(t) + _u64(chunk_start) + _u64(chunk_length) + _u32(len(offsets)) + offsets
                  + _u64(index_length) + _str(compression) + _u64(len(compressed)) + _u64(uncompressed_size))
    out += record(0x02, _u64(summary_start) + _u64(0) + _u32(0)) + MAGIC
    path.write_bytes(bytes(out))
    return path


def zstd_zeros(size: int, declare_size: bool = False) -> bytes:
    """`size` zero bytes squeezed by zstd (a few bytes per 128 KiB block), without holding them in memory."""
    compressor = zstd.ZstdCompressor()
    if declare_size:
        compressor.set_pledged_input_size(size)
    piece = bytes(1 << 24)
    parts, left = [], size
    while left:
        n = min(left, len(piece))
        parts.append(compressor.compress(piece[:n]))
        left -= n
    parts.append(compressor.flush())
    return b"".join(parts)


def chunk_bomb(folder: Path, inflated: int = 1_500_000_000, honest: bool = True) -> Path:
    """A ~49 KB MCAP whose one zstd chunk holds one message of `inflated` zero bytes.

    honest: the chunk declares its real uncompressed size; else it declares 1 KiB and inflates anyway.
    """
    folder.mkdir(parents=True, exist_ok=True)
    header = bytes([0x05]) + _u64(inflated - 9) + _u16(1) + _u32(0) + _u64(T0) + _u64(T0)
    compressor = zstd.ZstdCompressor()
    parts = [compressor.compress(header)]
    piece, left = bytes(1 << 24), inflated - len(header)
    while left:
        n = min(left, len(piece))
        parts.append(compressor.compress(piece[:n]))
        left -= n
    parts.append(compressor.flush())
    return mcap_with_chunk(folder / "bomb.mcap", b"".join(parts), inflated if honest else 1024)


def huge_message_record(folder: Path, declared: int = 1 << 40) -> Path:
    """An unchunked MCAP whose message record declares a terabyte while the file holds a few bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "huge_record.mcap"
    out = MAGIC + record(0x01, _str("ros2") + _str("hostile")) + schema_record() + channel_record()
    out += message_record(T0, declared=declared) + record(0x0F, _u32(0))
    out += record(0x02, _u64(0) + _u64(0) + _u32(0)) + MAGIC
    path.write_bytes(out)
    return path


def metadata(files: list[str], storage: str = "sqlite3", count: int = 1, compression_mode: str = "",
             topic: str = "/topic", msgtype: str = "std_msgs/msg/String", version: int = 5) -> dict:
    return {"rosbag2_bagfile_information": {
        "version": version, "storage_identifier": storage, "relative_file_paths": files,
        "duration": {"nanoseconds": 0}, "starting_time": {"nanoseconds_since_epoch": T0},
        "message_count": count,
        "topics_with_message_count": [{"topic_metadata": {"name": topic, "type": msgtype,
                                                          "serialization_format": "cdr",
                                                          "offered_qos_profiles": QOS_V8},
                                       "message_count": count}],
        "compression_format": "zstd" if compression_mode else "", "compression_mode": compression_mode.upper(),
        "files": []}}


def write_metadata(folder: Path, content: dict | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    (folder / "metadata.yaml").write_text(text)
    return folder


def file_compression_bomb(folder: Path, inflated: int = 1_200_000_000, declare_size: bool = False) -> Path:
    """A ~39 KB whole-file-compressed sqlite3 bag whose one file inflates to `inflated` bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bomb_0.db3.zstd").write_bytes(zstd_zeros(inflated, declare_size))
    return write_metadata(folder, metadata(["bomb_0.db3.zstd"], compression_mode="file"))


def yaml_bomb(folder: Path, levels: int = 9) -> Path:
    """The bag's metadata.yaml with a billion-laughs `custom_data`: nine levels of ten aliases, 10^9 strings
    once expanded (a reader that walks or copies it never returns)."""
    text = (folder / "metadata.yaml").read_text().replace("\n  custom_data: null", "")
    lines = ['x-laughs:', '  a0: &a0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    text = "\n".join(lines) + "\n" + text.rstrip() + f"\n  custom_data: {{laughs: *a{levels}}}\n"
    return write_metadata(folder, text)


def sqlite_bag(folder: Path, messages: int = 3, topic: str = "/topic", msgtype: str = "std_msgs/msg/String") -> Path:
    """A plain sqlite3 bag of std_msgs/String messages, written by rosbags (metadata version 8)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    writer = Writer(folder, version=8, storage_plugin=StoragePlugin.SQLITE3)
    writer.open()
    conn = writer.add_connection(topic, "std_msgs/msg/String", typestore=get_typestore(Stores.ROS2_HUMBLE))
    for i in range(messages):
        writer.write(conn, T0 + i * 10**8, STRING_CDR)
    writer.close()
    if msgtype != "std_msgs/msg/String":
        edit_metadata(folder, lambda m: m["topics_with_message_count"][0]["topic_metadata"].__setitem__("type", msgtype))
    return folder


def edit_metadata(folder: Path, change) -> Path:
    """Apply `change` to the rosbag2_bagfile_information mapping of the bag's metadata.yaml."""
    document = yaml.safe_load((folder / "metadata.yaml").read_text())
    change(document["rosbag2_bagfile_information"])
    return write_metadata(folder, document)


def message_compression_bomb(folder: Path, inflated: int = 300 * 2**20) -> Path:
    """A message-compressed sqlite3 bag whose one message is a few KB of zstd inflating to `inflated` bytes."""
    import sqlite3

    sqlite_bag(folder, messages=1)
    db = sqlite3.connect(next(folder.glob("*.db3")))
    db.execute("UPDATE messages SET data = ?", (zstd_zeros(inflated),))
    db.commit()
    db.close()

    def compress(m: dict) -> None:
        m["compression_format"], m["compression_mode"] = "zstd", "MESSAGE"

    return edit_metadata(folder, compress)
