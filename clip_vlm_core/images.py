"""Camera images in, RGB PIL images out: every accepted form checked and converted in one place.

Every image that enters clip-vlm from outside (a file named on the command line, a manifest row, a
nuScenes table, a ROS message) passes the same two limits before a pixel is decoded:

- `MAX_IMAGE_BYTES`: the encoded size (a file, a CompressedImage's data);
- `MAX_IMAGE_PIXELS`: width x height, read from the image's header (PIL reads headers without
  decoding), so a decompression bomb — a few kB of PNG that unpacks to gigabytes — costs nothing.

PIL has a bomb check of its own, but importing nuscenes-devkit switches it off for the whole process;
these limits hold regardless.
"""

from __future__ import annotations

import base64
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clip_vlm_core.errors import UserError
from clip_vlm_core.paths import regular_file_info


@dataclass(frozen=True)
class EncodedImage:
    """An image still in its file format (JPEG, PNG, ...), its size read from the header and within the
    limits: decoding can wait for the place that does it best (the model's device, in one batch).

    Make one with `EncodedImage.checked(data)`; a camera message's bytes cost a header read here.
    """

    data: bytes
    width: int
    height: int

    @classmethod
    def checked(cls, data: bytes, name: str = "image") -> EncodedImage:
        width, height = check_encoded(data, name)
        return cls(bytes(data), width, height)

    @property
    def is_jpeg(self) -> bool:
        return self.data[:3] == b"\xff\xd8\xff"

    @property
    def shape(self) -> tuple[int, int, int]:
        """The decoded array's shape (HxWx3 RGB), known before decoding."""
        return (self.height, self.width, 3)


ImageLike = Image.Image | np.ndarray | EncodedImage

# 8192 x 8192: four times a 4K frame and 47 times a nuScenes frame (1600x900); no camera a car carries
# comes near it, and one decoded RGB image at the limit is 192 MiB.
MAX_IMAGE_PIXELS = 8192 * 8192
# An encoded image file or message: a nuScenes JPEG is ~0.2-1 MB, a raw 4K rgb8 frame 24 MiB.
MAX_IMAGE_BYTES = 32 * 1024 * 1024
LIMITS_TEXT = f"{MAX_IMAGE_PIXELS / 1e6:.1f} megapixels (8192x8192) and {MAX_IMAGE_BYTES >> 20} MiB encoded"


def pixels_problem(width: int, height: int) -> str | None:
    """Why an image of this size is refused (a short phrase), or None when it is within the limit."""
    if width <= 0 or height <= 0:
        return f"has zero size ({width}x{height})"
    if width * height > MAX_IMAGE_PIXELS:
        return (f"is {width}x{height} ({width * height / 1e6:.1f} megapixels), over the limit of "
                f"{MAX_IMAGE_PIXELS / 1e6:.1f} megapixels (8192x8192)")
    return None


def bytes_problem(size: int) -> str | None:
    """Why an encoded image of `size` bytes is refused, or None."""
    if size > MAX_IMAGE_BYTES:
        return f"is {size / 2**20:.1f} MiB, over the limit of {MAX_IMAGE_BYTES >> 20} MiB for an encoded image"
    return None


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from an encoded image's header, without decoding it; ValueError if unreadable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.size
        except Image.DecompressionBombError:
            # PIL's own check (when on) refuses before we can read the size; the header has it though.
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                with Image.open(io.BytesIO(data)) as image:
                    return image.size
            finally:
                Image.MAX_IMAGE_PIXELS = previous
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ValueError(str(exc)) from None


def check_encoded(data: bytes, name: str = "image") -> tuple[int, int]:
    """Check an encoded image's byte size and header size against the limits; return (width, height)."""
    problem = bytes_problem(len(data))
    if problem is None:
        try:
            width, height = header_size(data)
        except ValueError as exc:
            raise UserError(f"{name} cannot be read as an image ({exc})") from None
        problem = pixels_problem(width, height)
    if problem is not None:
        raise UserError(f"{name} {problem}")
    return width, height


def read_image_file(path: str | Path, name: str | None = None) -> bytes:
    """The bytes of an image file, after checking it is a regular file within the byte limit.

    A folder, a FIFO or a device (e.g. /dev/zero) is refused for what it is before anything is read.
    """
    path = Path(path)
    name = name or f"image file {path}"
    info = regular_file_info(path, "image file", shown=name, wanted="a regular image file",
                             folder_wanted="an image file")
    problem = bytes_problem(info.st_size)
    if problem is not None:
        raise UserError(f"{name} {problem}")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)  # the file may have grown since stat()
    except OSError as exc:
        raise UserError(f"{name} cannot be read ({exc.strerror})") from None
    problem = bytes_problem(len(data))
    if problem is not None:
        raise UserError(f"{name} {problem}")
    return data


def decode_image(data: bytes, name: str = "image") -> Image.Image:
    """Encoded bytes (JPEG, PNG, ...) as an RGB PIL image, limits checked from the header first."""
    check_encoded(data, name)
    try:
        with Image.open(io.BytesIO(data)) as image:  # our limit is below PIL's own, when that is on
            image.load()
            return to_rgb(image, name)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{name} cannot be read as an image ({exc})") from None


def load_image(path: str | Path) -> Image.Image:
    """Open an image file fully (so a truncated file fails here, not later) as RGB, within the limits."""
    return decode_image(read_image_file(path), f"image file {path}")


def to_rgb(image: ImageLike, name: str = "image") -> Image.Image:
    """Accept PIL images in any mode, HxW / HxWx1 / HxWx3 / HxWx4 uint8 arrays or encoded images;
    return RGB PIL."""
    if isinstance(image, EncodedImage):
        return decode_image(image.data, name)
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image, name)
    elif not isinstance(image, Image.Image):
        raise UserError(f"{name} must be a PIL image or an HxWx3 uint8 array, got {type(image).__name__}")
    problem = pixels_problem(image.width, image.height)
    if problem is not None:
        raise UserError(f"{name} {problem}")
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on black rather than dropping alpha, so transparent pixels do not show stale colour.
        background = Image.new("RGB", image.size)
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def _array_to_pil(array: np.ndarray, name: str) -> Image.Image:
    if array.dtype != np.uint8:
        raise UserError(f"{name} must be a uint8 array, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise UserError(f"{name} must be HxW, HxWx1, HxWx3 or HxWx4, got shape {tuple(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise UserError(f"{name} has zero size (shape {tuple(array.shape)})")
    return Image.fromarray(np.ascontiguousarray(array))


def thumbnail_data_uri(image: Image.Image, width: int) -> str:
    """A `data:` URI of the image as a JPEG `width` pixels wide (never enlarged), for self-contained HTML."""
    scale = min(1.0, width / image.width)
    small = image.convert("RGB").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


__all__ = [
    "LIMITS_TEXT",
    "EncodedImage",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "bytes_problem",
    "check_encoded",
    "decode_image",
    "header_size",
    "load_image",
    "pixels_problem",
    "read_image_file",
    "to_rgb",
]
