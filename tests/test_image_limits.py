"""The image limits (clip_vlm_core.images) hold at every command that reads images.

A 20000x20000 PNG of a few hundred kB (1.2 GB once decoded) is refused from its header, in one
sentence, by caption, data build, verify, gallery and bag convert (raw and compressed), and nothing is
written. nuscenes-devkit switches PIL's own bomb check off on import: these tests run after it.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import pytest
from intact import REPO, assert_one_sentence, digest, staging_left
from PIL import Image

from clip_vlm_core.cli import main
from clip_vlm_core.images import MAX_IMAGE_BYTES

OVER = "is 20000x20000 (400.0 megapixels), over the limit of 67.1 megapixels (8192x8192)"


@pytest.fixture(scope="module")
def bomb() -> bytes:
    import nuscenes.nuscenes  # noqa: F401 - PIL's own check is off from here on, as in every CLI run

    buffer = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 1 << 20
    return buffer.getvalue()


@pytest.fixture
def tree(synthetic_nuscenes, tmp_path) -> Path:
    shutil.copytree(synthetic_nuscenes, tmp_path / "nuscenes")
    return tmp_path / "nuscenes"


def keyframe_image(tree: Path, scene_index: int = 0, camera: str = "CAM_FRONT") -> Path:
    """The first keyframe image of a scene (scene 0 is mini_train, scene 1 mini_val)."""
    records = json.loads(sorted((tree / "nuinteract").glob("*.json"))[scene_index].read_text())
    return tree / records[0]["cam_path"][camera]


def test_caption_refuses_a_bomb_and_logs_nothing(bomb, tmp_path, capsys):
    image = tmp_path / "front.png"
    image.write_bytes(bomb)
    log = tmp_path / "log.jsonl"
    start = time.perf_counter()
    assert main(["caption", "--view", f"CAM_FRONT={image}", "--view",
                 f"CAM_BACK={REPO / 'clip_vlm_core/assets/samples/back.jpg'}", "--log", str(log)]) == 2
    assert time.perf_counter() - start < 5  # decoding it would take many seconds and 1.2 GB
    assert_one_sentence(capsys.readouterr().err, "caption", f"image file {image} {OVER}")
    assert not log.exists()


def test_data_build_skips_a_bomb_and_stops_on_it_when_strict(bomb, tree, tmp_path, capsys):
    victim = keyframe_image(tree)
    victim.write_bytes(bomb)
    argv = ["data", "build", "--dataroot", str(tree), "--captions", str(tree / "nuinteract")]
    assert main([*argv, "--out", str(tmp_path / "strict"), "--strict"]) == 2
    assert_one_sentence(capsys.readouterr().err, "data", "image over the limits of 67.1 megapixels (8192x8192) and "
                        "32 MiB encoded", str(victim.relative_to(tree)))
    assert not (tmp_path / "strict").exists() and not staging_left(tmp_path)
    assert main([*argv, "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "mini_train: 3 samples" in out and "skipped 1 (image over the limits" in out


def test_verify_names_an_image_replaced_by_a_bomb_or_grown_over_the_byte_limit(bomb, tree, tmp_path, capsys):
    assert main(["data", "build", "--dataroot", str(tree), "--captions", str(tree / "nuinteract"),
                 "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    bombed, huge = keyframe_image(tree, 0), keyframe_image(tree, 1)
    bombed.write_bytes(bomb)
    with open(huge, "r+b") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: costs no disk, and is never read
    before = digest(tmp_path)
    assert main(["data", "verify", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert f"sha256 changed: {bombed}" in err and f"too large: {huge} is 32.0 MiB, over the limit" in err
    assert "Traceback" not in err and digest(tmp_path) == before


def test_gallery_refuses_a_bomb_and_writes_no_page(bomb, tree, tmp_path, capsys):
    assert main(["data", "build", "--dataroot", str(tree), "--captions", str(tree / "nuinteract"),
                 "--out", str(tmp_path / "m")]) == 0
    victim = keyframe_image(tree, 1)
    victim.write_bytes(bomb)
    page = tmp_path / "g.html"
    assert main(["data", "gallery", str(tmp_path / "m" / "mini_val.jsonl"), "--n", "4", "--out", str(page)]) == 2
    assert_one_sentence(capsys.readouterr().err, "data", f"{victim.name} {OVER}")
    assert not page.exists() and not staging_left(tmp_path)


@pytest.mark.parametrize("raw", [False, True])
def test_bag_convert_refuses_a_bomb_raw_or_compressed_and_leaves_no_bag(bomb, tree, tmp_path, capsys, raw):
    victim = keyframe_image(tree)
    victim.write_bytes(bomb)
    out = tmp_path / "bags"
    start = time.perf_counter()
    assert main(["bag", "convert", "--dataroot", str(tree), "--scene", "scene-0061", "--out", str(out),
                 *(["--raw"] if raw else [])]) == 2
    assert time.perf_counter() - start < 10  # --raw used to decode it into a 1.2 GB bag
    assert_one_sentence(capsys.readouterr().err, "bag", f"image file {victim} {OVER}")
    assert list(out.iterdir()) == []  # neither a bag nor its staging folder
