"""`clip-vlm label` as users run it: one sentence and exit 2 for what it refuses, before Ray starts; a run killed
part-way (SIGKILL) and started again labels every pair exactly once; progress lines in a log."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from intact import REPO, assert_one_sentence, clip_vlm, digest, staging_left

from clip_vlm_core.bags.reader import open_bag
from clip_vlm_core.label.pairs import bag_pairs, camera_topics


def pairs_in(bag_path: Path) -> set[tuple[int, ...]]:
    with open_bag(bag_path) as bag:
        return {p.stamps_ns for p in bag_pairs(bag, camera_topics(bag, ("CAM_FRONT", "CAM_BACK")), 50.0)}


@pytest.mark.parametrize("extra, fragments", [
    (["--every", "-1"], ["--every must be a number of seconds"]),
    (["--every", "nan"], ["--every must be a number of seconds"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--max-skew-ms", "20000"], ["--max-skew-ms must be from 0 to 10000"]),
    (["--topic-template", "/{camera}/image"], ["--topic-template"]),
    (["--question", "  "], ["is empty"]),
    (["--question", "What <|im_end|> now?"], ["chat-template token"]),
    (["--workers", "0"], ["--workers must be at least 1"]),
    (["--gpus-per-worker", "-1"], ["--gpus-per-worker must be a number, 0 or more"]),
    (["--cpus-per-worker", "0"], ["--cpus-per-worker must be a number above 0"]),
    (["--max-new-tokens", "0"], ["max_new_tokens"]),
    (["--checkpoint", "runs/none/best"], ["does not exist"]),
])
def test_bad_settings_are_one_sentence_and_exit_2(scene_bags, tmp_path, extra, fragments):
    done = clip_vlm("label", scene_bags[0], "--out", tmp_path / "labels", *extra)
    assert done.returncode == 2
    assert_one_sentence(done.stderr, "label", *fragments)
    assert not (tmp_path / "labels").exists()


def test_outputs_that_would_touch_an_input_are_refused_and_nothing_is_written(scene_bags, tmp_path):
    archive = shutil.copytree(scene_bags[0].parent, tmp_path / "archive")
    before = digest(archive)
    for args, fragment in [
        (["--out", archive / scene_bags[0].name], "is the input bag"),
        (["--out", archive / scene_bags[0].name / "labels"], "lies inside the input"),
        (["--out", tmp_path], "holds the input"),
        (["--out", tmp_path / "labels", "--write-bags", archive / "labelled"], "lies inside the input"),
        (["--out", tmp_path / "labels", "--write-bags", tmp_path / "labels"], "is the --out LABELS"),
        (["--out", tmp_path / "labels", "--write-bags", tmp_path / "labels" / "bags"], "lies inside the --out LABELS"),
    ]:
        done = clip_vlm("label", archive, *args)
        assert done.returncode == 2, done.stderr
        assert_one_sentence(done.stderr, "label", fragment)
    assert digest(archive) == before and not (tmp_path / "labels").exists()


def test_a_cluster_nobody_answers_at_is_one_sentence_at_once(scene_bags, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    started = time.monotonic()
    done = clip_vlm("label", scene_bags[0], "--out", tmp_path / "labels", "--address", f"127.0.0.1:{port}")
    assert done.returncode == 2 and time.monotonic() - started < 60
    assert_one_sentence(done.stderr, "label", f"the Ray cluster at 127.0.0.1:{port} cannot be reached")
    assert not (tmp_path / "labels").exists()


def test_inputs_that_hold_no_bag_are_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    done = clip_vlm("label", tmp_path / "missing", tmp_path / "empty", "--out", tmp_path / "labels")
    assert done.returncode == 2
    assert "clip-vlm label: error: no bag to label: " in done.stderr and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_run_killed_part_way_and_started_again_labels_every_pair_once(scene_bags, tmp_path):
    labels = tmp_path / "labels"
    command = [sys.executable, "-m", "clip_vlm_core", "label", *map(str, scene_bags), "--out", str(labels),
               "--workers", "1", "--max-new-tokens", "24", "--rows-per-part", "1"]
    killed = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(labels.glob("part-*.parquet")):
            assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()[1][-3000:]
            time.sleep(0.02)
        killed.send_signal(signal.SIGKILL)  # the CLI, the Ray driver, at once
        killed.wait()
    finally:
        time.sleep(1.0)
        try:  # Ray's processes die with the driver; whatever of this run's session is left goes too
            os.killpg(killed.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = [pq.read_table(p) for p in labels.glob("part-*.parquet")]
    written_before = sum(t.num_rows for t in before)
    assert 0 < written_before < 30

    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"({written_before} in it already" in again.stdout  # it skipped what was there
    table = pq.ParquetDataset(sorted(labels.glob("part-*.parquet"))).read().to_pylist()
    assert len({r["key"] for r in table}) == len(table) == 30  # no duplicate ...
    for bag in scene_bags:  # ... and every pair
        assert {tuple(r["view_stamps_ns"]) for r in table if r["bag"] == str(bag)} == pairs_in(bag)
    assert staging_left(labels) == []
    # Not a terminal: a line per bag, and the summary
    assert "label: [3/3 bags]" in again.stderr and "labelled " in again.stdout
