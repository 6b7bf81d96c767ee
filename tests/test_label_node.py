"""`clip-vlm label` against the caption node: the same bag and model give the same pairs and the same captions as
the node captioning the bag's replay under policy `all` with no pair dropped, at the same batch size; and a
labelled bag's marker is the node's marker."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helper_exit import assert_helper_done
from intact import REPO
from test_node import NODE, probe_command, ros_env, start_node, stop_node

pytestmark = [pytest.mark.skipif(not NODE.exists(), reason="caption_node is not installed: run `make venv`"),
              pytest.mark.ros]

SETTINGS = {"max_new_tokens": 24, "batch_size": 4}


@pytest.mark.slow
def test_label_captions_equal_the_nodes_for_the_same_bag_and_model(scene_bags, tmp_path):
    bag = scene_bags[0]
    env = ros_env()
    node = start_node({"policy": "all", "rate_hz": 50.0, "queue_size": 64, "max_age_ms": 600000.0,
                       "view_timeout_s": 60.0, **SETTINGS}, env)
    out = tmp_path / "probe.json"
    try:
        probe = subprocess.Popen(probe_command(out, [{"kind": "wait_captions", "count": 10, "timeout": 120.0},
                                                     {"kind": "wait_at_rest", "timeout": 60.0}]),
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        played = subprocess.run([sys.executable, "-m", "clip_vlm_core", "bag", "play", str(bag),
                                 "--wait-for-subscribers", "120", "--topics", "/CAM_FRONT/image_raw/compressed",
                                 "/CAM_BACK/image_raw/compressed"], env=env, capture_output=True, text=True, timeout=300)
        assert played.returncode == 0, played.stderr[-2000:]
        _, probe_err = probe.communicate(timeout=300)
        assert_helper_done(probe.returncode, probe_err, "the probe")
    finally:
        stop_node(node)
    result = json.loads(out.read_text())
    diagnostics = result["diagnostics"]
    assert int(diagnostics["pairs_made"]) == int(diagnostics["captions"]) == 10  # every pair captioned ...
    assert all(int(v) == 0 for k, v in diagnostics.items() if k.startswith("pairs_dropped_"))  # ... none dropped
    by_node = {marker["stamp_ns"]: marker["text"] for marker in result["markers"]}

    labels = tmp_path / "labels"
    done = subprocess.run([sys.executable, "-m", "clip_vlm_core", "label", str(bag), "--out", str(labels),
                           "--workers", "1", "--batch-size", str(SETTINGS["batch_size"]),
                           "--max-new-tokens", str(SETTINGS["max_new_tokens"])],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    import pyarrow.parquet as pq

    rows = pq.ParquetDataset(sorted(labels.glob("part-*.parquet"))).read().to_pylist()
    by_label = {row["stamp_ns"]: row["caption"] for row in rows}
    assert by_label == by_node  # the same pairs (by stamp), the same text


def test_a_labelled_bags_marker_is_the_nodes_marker():
    """Built with rosbags (the core imports no rclpy), the same message as the node's, field for field."""
    sys.path.insert(0, str(REPO / "ros2_ws" / "src" / "clip_vlm"))
    from clip_vlm.messages import caption_marker
    from rclpy.serialization import serialize_message

    from clip_vlm_core.bags import messages as m
    from clip_vlm_core.label.write_bags import marker

    for text, stamp, frame in [("It is night. A red bus is ahead.", 1_532_402_927_624_460_000, "CAM_FRONT"),
                               ("x", 5, ""), ("Ünïcode ✓", 2**40, "base_link")]:
        node = m.deserialize(serialize_message(caption_marker(text, stamp, frame)), "visualization_msgs/msg/Marker")
        # Re-serialized by one library, so alignment padding (left unset by rclpy) cannot differ.
        assert bytes(m.serialize(node)) == bytes(marker(text, stamp, frame))


@pytest.mark.slow
def test_a_search_match_replayed_with_start_offset_plays_its_own_caption_first(ray_local, scene_bags, tmp_path,
                                                                                monkeypatch):
    """label -> search -> bag play --start-offset: the offset search prints lands on the match's caption."""
    import random

    from clip_vlm_core.bags.play import play_bag
    from clip_vlm_core.config import DecodingConfig
    from clip_vlm_core.label import run
    from clip_vlm_core.label.labeller import LabelSettings
    from clip_vlm_core.label.search import search
    from clip_vlm_core.label.write_bags import CAPTION_TOPIC

    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randint(1, 200)))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    run.label([str(scene_bags[1])], tmp_path / "labels", LabelSettings(decoding=DecodingConfig(max_new_tokens=8)),
              write_bags=tmp_path / "labelled", workers=1, progress=False, say=lambda _: None)
    hits = search(tmp_path / "labels", ["it"])
    assert len(hits) == 10
    for hit in (hits[1], hits[5], hits[-1]):
        played: list[int] = []
        play_bag(tmp_path / "labelled" / scene_bags[1].name, rate=1000.0, topics=[CAPTION_TOPIC],
                 wait_for_subscribers=0, start_offset=float(format_offset(hit)),
                 on_published=lambda _, ns: played.append(ns))  # noqa: B023
        assert played[0] == hit["log_time_ns"]  # the first caption played is the match's


def format_offset(hit: dict) -> str:
    """The offset as `clip-vlm search` prints it."""
    from clip_vlm_core.label.search import _offset

    return _offset(hit)
