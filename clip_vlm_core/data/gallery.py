"""A self-contained HTML page of manifest samples: every view as a thumbnail, and the caption.

Its first line says which command wrote it, so a later gallery may replace it without --overwrite
(clip_vlm_core.atomic); every image passes the one intake (inside the dataroot, within the limits); every
text is escaped (clip_vlm_core.pages).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from clip_vlm_core.data.manifest import ManifestRow
from clip_vlm_core.errors import UserError
from clip_vlm_core.images import load_image, thumbnail_data_uri
from clip_vlm_core.output_guard import file_mark
from clip_vlm_core.pages import render_page

WRITER = "clip-vlm data gallery"


def thumbnail_uri(path: Path, width: int = 320) -> str:
    return thumbnail_data_uri(load_image(path), width)


def choose_rows(rows: Sequence[ManifestRow], n: int, seed: int, tokens: Sequence[str] = ()) -> list[ManifestRow]:
    if tokens:
        by_token = {r.sample_token: r for r in rows}
        unknown = [t for t in tokens if t not in by_token]
        if unknown:
            raise UserError(f"sample token(s) {unknown} are not in the manifest")
        return [by_token[t] for t in tokens]
    if n < 1:
        raise UserError(f"--n must be at least 1 (got {n})")
    return random.Random(seed).sample(list(rows), min(n, len(rows)))


def render_gallery(rows: Sequence[ManifestRow], dataroot: Path, title: str) -> str:
    """The page (clip_vlm_core/templates/gallery.html, every text escaped); its first line names its writer."""
    cards = [{"thumbnails": {cam: thumbnail_uri(row.image_path(cam, dataroot)) for cam in row.views},
              "caption": row.caption, "scene": row.scene, "token": row.sample_token} for row in rows]
    return render_page("gallery.html", mark=file_mark(WRITER), title=title, cards=cards)
