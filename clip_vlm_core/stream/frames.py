"""Camera messages in, images out, or a `BadFrame` that says what was wrong.

Works on anything shaped like sensor_msgs/Image or sensor_msgs/CompressedImage: rclpy messages in the
node, rosbags messages in tests and tools. The pixel work is rosbags-image's; this module adds the checks
a live stream needs (a corrupt JPEG, a short buffer or a decompression bomb must cost one frame, never
the node), with the limits of clip_vlm_core.images, all checked before a pixel is touched:

- a CompressedImage stays encoded (`image_from_message`): its byte size and the size its header states
  are checked here (microseconds), and the decoding waits for the caption worker, which decodes the
  frames it captions in one batch on the model's device; a body that turns out corrupt is counted there;
- a raw Image's width x height and data length are checked before its buffer is read, then it is
  converted to RGB here (a copy and a colour conversion, no decoding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from rosbags.image.image import ImageError, convert_color, to_cvtype

from clip_vlm_core.images import EncodedImage, bytes_problem, header_size, pixels_problem


class BadFrame(ValueError):
    """A camera message that cannot become an image; the reason is one short phrase."""


@dataclass(frozen=True)
class Frame:
    """One decoded camera image with the two times it is judged by."""

    view: str
    stamp_ns: int  # the source's header stamp
    received_ns: int  # time.monotonic_ns() when the message arrived here
    image: np.ndarray | EncodedImage  # HxWx3 uint8 RGB, or still encoded (header checked)
    frame_id: str = ""


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (rclpy: sec/nanosec) as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def image_from_message(msg: Any) -> np.ndarray | EncodedImage:
    """What the node's callback keeps of a message: a CompressedImage still encoded (header checked), a
    raw Image as a contiguous HxWx3 uint8 RGB array."""
    if hasattr(msg, "format"):
        return encoded_image(msg.data)
    return decode_raw(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data)


def decode_image_message(msg: Any) -> np.ndarray:
    """An Image or CompressedImage message as a contiguous HxWx3 uint8 RGB array, decoded here."""
    image = image_from_message(msg)
    return decode_compressed(image.data) if isinstance(image, EncodedImage) else image


def encoded_image(data: Any) -> EncodedImage:
    """A CompressedImage's bytes, checked without decoding: within the byte limit, a header that says
    the format and a size within the pixel limit (a 20000x20000 PNG of a few hundred kB stops here)."""
    size = len(data)  # before copying anything: the message's own buffer
    if size == 0:
        raise BadFrame("empty compressed image")
    problem = bytes_problem(size)
    if problem is not None:
        raise BadFrame(f"compressed image {problem}")
    data = bytes(data)
    try:
        width, height = header_size(data)
    except ValueError:
        raise BadFrame("compressed image cannot be decoded (no readable image header)") from None
    problem = pixels_problem(width, height)
    if problem is not None:
        raise BadFrame(f"compressed image {problem}")
    return EncodedImage(data, width, height)


def decode_compressed(data: bytes) -> np.ndarray:
    """Encoded bytes as an HxWx3 uint8 RGB array on the CPU, limits checked from the header first."""
    checked = encoded_image(data)
    # IMREAD_COLOR_RGB always gives 8-bit RGB, whatever the JPEG/PNG held (grey, 16-bit, alpha).
    image = cv2.imdecode(np.frombuffer(checked.data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.shape[:2] != (checked.height, checked.width):
        raise BadFrame("compressed image cannot be decoded")
    return image


def black_jpeg(width: int, height: int) -> EncodedImage:
    """A black frame as a camera would send it (JPEG), e.g. to warm up the decoding path at start-up."""
    return EncodedImage.checked(cv2.imencode(".jpg", np.zeros((height, width, 3), np.uint8))[1].tobytes())


# OpenCV's type names carry no colour order; cv_bridge reads their 1, 3 and 4 channels as mono, BGR and BGRA
# (OpenCV's own order, cvtColorForDisplay), and so does this node.
GENERIC_ENCODINGS = {"8UC1": "mono8", "8UC3": "bgr8", "8UC4": "bgra8",
                     "16UC1": "mono16", "16UC3": "bgr16", "16UC4": "bgra16"}


def decode_raw(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data: Any) -> np.ndarray:
    named, encoding = encoding, GENERIC_ENCODINGS.get(encoding, encoding)
    if height == 0 or width == 0:
        raise BadFrame(f"zero-size image ({width}x{height})")
    problem = pixels_problem(width, height)
    if problem is not None:  # before the buffer is looked at: its size follows from these numbers
        raise BadFrame(f"raw image {problem}")
    try:
        depth, _, typestr, channels = to_cvtype(encoding)
    except ImageError:
        raise BadFrame(f"unknown encoding {named!r}") from None
    dtype = np.dtype(typestr).newbyteorder(">" if is_bigendian else "<")
    row_bytes = width * channels * dtype.itemsize
    buffer = memoryview(data).cast("B") if not isinstance(data, bytes | bytearray) else data
    if step < row_bytes:
        raise BadFrame(f"step {step} is too small: a row of {width} {named} pixels takes {row_bytes} bytes "
                       "(step is the bytes per row)")
    if len(buffer) != step * height:
        raise BadFrame(
            f"{named} {width}x{height} with step {step} needs {step * height} bytes, got {len(buffer)}"
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
