"""Camera images in, RGB PIL images out: every accepted form checked and converted in one place."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clip_vlm_core.errors import UserError

ImageLike = Image.Image | np.ndarray


def load_image(path: str | Path) -> Image.Image:
    """Open an image file fully (so a truncated file fails here, not later) as RGB."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image file {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image, str(path))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UserError(f"image file {path} cannot be read as an image ({exc})") from None


def to_rgb(image: ImageLike, name: str = "image") -> Image.Image:
    """Accept PIL images in any mode or HxW / HxWx1 / HxWx3 / HxWx4 uint8 arrays; return RGB PIL."""
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image, name)
    elif not isinstance(image, Image.Image):
        raise UserError(f"{name} must be a PIL image or an HxWx3 uint8 array, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise UserError(f"{name} has zero size ({image.width}x{image.height})")
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
