"""The one image intake (clip_vlm_core.images): limits read from headers, files checked before reading."""

from __future__ import annotations

import io
import os
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from clip_vlm_core.errors import UserError
from clip_vlm_core.images import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    check_encoded,
    decode_image,
    load_image,
    read_image_file,
    to_rgb,
)


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> bytes:
    """20000x20000 black pixels in a few hundred kB of PNG: 1.2 GB once decoded to RGB."""
    data = png_bytes(20000, 20000)
    assert len(data) < 1 << 20
    return data


def test_decompression_bomb_is_refused_from_its_header_without_decoding(bomb, tmp_path):
    import nuscenes.nuscenes  # noqa: F401 - switches PIL's own bomb check off, as in every CLI run

    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"bomb.png is 20000x20000 \(400.0 megapixels\), over the limit"):
        load_image(path)
    with pytest.raises(UserError, match="over the limit"):
        decode_image(bomb, "frame")
    assert time.perf_counter() - start < 2.0  # decoding it would take seconds and 1.2 GB


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (its pixel data is one row: only the header is read)."""
    data = bytearray(png_bytes(1, 1))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR width and height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # IHDR's CRC
    return bytes(data)


@pytest.mark.parametrize("size", [(8193, 8192), (70000, 1000), (1, MAX_IMAGE_PIXELS + 1)])
def test_pixel_limit_counts_width_times_height(size):
    with pytest.raises(UserError, match=r"x: is .* megapixels\), over the limit"):
        check_encoded(header_only_png(*size), "x:")


def test_image_at_the_limit_is_accepted():
    assert check_encoded(header_only_png(8192, 8192), "x") == (8192, 8192)


def test_encoded_bytes_over_the_limit_are_refused_before_reading(tmp_path):
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(UserError, match=r"huge.jpg is 32.0 MiB, over the limit of 32 MiB"):
        read_image_file(path)
    with pytest.raises(UserError, match="MiB, over the limit"):
        check_encoded(b"\0" * (MAX_IMAGE_BYTES + 1))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.mkdir(), "is a folder, not an image file"),
        (lambda p: os.mkfifo(p), r"is a FIFO \(named pipe\), not a regular image file"),
        (None, "does not exist"),
    ],
)
def test_a_path_that_is_no_regular_file_says_what_it_is(tmp_path, make, message):
    path = tmp_path / "front.jpg"
    if make is not None:
        make(path)
    with pytest.raises(UserError, match=message):
        load_image(path)


def test_a_device_is_refused_not_read():
    with pytest.raises(UserError, match="/dev/zero is a device, not a regular image file"):
        load_image("/dev/zero")


def test_an_array_over_the_pixel_limit_is_refused_before_the_model():
    wide = np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), (1, MAX_IMAGE_PIXELS + 1, 3), (0, 0, 1))
    with pytest.raises(UserError, match="over the limit"):
        to_rgb(wide, "sample 0 view CAM_FRONT")


def test_truncated_file_is_a_clear_error(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[:200])
    with pytest.raises(UserError, match="cut.jpg cannot be read as an image"):
        load_image(path)
