"""A self-contained HTML page of manifest samples: every view as a thumbnail laid out as the car sees it,
the caption, the sample's split and its question-answer pairs.

Views stand where they are on the car: the front row left to right (front-left, front, front-right), the
back row below (back-left, back, back-right), as nuScenes' own renders show them; columns and rows no view
fills are left out, so two views are front over back and one is alone. A view of another name goes in a
row below. The grid scales to the window: six views never run off the screen.

Its first line says which command wrote it, so a later gallery may replace it without --overwrite
(clip_vlm_core.atomic); every image passes the one intake (inside the dataroot, within the limits); every
text is escaped (clip_vlm_core.pages).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from clip_vlm_core.data.manifest import ManifestRow, load_manifest, split_files
from clip_vlm_core.errors import UserError
from clip_vlm_core.images import load_image, thumbnail_data_uri
from clip_vlm_core.output_guard import file_mark
from clip_vlm_core.pages import render_page

WRITER = "clip-vlm data gallery"
THUMBNAIL_WIDTH = 320

# (row, column) of each nuScenes camera on the car, seen from above, facing forward.
CAR_LAYOUT = {
    "CAM_FRONT_LEFT": (0, 0), "CAM_FRONT": (0, 1), "CAM_FRONT_RIGHT": (0, 2),
    "CAM_BACK_LEFT": (1, 0), "CAM_BACK": (1, 1), "CAM_BACK_RIGHT": (1, 2),
}


def thumbnail_uri(path: Path, width: int = THUMBNAIL_WIDTH) -> str:
    return thumbnail_data_uri(load_image(path), width)


def view_grid(views: Sequence[str]) -> tuple[list[tuple[str, int, int]], int]:
    """[(view, row, column)] numbered from 1 (CSS grid lines), and the number of columns: the car's layout,
    less the rows and columns no view fills; views of other names in rows below, left to right."""
    placed = [v for v in views if v in CAR_LAYOUT]
    rows = sorted({CAR_LAYOUT[v][0] for v in placed})
    columns = sorted({CAR_LAYOUT[v][1] for v in placed})
    cells = [(v, rows.index(CAR_LAYOUT[v][0]) + 1, columns.index(CAR_LAYOUT[v][1]) + 1) for v in placed]
    width = max(len(columns), 1)
    others = [v for v in views if v not in CAR_LAYOUT]
    if others and not placed:
        width = min(len(others), 3)
    first_free = len(rows) + 1
    cells += [(v, first_free + i // width, i % width + 1) for i, v in enumerate(others)]
    return sorted(cells, key=lambda cell: (cell[1], cell[2])), width


def rows_by_split(manifest: str | Path) -> tuple[list[ManifestRow], dict[str, str]]:
    """Every row of a manifest folder (or one split file), and each sample token's split (the file's name)."""
    manifest = Path(manifest)
    files = split_files(manifest) if manifest.is_dir() else [manifest]
    rows: list[ManifestRow] = []
    splits: dict[str, str] = {}
    for file in files:
        for row in load_manifest(file):
            rows.append(row)
            splits[row.sample_token] = file.stem
    if not rows:
        raise UserError(f"manifest {manifest} has no samples")
    return rows, splits


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


def _card(row: ManifestRow, dataroot: Path, split: str) -> dict:
    cells, columns = view_grid(list(row.views))
    return {
        "views": [{"name": view, "row": r, "column": c, "uri": thumbnail_uri(row.image_path(view, dataroot))}
                  for view, r, c in cells],
        "columns": columns, "caption": row.caption, "scene": row.scene, "token": row.sample_token, "split": split,
        "qa": [{"question": p.question, "answer": p.answer, "type": p.type} for p in row.qa],
    }


def render_gallery(rows: Sequence[ManifestRow], dataroot: Path, title: str,
                   splits: Mapping[str, str] | None = None) -> str:
    """The page (clip_vlm_core/templates/gallery.html, every text escaped); its first line names its writer.
    `splits` maps a sample token to its split (rows_by_split); a row not in it shows no split."""
    splits = splits or {}
    cards = [_card(row, dataroot, splits.get(row.sample_token, "")) for row in rows]
    counts: dict[str, int] = {}
    for card in cards:
        counts[card["split"] or "split not known"] = counts.get(card["split"] or "split not known", 0) + 1
    return render_page("gallery.html", mark=file_mark(WRITER), title=title, cards=cards,
                       split_counts=sorted(counts.items()), thumbnail_width=THUMBNAIL_WIDTH)
