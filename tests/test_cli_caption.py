"""`clip-vlm caption`: prints a caption, logs the playground, and turns bad input into one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_vlm_core.cli import main


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("front", "back"):
        Image.fromarray(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)).save(folder / f"{name}.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return folder


def test_caption_prints_one_line_and_logs_settings(images, tmp_path, capsys):
    log = tmp_path / "play.jsonl"
    argv = ["caption", "--view", f"CAM_FRONT={images / 'front.jpg'}", "--view", f"CAM_BACK={images / 'back.jpg'}",
            "--max-new-tokens", "6", "--log", str(log)]
    assert main(argv) == 0
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 2
    assert records[0]["caption"] == printed[0]
    assert records[0]["decoding"]["max_new_tokens"] == 6
    assert records[0]["views"]["CAM_FRONT"].endswith("front.jpg")


@pytest.mark.parametrize(
    "views, message",
    [
        (["CAM_FRONT=front.jpg", "CAM_BACK=missing.jpg"], "missing.jpg does not exist"),
        (["CAM_FRONT=front.jpg", "CAM_BACK=broken.jpg"], "broken.jpg cannot be read as an image"),
        (["CAM_FRONT=front.jpg"], "no image for view(s) ['CAM_BACK']"),
        (["CAM_FRONT=front.jpg", "CAM_BACK=back.jpg", "CAM_SIDE=back.jpg"], "unknown view(s) ['CAM_SIDE']"),
        (["CAM_FRONT"], "must look like CAMERA=IMAGE"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(images, capsys, views, message):
    argv = ["caption"]
    for spec in views:
        name, _, file = spec.partition("=")
        argv += ["--view", f"{name}={images / file}" if file else name]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_missing_checkpoint_folder_is_named(images, tmp_path, capsys):
    argv = ["caption", "--view", f"CAM_FRONT={images / 'front.jpg'}", "--view", f"CAM_BACK={images / 'back.jpg'}",
            "--checkpoint", str(tmp_path / "no-such-run")]
    assert main(argv) == 2
    assert "no-such-run" in capsys.readouterr().err


def test_bundled_samples_are_described_as_their_ground_truth(capsys):
    samples = Path(__file__).resolve().parents[1] / "clip_vlm_core" / "assets" / "samples"
    truth = (samples / "README.md").read_text().split("Ground truth: ", 1)[1].strip()
    argv = ["caption", "--view", f"CAM_FRONT={samples / 'front.jpg'}", "--view", f"CAM_BACK={samples / 'back.jpg'}"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == truth
