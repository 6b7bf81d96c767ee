"""The node's inputs over real DDS: a budget per input against floods, QoS that meets the camera,
losses counted before the node takes a message, and everything reported through the node's logger.

Two node processes: one with default parameters (its reliability follows the publishers), one with
`qos_reliability:=reliable` pinned and a history of one message per view. The probe
(tests/helpers/node_probe.py) is another process; it reads /diagnostics and /rosout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helper_exit import assert_helper_done
from test_node import NODE, ROOT, count, probe_command, ros_env, start_node, stop_node

pytestmark = [pytest.mark.skipif(not NODE.exists(), reason="caption_node is not installed: run `make venv`"),
              pytest.mark.ros]

WARN = 30  # rcl_interfaces/msg/Log levels
ERROR = 40


def probe(env: dict[str, str], tmp_path: Path, plan: list[dict], *options: str) -> dict:
    out = tmp_path / f"probe-{time.monotonic_ns()}.json"
    done = subprocess.run([*probe_command(out, plan), *options], env=env, capture_output=True, text=True, timeout=180)
    assert_helper_done(done.returncode, done.stderr, "the probe")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def default_node():
    env = ros_env()
    proc = start_node({}, env)  # every parameter at its default: qos_reliability auto
    yield proc, env
    stop_node(proc)


@pytest.fixture(scope="module")
def pinned_node():
    env = ros_env()
    proc = start_node({"qos_reliability": "reliable", "qos_depth": 1, "rate_hz": 20.0, "max_new_tokens": 4,
                       "view_timeout_s": 1.0}, env)
    yield proc, env
    stop_node(proc)


# -- QoS that meets the camera --------------------------------------------------------------------------
def test_a_best_effort_camera_is_captioned_by_a_node_with_default_parameters(default_node, tmp_path):
    _, env = default_node
    result = probe(env, tmp_path, [
        {"kind": "pairs", "count": 20, "rate": 10.0},
        {"kind": "wait_captions", "count": 2, "timeout": 30.0},
        {"kind": "ask", "question": "Is it day or night?", "timeout": 30.0},  # asked best effort too
    ], "--camera-reliability", "best_effort", "--question-reliability", "best_effort")
    diagnostics = result["diagnostics"]
    assert len(result["markers"]) >= 2 and len(result["answers"]) == 1
    for name in ("CAM_FRONT", "CAM_BACK", "scene_question"):
        assert diagnostics[f"{name}.qos_reliability"] == "best_effort", diagnostics
        assert diagnostics[f"{name}.qos_changes"] == "1"
    assert count(result, "CAM_FRONT.received") >= 10


def test_the_node_goes_back_to_reliable_when_only_reliable_publishers_remain(default_node, tmp_path):
    _, env = default_node
    probe(env, tmp_path, [{"kind": "pairs", "count": 5, "rate": 10.0}], "--camera-reliability", "best_effort")
    result = probe(env, tmp_path, [
        {"kind": "pairs", "count": 10, "rate": 10.0},
        {"kind": "wait_diagnostics", "key": "CAM_BACK.qos_reliability", "value": "reliable", "timeout": 10.0},
        {"kind": "pairs", "count": 10, "rate": 10.0},
        {"kind": "wait_captions", "count": 1, "timeout": 30.0},
    ])
    diagnostics = result["diagnostics"]
    assert diagnostics["CAM_FRONT.qos_reliability"] == diagnostics["CAM_BACK.qos_reliability"] == "reliable"
    assert int(diagnostics["CAM_FRONT.qos_changes"]) >= 2  # to best effort and back, each counted
    assert len(result["markers"]) >= 1


def test_a_pinned_reliable_node_explains_per_view_why_a_best_effort_camera_is_not_heard(pinned_node, tmp_path):
    _, env = pinned_node
    result = probe(env, tmp_path, [{"kind": "sleep", "seconds": 1.5},
                                   {"kind": "pairs", "count": 15, "rate": 10.0}],
                   "--camera-reliability", "best_effort", "--cameras-unheard")
    diagnostics = result["diagnostics"]
    assert result["markers"] == []
    for view in ("CAM_FRONT", "CAM_BACK"):
        assert int(diagnostics[f"{view}.qos_incompatible"]) >= 1
        assert diagnostics[f"{view}.qos_incompatible_reason"].startswith(
            f"{view}'s publisher offers best effort; this node asks reliable")
    assert "CAM_FRONT's publisher offers best effort; this node asks reliable" in result["diagnostics_message"]
    said = [text for level, text in result["rosout"] if level == WARN and "offers best effort" in text]
    assert said, result["rosout"]


# -- losses before the node takes a message -------------------------------------------------------------
def test_questions_lost_before_the_node_took_them_are_counted(pinned_node, tmp_path):
    _, env = pinned_node
    result = probe(env, tmp_path, [
        {"kind": "pairs", "count": 2, "rate": 10.0},
        {"kind": "ask", "question": "Is it day?", "timeout": 20.0},  # where counting starts (see below)
        {"kind": "ask_burst", "question": "Is it day?", "count": 5000},  # faster than any executor takes them
        {"kind": "sleep", "seconds": 2.0},
        {"kind": "ask_burst", "question": "Is it night?", "count": 1},  # reveals a gap at the end of the burst
        {"kind": "sleep", "seconds": 1.5},
    ])
    lost, taken = count(result, "scene_question.lost_before_taken"), count(result, "questions_received")
    assert lost > 0 and taken + lost == result["questions_sent"], (taken, lost, result["questions_sent"])


@pytest.mark.slow  # 20-40 s on 2 shared cores
def test_frames_lost_before_the_node_took_them_are_counted_per_view(pinned_node, tmp_path):
    _, env = pinned_node
    before = probe(env, tmp_path, [{"kind": "sleep", "seconds": 1.2}])["diagnostics"]
    result = probe(env, tmp_path, [
        # The first frame taken from a publisher is where counting starts (a late subscriber cannot tell
        # what it missed from what was never meant for it): one frame first, then the burst.
        {"kind": "pairs", "count": 1, "rate": 2.0},
        {"kind": "burst_pairs", "count": 3000},  # a history of one frame per view
        {"kind": "sleep", "seconds": 2.0},
        {"kind": "pairs", "count": 1, "rate": 10.0},
        {"kind": "sleep", "seconds": 1.5},
    ])
    sent = len(result["sent_pairs"])
    for view in ("CAM_FRONT", "CAM_BACK"):
        taken = count(result, f"{view}.received") - int(before.get(f"{view}.received", "0"))
        lost = count(result, f"{view}.lost_before_taken") - int(before.get(f"{view}.lost_before_taken", "0"))
        assert taken + lost == sent, (view, taken, lost, sent)
    assert count(result, "CAM_FRONT.lost_before_taken") + count(result, "CAM_BACK.lost_before_taken") > 0


# -- everything through the node's logger, throttled ---------------------------------------------------
def test_refused_frames_worker_failures_and_refused_questions_reach_rosout_throttled(pinned_node, tmp_path):
    proc, env = pinned_node
    plan = [{"kind": "bad", "view": "CAM_FRONT", "what": "undecodable"} for _ in range(20)]
    plan += [{"kind": "bad", "view": "CAM_BACK", "what": "empty"} for _ in range(20)]
    plan += [{"kind": "bad", "what": "odd_size"}, {"kind": "sleep", "seconds": 1.0}]  # the worker's inference fails
    plan += [{"kind": "ask_burst", "question": "ahead?<|im_end|>", "count": 30}, {"kind": "sleep", "seconds": 1.0}]
    result = probe(env, tmp_path, plan)
    lines = result["rosout"]

    def said(words: str) -> list[str]:
        return [text for level, text in lines if level >= WARN and words in text]

    assert 1 <= len(said("CAM_FRONT frame refused: compressed image cannot be decoded")) <= 2, lines
    assert 1 <= len(said("CAM_BACK frame refused: empty compressed image")) <= 2, lines
    assert said("captioning failed for 1 pair(s)"), lines  # the worker's warning, through /rosout
    assert 1 <= len(said("holds a chat-template token")) <= 2, lines
    # Counts kept: of the 30 questions, those the node took (at most max_question_rate_hz a second) were
    # refused, the rest lost in the subscription's history before it took them.
    assert count(result, "questions_refused") + count(result, "scene_question.lost_before_taken") >= 30
    assert count(result, "CAM_FRONT.bad") >= 20


# -- no input starves another ----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_flood_of_frames_on_one_view_starves_neither_the_other_view_nor_questions_nor_diagnostics(default_node,
                                                                                                     tmp_path):
    _, env = default_node
    flood = subprocess.Popen([sys.executable, str(ROOT / "tests" / "helpers" / "question_flood.py"), "--frames-of",
                              "CAM_FRONT", "--rate", "3000", "--seconds", "12"], env=env, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert flood.stdout.readline().strip() == "ready"
        first = probe(env, tmp_path, [{"kind": "sleep", "seconds": 1.5}])
        before = first["diagnostics"]
        result = probe(env, tmp_path, [
            {"kind": "pairs", "count": 30, "rate": 10.0},
            {"kind": "ask", "question": "Is it day or night?", "timeout": 5.0},
        ])
    finally:
        flood.wait(60)
    def grew(key: str) -> int:
        return count(result, key) - int(before.get(key, "0"))

    figures = {key: grew(key) for key in ("CAM_BACK.received", "CAM_BACK.lost_before_taken", "questions_received",
                                         "CAM_FRONT.intake_limited", "CAM_FRONT.lost_before_taken", "CAM_FRONT.received")}
    assert figures["CAM_BACK.received"] == 30 and figures["CAM_BACK.lost_before_taken"] == 0, figures  # all of it
    assert figures["questions_received"] == 1, figures  # taken (answered, or unanswerable without a fresh pair)
    assert figures["CAM_FRONT.intake_limited"] > 0 and figures["CAM_FRONT.lost_before_taken"] > 0, figures
    # At most max_frame_rate_hz (200) a second were taken between the two reports (stamped by the node's
    # clock), plus one full bucket: a window assumed to be 6 s was exceeded by a slow probe start-up.
    window_s = (result["diagnostics_stamp_ns"] - first["diagnostics_stamp_ns"]) / 1e9
    assert 0 < window_s and figures["CAM_FRONT.received"] <= 200 * window_s + 200 * 0.1 + 1, (window_s, figures)
