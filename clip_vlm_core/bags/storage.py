"""Storage files of a bag, checked from their headers before the reader library touches them.

What a file declares is bounded before anything is read, inflated or allocated (limits in
clip_vlm_core/limits.py):
- MCAP: every record's length must fit in the file, every chunk's inflated size and every message
  record within the limits; the summary's chunk index is held to the same bounds. The chunk decompressors
  rosbags uses are replaced by ones that stop at the size the chunk declares, so a chunk that lies about
  its size cannot inflate past it either.
- sqlite3: the SQLite header, and the largest message blob (read from the row headers, not the blobs).
- whole-file compression (zstd): the frame's declared content size, then the real inflated size measured
  by a streaming pass that writes nothing, against the limit and TMPDIR's free space; only then is the
  file inflated, in pieces.
- message compression (zstd): each message inflates to at most the message limit.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from backports import zstd

from clip_vlm_core import limits
from clip_vlm_core.errors import UserError

MCAP_MAGIC = b"\x89MCAP0\r\n"
SQLITE_MAGIC = b"SQLite format 3\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_RECORD = struct.Struct("<BQ")
_OP_MESSAGE, _OP_CHUNK, _OP_CHUNK_INDEX, _OP_FOOTER = 0x05, 0x06, 0x08, 0x02
_PIECE = 1 << 20


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n:,} bytes"


def check_mcap(path: Path, where: str) -> None:
    """Walk the MCAP's record headers (a seek each, nothing inflated) and refuse what breaks a bound."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(8) != MCAP_MAGIC:
            raise UserError(f"{where} is not an MCAP file (it does not start with MCAP's magic bytes)")
        pos = 8
        while True:
            header = f.read(_RECORD.size)
            if len(header) < _RECORD.size:
                raise UserError(f"{where} is cut short: it ends at byte {size:,} without MCAP's footer "
                                f"(a recording that was killed, or a partial copy)")
            op, length = _RECORD.unpack(header)
            body_at = pos + _RECORD.size
            if length > size - body_at:
                raise UserError(f"{where} is cut short or corrupt: a record at byte {pos:,} declares {length:,} "
                                f"bytes, but only {size - body_at:,} follow")
            if op == _OP_MESSAGE and length > limits.MAX_BAG_MESSAGE_BYTES:
                raise UserError(f"{where} holds a message of {mib(length)} at byte {pos:,}, more than the "
                                f"{mib(limits.MAX_BAG_MESSAGE_BYTES)} a bag message may have")
            if op == _OP_CHUNK:
                _check_chunk(where, pos, f.read(min(length, 28)))
            if op == _OP_CHUNK_INDEX:
                _check_chunk_index(where, pos, f.read(min(length, _PIECE)), size)
            if op == _OP_FOOTER:
                if f.seek(body_at + length) + 8 > size or f.read(8) != MCAP_MAGIC:
                    raise UserError(f"{where} is corrupt: MCAP's closing magic bytes do not follow its footer")
                return
            pos = f.seek(body_at + length)


def _check_chunk(where: str, pos: int, head: bytes) -> None:
    if len(head) < 28:
        raise UserError(f"{where} is corrupt: the chunk at byte {pos:,} is shorter than a chunk header")
    uncompressed = struct.unpack_from("<Q", head, 16)[0]
    if uncompressed > limits.MAX_BAG_CHUNK_BYTES:
        raise UserError(f"{where} has a chunk at byte {pos:,} that inflates to {mib(uncompressed)}, more than "
                        f"the {mib(limits.MAX_BAG_CHUNK_BYTES)} a bag chunk may have")


