"""`data gallery`: views laid out as the car sees them, each sample's split and its question-answer pairs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clip_vlm_core.cli import main
from clip_vlm_core.data.gallery import view_grid
from clip_vlm_core.data.manifest import load_manifest

SIX = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT"]  # not in car order


def positions(html: str) -> list[dict[str, tuple[int, int]]]:
    """Per sample card, each view's (row, column) in its grid."""
    cards = html.split("<section>")[1:]
    return [{v: (int(r), int(c)) for v, r, c in re.findall(
        r'<figure data-view="([^"]+)" style="grid-row:(\d+);grid-column:(\d+)"', card)} for card in cards]


@pytest.mark.parametrize("views, expected, columns", [
    (SIX, {"CAM_FRONT_LEFT": (1, 1), "CAM_FRONT": (1, 2), "CAM_FRONT_RIGHT": (1, 3),
           "CAM_BACK_LEFT": (2, 1), "CAM_BACK": (2, 2), "CAM_BACK_RIGHT": (2, 3)}, 3),
    (["CAM_BACK", "CAM_FRONT"], {"CAM_FRONT": (1, 1), "CAM_BACK": (2, 1)}, 1),  # front over back
    (["CAM_FRONT"], {"CAM_FRONT": (1, 1)}, 1),
    (["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_BACK_RIGHT"],
     {"CAM_FRONT_LEFT": (1, 1), "CAM_FRONT": (1, 2), "CAM_BACK_RIGHT": (2, 3)}, 3),
    (["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"],  # a front row alone: one row, left to right
     {"CAM_FRONT_LEFT": (1, 1), "CAM_FRONT": (1, 2), "CAM_FRONT_RIGHT": (1, 3)}, 3),
    (["CAM_FRONT", "CAM_BACK", "CAM_ROOF"], {"CAM_FRONT": (1, 1), "CAM_BACK": (2, 1), "CAM_ROOF": (3, 1)}, 1),
])
def test_views_are_placed_as_on_the_car_without_empty_rows_or_columns(views, expected, columns):
    cells, width = view_grid(views)
    assert {v: (r, c) for v, r, c in cells} == expected and width == columns


@pytest.fixture(scope="module")
def six_view_manifest(manifest_of) -> Path:
    return manifest_of(SIX, "qa_heldout.jsonl")


def test_a_six_camera_gallery_shows_two_rows_of_three_and_every_question_with_its_split(six_view_manifest, tmp_path):
    page = tmp_path / "g.html"
    assert main(["data", "gallery", str(six_view_manifest), "--n", "8", "--out", str(page)]) == 0
    html = page.read_text()
    cards = positions(html)
    assert len(cards) == 8
    for card in cards:
        assert card == {"CAM_FRONT_LEFT": (1, 1), "CAM_FRONT": (1, 2), "CAM_FRONT_RIGHT": (1, 3),
                        "CAM_BACK_LEFT": (2, 1), "CAM_BACK": (2, 2), "CAM_BACK_RIGHT": (2, 3)}
    assert html.count("grid-template-columns:repeat(3,") == 8
    assert "img{width:100%" in html.replace(" ", "")  # thumbnails shrink with the window, never off the screen
    splits = {split: load_manifest(six_view_manifest / f"{split}.jsonl") for split in ("mini_train", "mini_val")}
    for split, rows in splits.items():
        for row in rows:
            card = html[html.index(row.sample_token) - 200: html.index("</section>", html.index(row.sample_token))]
            assert f'<span class="split">{split}</span>' in card
            assert row.qa and all(f"<td>{p.question}</td><td>{p.answer}</td>" in card for p in row.qa)


def test_a_two_camera_gallery_is_front_over_back_and_a_split_file_names_its_split(synthetic_manifest, tmp_path):
    page = tmp_path / "g.html"
    assert main(["data", "gallery", str(synthetic_manifest / "mini_val.jsonl"), "--n", "2", "--out", str(page)]) == 0
    html = page.read_text()
    assert positions(html) == [{"CAM_FRONT": (1, 1), "CAM_BACK": (2, 1)}] * 2
    assert html.count('<span class="split">mini_val</span>') == 2 and "mini_train" not in html
