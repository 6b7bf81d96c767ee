"""Camera messages in, HxWx3 uint8 RGB arrays out, or a `BadFrame` that says what was wrong.

Works on anything shaped like sensor_msgs/Image or sensor_msgs/CompressedImage: rclpy messages in the
node, rosbags messages in tests and tools. The pixel work is rosbags-image's; this module adds the checks
a live stream needs (a corrupt JPEG or a short buffer must cost one frame, never the node).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from rosbags.image.image import ImageError, convert_color, to_cvtype


class BadFrame(ValueError):
    """A camera message that cannot become an image; the reason is one short phrase."""


@dataclass(frozen=True)
class Frame:
    """One decoded camera image with the two times it is judged by."""

    view: str
    stamp_ns: int  # the source's header stamp
    received_ns: int  # time.monotonic_ns() when the message arrived here
    image: np.ndarray  # HxWx3 uint8 RGB
    frame_id: str = ""


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (rclpy: sec/nanosec) as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def decode_image_message(msg: Any) -> np.ndarray:
    """An Image or CompressedImage message as a contiguous HxWx3 uint8 RGB array."""
    if hasattr(msg, "format"):
        return decode_compressed(bytes(msg.data))
    return decode_raw(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data)


def decode_compressed(data: bytes) -> np.ndarray:
    if len(data) == 0:
        raise BadFrame("empty compressed image")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadFrame("compressed image cannot be decoded")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise BadFrame("compressed image has zero size")
    # IMREAD_COLOR always gives 8-bit BGR, whatever the JPEG/PNG held (grey, 16-bit, alpha).
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_raw(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data: Any) -> np.ndarray:
    if height == 0 or width == 0:
        raise BadFrame(f"zero-size image ({width}x{height})")
    try:
        depth, _, typestr, channels = to_cvtype(encoding)
    except ImageError:
        raise BadFrame(f"unknown encoding {encoding!r}") from None
    dtype = np.dtype(typestr).newbyteorder(">" if is_bigendian else "<")
    row_bytes = width * channels * dtype.itemsize
    buffer = memoryview(data).cast("B") if not isinstance(data, bytes | bytearray) else data
    if step < row_bytes or len(buffer) != step * height:
        raise BadFrame(
            f"{encoding} {width}x{height} with step {step} needs {step * height} bytes, got {len(buffer)}"
        )
    shape = (height, width, channels) if channels > 1 else (height, width)
    strides = (step, channels * dtype.itemsize, dtype.itemsize) if channels > 1 else (step, dtype.itemsize)
    image = np.ndarray(shape, dtype=dtype, buffer=buffer, strides=strides)
    image = image.astype(dtype.newbyteorder("="), copy=False)
    try:
        rgb = convert_color(image, encoding, "rgb8")
    except (ImageError, cv2.error) as exc:
        raise BadFrame(f"encoding {encoding!r} cannot be converted to rgb8 ({exc})") from None
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if rgb.dtype != np.uint8:  # depth we do not scale (e.g. 32FC3) is refused rather than guessed
        raise BadFrame(f"encoding {encoding!r} ({depth}-bit) does not convert to 8-bit colour")
    # Copy: the message's buffer is reused by the middleware once the callback returns.
    return rgb.copy(order="C") if np.may_share_memory(rgb, image) else np.ascontiguousarray(rgb)
