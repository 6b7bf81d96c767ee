"""A self-contained HTML page of manifest samples: every view as a thumbnail, and the caption."""

from __future__ import annotations

import html
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from clip_vlm_core.data.manifest import ManifestRow
from clip_vlm_core.errors import UserError
from clip_vlm_core.images import thumbnail_data_uri


def thumbnail_uri(path: Path, width: int = 320) -> str:
    with Image.open(path) as image:
        return thumbnail_data_uri(image, width)


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
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;background:#fafafa}} section{{background:#fff;margin:1em 0;
padding:1em;border:1px solid #ddd}} .views{{display:flex;gap:8px}} figure{{margin:0}} figcaption{{font-size:12px;
color:#555}} .caption{{font-size:16px}} .meta{{font-size:12px;color:#888}}</style></head><body>
<h1>{html.escape(title)}</h1>{''.join(cards)}</body></html>"""
