"""Camera-like 1600x900 JPEG pairs, the bytes every preprocessing figure starts from.

The bundled sample frames are flat drawings (55 kB as JPEG), which decode faster than camera frames;
sensor-like noise brings them to the size of a real camera JPEG of that resolution (~220 kB each),
and a seed makes every pair different, so no decoder or cache sees the same bytes twice in a row.
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np
from PIL import Image

from clip_vlm_core.images import EncodedImage

SAMPLES = ("front", "back")  # clip_vlm_core/assets/samples/{front,back}.jpg, 1600x900
NOISE_STD = 4.0
JPEG_QUALITY = 90


@cache
def _sample(name: str) -> np.ndarray:
    from clip_vlm_core.model.checkpoint import default_model_path

    path = default_model_path().parent / "samples" / f"{name}.jpg"
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def camera_jpeg(view_index: int, seed: int) -> bytes:
    """One 1600x900 JPEG: the bundled front (even index) or back (odd) frame with seeded noise."""
    base = _sample(SAMPLES[view_index % 2])
    noise = np.random.default_rng(seed * 1009 + view_index).normal(0.0, NOISE_STD, base.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def camera_samples(views: tuple[str, ...], pairs: int, seed: int = 0) -> list[dict[str, EncodedImage]]:
    """`pairs` samples of {view: encoded 1600x900 JPEG}, each frame different."""
    return [
        {view: EncodedImage.checked(camera_jpeg(v, seed * 10_007 + p), f"bench frame {view}") for v, view in enumerate(views)}
        for p in range(pairs)
    ]