def _check_chunk_index(where: str, pos: int, body: bytes, size: int) -> None:
    try:
        _, _, start, length = struct.unpack_from("<QQQQ", body, 0)
        offsets_len = struct.unpack_from("<I", body, 32)[0]
        at = 36 + offsets_len + 8
        name_len = struct.unpack_from("<I", body, at)[0]
        compressed, uncompressed = struct.unpack_from("<QQ", body, at + 4 + name_len)
    except struct.error:
        raise UserError(f"{where} is corrupt: the chunk index at byte {pos:,} is too short") from None
    if start + length > size or compressed > length:
        raise UserError(f"{where} is corrupt: the chunk index at byte {pos:,} points past the end of the file")
    if uncompressed > limits.MAX_BAG_CHUNK_BYTES:
        raise UserError(f"{where} indexes a chunk that inflates to {mib(uncompressed)}, more than the "
                        f"{mib(limits.MAX_BAG_CHUNK_BYTES)} a bag chunk may have")


def check_sqlite(path: Path, where: str) -> None:
    """The SQLite header, then the largest message blob, read from row headers (no blob is loaded)."""
    import apsw

    with path.open("rb") as f:
        if f.read(16) != SQLITE_MAGIC:
            raise UserError(f"{where} is not an SQLite database (it does not start with SQLite's header)")
    try:
        db = apsw.Connection(f"file:{quote(str(path))}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        try:
            largest = db.execute("SELECT max(length(data)) FROM messages").fetchone()[0] or 0
        finally:
            db.close()
    except apsw.Error as exc:
        raise UserError(f"{where} cannot be read as a rosbag2 sqlite3 file ({exc})") from None
    if largest > limits.MAX_BAG_MESSAGE_BYTES:
        raise UserError(f"{where} holds a message of {mib(largest)}, more than the "
                        f"{mib(limits.MAX_BAG_MESSAGE_BYTES)} a bag message may have")


def inflate_message(data: bytes, where: str) -> bytearray:
    """One zstd-compressed message (compression_mode: message), inflated to at most the message limit."""
    return _bounded_zstd(data, limits.MAX_BAG_MESSAGE_BYTES, where)


def _bounded_zstd(data: bytes, limit: int, where: str) -> bytearray:
    """zstd data (one frame or several) inflated, refused if it would exceed `limit` bytes.

    One frame that declares its size (as rosbag2 and MCAP writers compress) is refused from its header
    when that is over the limit, and may not inflate past it either. Anything else is first inflated in a
    pass that only counts, a piece at a time; so no more than the bytes that are kept are ever held.
    """
    declared = _declared_size(data)
    try:
        if declared is not None and zstd.get_frame_size(data) == len(data):
            if declared > limit:
                raise UserError(f"{where} declares that it inflates to {mib(declared)}, more than {mib(limit)}, "
                                f"the most it may")
            return _inflate(data, declared, where, keep=True)
        return _inflate(data, _inflate(data, limit, where, keep=False), where, keep=True)
    except zstd.ZstdError as exc:
        raise UserError(f"{where} is not valid zstd data ({exc})") from None


def _inflate(data: bytes, limit: int, where: str, keep: bool) -> Any:
    """Inflate `data` a piece at a time: the bytes (keep) or their number, refused past `limit`."""
    out, total = bytearray(), 0
    decompressor, rest = zstd.ZstdDecompressor(), data
    while True:
        piece = decompressor.decompress(rest, max_length=min(_PIECE, limit + 1 - total))
        rest = b""
        total += len(piece)
        if total > limit:
            raise UserError(f"{where} inflates to more than {mib(limit)}, the most it may")
        if keep:
            out += piece
        if decompressor.eof:
            if not decompressor.unused_data:
                return out if keep else total
            decompressor, rest = zstd.ZstdDecompressor(), decompressor.unused_data
        elif decompressor.needs_input:
            raise UserError(f"{where} is cut short: its zstd data ends inside a frame")


def _declared_size(data: bytes) -> int | None:
    """The content size a zstd frame header declares, or None (not declared, or no valid header)."""
    try:
        return zstd.get_frame_info(data[:18]).decompressed_size
    except zstd.ZstdError:
        return None


def check_inflated_size(path: Path, where: str) -> int:
    """The size a whole-file-compressed storage file inflates to, refused past the limit or TMPDIR's space.

    The frame header's declared size is checked first; then the data is inflated in a pass that only
    counts (nothing is written or kept), since a frame need not declare its size, or may lie.
    """
    limit = limits.MAX_BAG_INFLATED_FILE_BYTES
    with path.open("rb") as f:
        head = f.read(18)
    if not head.startswith(ZSTD_MAGIC):
        raise UserError(f"{where} is not zstd-compressed, as the bag's metadata.yaml says it is")
    declared = _declared_size(head)
    if declared is not None and declared > limit:
        raise UserError(f"{where} declares that it inflates to {mib(declared)}, more than the {mib(limit)} "
                        f"a compressed bag file may (decompress it once with 'ros2 bag convert')")
    total = 0

    def count(piece: bytes) -> None:
        nonlocal total
        total += len(piece)
        if total > limit:
            raise UserError(f"{where} inflates to more than {mib(limit)}, the most a compressed bag file may "
                            f"(decompress it once with 'ros2 bag convert')")

    _stream_zstd(path, count, where)
    return total


def inflate_file(path: Path, target: Path, where: str) -> None:
    """Inflate a whole-file-compressed storage file to `target`, after checking its size and TMPDIR's room."""
    size = check_inflated_size(path, where)
    free = shutil.disk_usage(target.parent).free
    if size + limits.MIN_BAG_TMP_FREE_BYTES > free:
        raise UserError(f"{where} inflates to {mib(size)}, and the temporary folder {target.parent} has only "
                        f"{mib(free)} free (set TMPDIR to a folder with more room)")
    with target.open("wb") as out:
        _stream_zstd(path, out.write, where)


def _stream_zstd(path: Path, sink: Callable[[bytes], object], where: str) -> None:
    """Inflate a zstd file piece by piece into `sink`; no more than a piece is held at a time."""
    decompressor = zstd.ZstdDecompressor()
    try:
        with path.open("rb") as f:
            rest = f.read(_PIECE)
            while True:
                sink(decompressor.decompress(rest, max_length=_PIECE))
                rest = b""
                if decompressor.eof:
                    if not (rest := decompressor.unused_data or f.read(_PIECE)):
                        return
                    decompressor = zstd.ZstdDecompressor()
                elif decompressor.needs_input and not (rest := f.read(_PIECE)):
                    raise UserError(f"{where} is cut short: its zstd data ends inside a frame")
    except zstd.ZstdError as exc:
        raise UserError(f"{where} is not valid zstd data ({exc})") from None


class ChunkError(ValueError):
    """An MCAP chunk that does not inflate to what it declares."""


def bound_chunk_decompression() -> None:
    """Make rosbags inflate MCAP chunks no further than the size each declares (already within the limit).

    rosbags passes that size to its decompressors but its zstd and lz4 ones ignore it, so a chunk that
    declares 1 KiB and holds 1.5 GB of zeros would be inflated whole before the size is compared.
    """
    from rosbags.rosbag2 import storage_mcap

    def zstd_chunk(data: bytes, size: int) -> bytes:
        try:
            return _bounded_zstd(data, size, "an MCAP chunk")
        except UserError as exc:  # told by the reader's caller, with the file's name
            raise ChunkError(str(exc)) from None

    def lz4_chunk(data: bytes, size: int) -> bytes:
        import lz4.frame

        raw = lz4.frame.LZ4FrameDecompressor().decompress(data, max_length=size + 1)
        if len(raw) > size:
            raise ChunkError(f"an MCAP chunk inflates to more than the {size:,} bytes it declares")
        return raw

    storage_mcap.DECOMPRESSORS["zstd"] = zstd_chunk
    storage_mcap.DECOMPRESSORS["lz4"] = lz4_chunk
