"""The front camera image with its caption written across the bottom, for people watching in RViz."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def draw_caption(image: np.ndarray, caption: str) -> np.ndarray:
    """A copy of an HxWx3 uint8 RGB image with the caption in white on a dark band at the bottom."""
    canvas = Image.fromarray(image).convert("RGB")
    font_size = max(10, canvas.height // 30)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        font = ImageFont.load_default()
    printable = "".join(ch if ch.isprintable() else " " for ch in caption)
    chars_per_line = max(10, int(canvas.width / (font_size * 0.55)))
    lines = textwrap.wrap(printable, chars_per_line)[:4] or [""]
    line_height = int(font_size * 1.25)
    band = line_height * len(lines) + line_height // 2
    draw = ImageDraw.Draw(canvas, "RGBA")
    draw.rectangle([(0, canvas.height - band), (canvas.width, canvas.height)], fill=(0, 0, 0, 160))
    for i, line in enumerate(lines):
        draw.text((line_height // 4, canvas.height - band + line_height // 4 + i * line_height), line,
                  fill=(255, 255, 255), font=font)
    return np.asarray(canvas)
