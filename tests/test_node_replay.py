"""A 2018 bag looping into a caption node in namespace car1 on sim time, all over real DDS.

One replay, several checks: `clip-vlm bag play --loop --clock --remap` feeds /car1/CAM_*; the node,
started with `-r __ns:=/car1 -p use_sim_time:=true`, is slower than the bag (a backlog builds), and
every loop sends the stamps back 0.8 s. The probe (tests/helpers/node_probe.py) listens in /car1 and
waits until the node is at rest after the player stopped.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from helper_exit import assert_helper_done
from test_node import NODE, pairs_accounted, probe_command, ros_env, start_node, stop_node, write_camera_bag

FRAMES, SPACING_NS = 8, 100_000_000  # 0.8 s of bag per loop, 10 pairs a second
START_NS = 1_532_402_927 * 10**9  # July 2018, as nuScenes' stamps
PLAY_S = 5.0  # about six loops

pytestmark = [pytest.mark.skipif(not NODE.exists(), reason="caption_node is not installed: run `make venv`"),
              pytest.mark.slow]
pytestmark = [*pytestmark, pytest.mark.ros]  # `make test` runs these under Kilted and Jazzy


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("replay")
    bag = write_camera_bag(tmp / "bag", FRAMES, START_NS, SPACING_NS)
    env = ros_env()
    # 4 ticks a second of 2 pairs: 8 captions a second at most against 10 pairs a second.
    node = start_node({"policy": "all", "rate_hz": 4.0, "batch_size": 2, "queue_size": 64, "max_age_ms": 60000.0,
                       "max_new_tokens": 4, "use_sim_time": True}, env, "-r", "__ns:=/car1")
    out = tmp / "probe.json"
    plan = [{"kind": "wait_captions", "count": 2 * FRAMES, "timeout": 90.0}, {"kind": "wait_at_rest", "timeout": 60.0}]
    probe = subprocess.Popen(probe_command(out, plan, namespace="/car1"), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    remaps = [f"/{v}/image_raw/compressed:=/car1/{v}/image_raw/compressed" for v in ("CAM_FRONT", "CAM_BACK")]
    # A generous wait: the node may take long to load here; the default (10 s) is for a node already up.
    player = subprocess.Popen([sys.executable, "-m", "clip_vlm_core", "bag", "play", str(bag), "--loop", "--clock",
                               "--wait-for-subscribers", "90",
                               "--remap", *remaps], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        player_log = _read_until(player.stderr, ": playing", timeout=90.0)  # it waited for the node
        time.sleep(PLAY_S)
        player.send_signal(signal.SIGINT)
        player_out, player_err = player.communicate(timeout=30)
        _, probe_err = probe.communicate(timeout=180)
        assert_helper_done(probe.returncode, probe_err, "the probe")
    finally:
        for proc in (player, probe):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stop_node(node)
    return json.loads(out.read_text()) | {"node_log": node.stdout.read(), "player_log": player_log + player_err,
                                          "player_out": player_out}


def _read_until(stream, marker: str, timeout: float) -> str:
    lines, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return "".join(lines)
    raise AssertionError(f"{marker!r} never came: {''.join(lines)[-2000:]}")


def test_the_player_waited_for_the_node_and_looped_until_ctrl_c(replay):
    assert "subscribers on /car1/CAM_BACK/image_raw/compressed, /car1/CAM_FRONT/image_raw/compressed" in replay["player_log"]
    assert "(interrupted)" in replay["player_out"]


def test_a_node_in_a_namespace_hears_its_cameras_there_and_publishes_there(replay):
    assert "captioning /car1/CAM_FRONT/image_raw/compressed, /car1/CAM_BACK/image_raw/compressed" in replay["node_log"]
    stamps = {m["stamp_ns"] for m in replay["markers"]}  # received on /car1/scene_caption/marker
    assert len(replay["markers"]) >= 2 * FRAMES
    assert stamps <= {START_NS + i * SPACING_NS for i in range(FRAMES)}  # the bag's own stamps


def test_looping_replay_every_pair_is_captioned_or_dropped_for_a_named_reason(replay):
    diagnostics = replay["diagnostics"]
    assert int(diagnostics["pairing_resets"]) >= 3 and int(diagnostics["pairs_made"]) >= 3 * FRAMES
    assert diagnostics["queue_depth"] == "0" and diagnostics["pairs_in_flight"] == "0"
    assert int(diagnostics["pairs_made"]) == pairs_accounted(diagnostics), diagnostics


def test_backwards_stamp_warning_is_rate_limited(replay):
    """Said once, then at most once in 10 s with the number of repeats (the run lasts under 20 s)."""
    resets = int(replay["diagnostics"]["pairing_resets"])
    lines = [line for line in replay["node_log"].splitlines() if "stamp went back" in line]
    assert resets >= 3 and 1 <= len(lines) <= 2, (resets, replay["node_log"][-3000:])
    assert all("more in the last 10 s" in line or "more like it in the last 10 s" in line for line in lines[1:]), lines


def test_source_latency_is_measured_in_bag_time_under_sim_time(replay):
    diagnostics = replay["diagnostics"]
    assert "source_clock_offset" not in diagnostics  # no stamp was years away from the node's (sim) clock
    # Tenths of a second of bag time (one tick, one batch, a backlog), not 8 years.
    assert abs(float(diagnostics["latency_source_to_publish_p50_ms"])) < 5000.0
