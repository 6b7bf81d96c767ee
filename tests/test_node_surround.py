"""The caption node with a model that sees six cameras and a history: real rclpy and Fast DDS between processes.

The model is a tiny untrained surround checkpoint (front and back full views, the four side cameras as
context views, 2 past frames 0.25 s apart) built from the real tiny classes: these tests check plumbing, not
captions. The probe (tests/helpers/node_probe.py) publishes all six views and reports captions and
/diagnostics.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
from cpu_load import cpu_bound_processes
from helper_exit import assert_helper_done
from test_node import NODE, count, pairs_accounted, probe_command, ros_args, ros_env, start_node, stop_node

from clip_vlm_core.errors import UserError
from clip_vlm_core.stream import validate_parameters

pytestmark = [pytest.mark.skipif(not NODE.exists(), reason="caption_node is not installed: run `make venv`"),
              pytest.mark.ros]

SIDES = ("CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
SIX = ("CAM_FRONT", "CAM_BACK", *SIDES)
STRIDE_S = 0.25
PAST = 2


@pytest.fixture(scope="module")
def surround_checkpoint(tiny_base) -> Path:
    """Beside the tiny base models (as conftest's untrained_checkpoint), so the node may read them."""
    import torch

    from clip_vlm_core.model import SceneCaptioner
    from clip_vlm_core.model.tiny import tiny_captioner_config

    config = dataclasses.replace(tiny_captioner_config(tiny_base), context_views=SIDES, history_frames=PAST,
                                 history_stride_s=STRIDE_S)
    path = tiny_base["qwen"].parent.parent / "surround_node"
    torch.manual_seed(0)
    return SceneCaptioner.build(config, device="cpu").save_pretrained(path, base_models_relative_to=path)


@pytest.fixture(scope="module")
def surround_node(surround_checkpoint):
    env = ros_env()
    # batch_size 1: each caption's past frames are captions already made (a batch's own frames are not yet kept).
    proc = start_node({"model": str(surround_checkpoint), "views": list(SIX), "policy": "all", "rate_hz": 50.0,
                       "batch_size": 1, "queue_size": 64, "max_age_ms": 60000.0, "view_timeout_s": 1.0,
                       "max_new_tokens": 2}, env)
    yield proc, env
    stop_node(proc)


def run_probe(env: dict[str, str], tmp_path: Path, plan: list[dict], views=SIX) -> dict:
    import json
    import time

    out = tmp_path / f"probe-{time.monotonic_ns()}.json"
    command = [*probe_command(out, plan), "--views", ",".join(views)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert_helper_done(done.returncode, done.stderr, "the probe")
    return json.loads(out.read_text())


def test_six_views_pair_by_stamp_and_the_history_fills_from_kept_clip_tokens(surround_node, tmp_path):
    _, env = surround_node
    result = run_probe(env, tmp_path, [
        # Until two strides of frames have been captioned the history is short: said, and captioned without it.
        {"kind": "pairs", "count": 1, "rate": 1 / STRIDE_S, "skew_ms": 4.0},
        {"kind": "wait_captions", "count": 1, "timeout": 60.0},
        {"kind": "wait_diagnostics", "key": "history_captions_short", "value": "1", "timeout": 5.0},
        {"kind": "pairs", "count": 7, "rate": 1 / STRIDE_S, "skew_ms": 4.0},  # the six views' stamps 0-20 ms apart
        {"kind": "wait_captions", "count": 8, "timeout": 60.0},
        {"kind": "wait_at_rest", "timeout": 30.0},
    ])
    # Every six-view set became one pair, stamped with the front view's stamp, and was captioned.
    assert [m["stamp_ns"] for m in result["markers"]] == result["sent_pairs"]
    d = result["diagnostics"]
    assert int(d["pairs_made"]) == 8 == pairs_accounted(d)
    assert all(count(result, f"{view}.dropped") == 0 for view in SIX)
    # The first caption had no history, and /diagnostics said so as a warning.
    first = result["snapshots"][0]
    assert first["values"]["history"] == f"0 of {PAST} past frames per view" and first["level"] == 1
    assert "history not full yet: 0 of 2 past frames per view" in first["message"]
    # Later captions had a full history, and the warning is gone (the cameras, silent by now, are warned of).
    assert d["history"] == f"{PAST} of {PAST} past frames per view", d
    assert "history not full" not in result["diagnostics_message"]
    captions, reused, missing = int(d["captions"]), int(d["history_frames_reused"]), int(d["history_frames_missing"])
    assert captions == 8 and reused + missing == captions * len(SIX) * PAST
    # The first pair came alone, a pause before the others: full from the fourth caption on (0.25 s apart).
    assert reused >= (captions - 3) * len(SIX) * PAST
    # Each frame went through CLIP once, when it was captioned: past frames were never encoded again (a
    # missing one is a masked blank, encoded in its slot).
    assert int(d["clip_frames_encoded"]) == captions * len(SIX) + missing


@pytest.mark.slow
def test_six_views_pair_and_keep_their_history_beside_eight_cpu_bound_processes(surround_checkpoint, tmp_path):
    """A real car's computer is busy: beside eight CPU-bound processes every six-view set still becomes one pair,
    each is captioned, and past frames still come from the kept CLIP tokens."""
    with cpu_bound_processes(8):
        env = ros_env()
        proc = start_node({"model": str(surround_checkpoint), "views": list(SIX), "policy": "all", "rate_hz": 50.0,
                           "batch_size": 1, "queue_size": 64, "max_age_ms": 60000.0, "view_timeout_s": 5.0,
                           "max_new_tokens": 2}, env)
        try:
            result = run_probe(env, tmp_path, [
                {"kind": "pairs", "count": 12, "rate": 1 / STRIDE_S, "skew_ms": 4.0},
                {"kind": "wait_captions", "count": 12, "timeout": 150.0},
                {"kind": "wait_at_rest", "timeout": 60.0},
            ])
        finally:
            stop_node(proc)
    assert [m["stamp_ns"] for m in result["markers"]] == result["sent_pairs"]
    d = result["diagnostics"]
    assert int(d["pairs_made"]) == 12 == pairs_accounted(d) == int(d["captions"])
    assert all(count(result, f"{view}.dropped") == 0 for view in SIX)
    assert d["history"] == f"{PAST} of {PAST} past frames per view", d
    reused, missing = int(d["history_frames_reused"]), int(d["history_frames_missing"])
    assert reused + missing == 12 * len(SIX) * PAST and reused >= (12 - 3) * len(SIX) * PAST
    assert int(d["clip_frames_encoded"]) == 12 * len(SIX) + missing


def test_a_silent_context_view_holds_back_the_pair_like_a_full_one(surround_node, tmp_path):
    _, env = surround_node
    result = run_probe(env, tmp_path, [
        {"kind": "pairs", "count": 12, "rate": 10.0, "skip": ["CAM_BACK_LEFT"]},
        {"kind": "sleep", "seconds": 1.2},
    ])
    assert result["markers"] == []  # caption_missing_views is off: no caption without every view
    assert result["diagnostics_level"] == 1 and "CAM_BACK_LEFT" in result["diagnostics_message"]
    # The other views' frames arrived (counts are the node's since it started, shared with other tests).
    assert count(result, "CAM_BACK_RIGHT.received") - count(result, "CAM_BACK_LEFT.received") == 12


@pytest.mark.parametrize("views, fragment", [
    (["CAM_FRONT", "CAM_BACK"], "its context views ['CAM_FRONT_LEFT'"),
    (["CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_SIDE"], "does not match"),
])
def test_views_that_are_not_the_model_s_full_and_context_views_are_one_clear_error(surround_checkpoint, views,
                                                                                   fragment):
    done = subprocess.run([str(NODE), *ros_args({"model": str(surround_checkpoint), "views": views})],
                          env=ros_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and fragment in done.stderr, done.stderr[-1000:]
    assert done.stderr.startswith("caption_node: error: ") and "Traceback" not in done.stderr


@pytest.mark.parametrize("views", [[*SIX, "CAM_ROOF"], [f"CAM_{n}" for n in range(10)]])
def test_more_than_six_views_are_refused(views):
    with pytest.raises(UserError, match=f"parameter views names {len(views)} views; the node subscribes to at most 6"):
        validate_parameters({"views": views})
