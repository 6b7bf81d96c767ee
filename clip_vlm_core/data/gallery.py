"""A self-contained HTML page of manifest samples: every view as a thumbnail, and the caption.

Its first line says which command wrote it, so a later gallery may replace it without --overwrite
(clip_vlm_core.atomic); every image passes the one intake (inside the dataroot, within the limits).
"""

from __future__ import annotations

import html
import random
from collections.abc import Sequence
from pathlib import Path

from clip_vlm_core.atomic import file_mark
from clip_vlm_core.data.manifest import ManifestRow
from clip_vlm_core.errors import UserError
from clip_vlm_core.images import load_image, thumbnail_data_uri

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
    cards = []
    for row in rows:
        images = "".join(
            f'<figure><img src="{thumbnail_uri(row.image_path(cam, dataroot))}" alt="{html.escape(cam)}">'
            f"<figcaption>{html.escape(cam)}</figcaption></figure>"
            for cam in row.views
        )
        cards.append(f'<section><div class="views">{images}</div><p class="caption">{html.escape(row.caption)}</p>'
                     f'<p class="meta">{html.escape(row.scene)} · {html.escape(row.sample_token)}</p></section>')
    return f"""<!doctype html><!-- {file_mark(WRITER)} -->
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;background:#fafafa}} section{{background:#fff;margin:1em 0;
padding:1em;border:1px solid #ddd}} .views{{display:flex;gap:8px}} figure{{margin:0}} figcaption{{font-size:12px;
color:#555}} .caption{{font-size:16px}} .meta{{font-size:12px;color:#888}}</style></head><body>
<h1>{html.escape(title)}</h1>{''.join(cards)}</body></html>"""
