"""`make demo` end to end: synthetic scene -> bag -> caption_node <- bag play -> captions, answers to
questions, and a report."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_captions_every_keyframe_and_writes_the_report(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "clip_vlm_core.demo", "--out", str(tmp_path / "demo"), "--bags", str(tmp_path / "bags"),
         "--samples", "6", "--rate", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    for step in range(1, 9):
        assert f"[{step}/8 " in out
    assert "6/6 keyframes captioned" in out
    assert len(re.findall(r"^\s+caption: ", out, flags=re.M)) == 6
    assert len(re.findall(r"^\s+answer: .* truth: ", out, flags=re.M)) == 5 and "answers right" in out
    report = (tmp_path / "demo" / "report.html").read_text()
    assert report.count("<b>caption</b>") == 6 and "pairs_made" in report and "questions_answered" in report
    assert (tmp_path / "bags" / "scene-0061" / "metadata.yaml").exists()


def test_demo_failure_names_the_step(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "clip_vlm_core.demo", "--out", str(tmp_path / "demo"), "--bags", str(tmp_path / "bags"),
         "--samples", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "demo failed at step '1/8 synthesise a nuScenes scene'" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_never_replaces_a_bag_it_did_not_write(tmp_path):
    """The synthetic scene borrows a real nuScenes scene name: a user's own bags/scene-0061 stays."""
    theirs = tmp_path / "bags" / "scene-0061"
    theirs.mkdir(parents=True)
    (theirs / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 8}\n")
    (theirs / "scene-0061_0.mcap").write_bytes(b"a real drive")
    result = subprocess.run(
        [sys.executable, "-m", "clip_vlm_core.demo", "--out", str(tmp_path / "demo"), "--bags", str(tmp_path / "bags"),
         "--samples", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert f"demo failed at step '2/8 convert it to a rosbag2 bag': {theirs} exists and was not written by an " \
           "earlier demo; move it, or give the demo another folder with --bags DIR" in result.stderr
    assert (theirs / "scene-0061_0.mcap").read_bytes() == b"a real drive"
    assert sorted(p.name for p in theirs.iterdir()) == ["metadata.yaml", "scene-0061_0.mcap"]
