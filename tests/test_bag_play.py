"""`clip-vlm bag play`: a subscriber in another process receives what the bag holds, over real DDS."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helper_exit import assert_helper_done, warn_if_teardown_hung
from rosbags.rosbag2 import StoragePlugin, Writer

from clip_vlm_core.bags import messages as m
from clip_vlm_core.bags.interfaces import UnplayableType, message_class
from clip_vlm_core.bags.play import play_bag
from clip_vlm_core.teardown import WATCHDOG_LINE

pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros  # `make test` runs these under Kilted and Jazzy

SUBSCRIBER = Path(__file__).parent / "helpers" / "bag_subscriber.py"
SECOND = 1_000_000_000
START = 1_700_000_000 * SECOND


def ros_env() -> dict[str, str]:
    """A private DDS domain on this host, so tests running side by side do not hear each other."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return env


def write_bag(path: Path, frames: int, spacing_ns: int) -> Path:
    """A small bag like a converted one: latched mounts first, then images, camera info and captions."""
    writer = Writer(path, version=8, storage_plugin=StoragePlugin.MCAP)
    writer.open()

    def connect(topic: str, msgtype: str, qos=m.STREAM_QOS):
        return writer.add_connection(topic, msgtype, typestore=m.TYPESTORE, offered_qos_profiles=[qos])

    latched = connect("/mounts", m.STRING, m.LATCHED_QOS)
    image = connect("/CAM_FRONT/image_raw/compressed", m.COMPRESSED_IMAGE)
    info = connect("/CAM_FRONT/camera_info", m.CAMERA_INFO)
    caption = connect("/scene_caption_gt", m.STRING)
    tf = connect("/tf", m.TF_MESSAGE)
    writer.write(latched, START, m.string("base_link -> CAM_FRONT"))
    for i in range(frames):
        t = START + i * spacing_ns
        writer.write(tf, t, m.tf_message([m.transform(t, "map", "base_link", (i, 0, 0), (1, 0, 0, 0))]))
        writer.write(info, t, m.camera_info(t, "CAM_FRONT", [[500, 0, 320], [0, 500, 240], [0, 0, 1]], 640, 480))
        writer.write(image, t, m.compressed_image(t, "CAM_FRONT", b"\xff\xd8" + bytes(1000) + b"\xff\xd9"))
        writer.write(caption, t, m.string(f"frame {i}"))
    writer.close()
    return path


def start_subscriber(env: dict[str, str], seconds: float, *specs: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(SUBSCRIBER), str(seconds), *specs], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def subscriber_counts(proc: subprocess.Popen) -> dict[str, int]:
    out, err = proc.communicate(timeout=60)
    assert_helper_done(proc.returncode, err, "the subscriber")
    return json.loads(out.strip().splitlines()[-1])


def play_cli(bag: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    played = subprocess.run([sys.executable, "-m", "clip_vlm_core", "bag", "play", str(bag), *extra],
                            env=env, capture_output=True, text=True, timeout=120)
    warn_if_teardown_hung(played.stderr, "the player")
    return played


@pytest.mark.slow
def test_play_delivers_every_message_to_a_subscriber_in_another_process(tmp_path):
    bag = write_bag(tmp_path / "bag", frames=5, spacing_ns=SECOND // 10)
    env = ros_env()
    sub = start_subscriber(env, 30, "/CAM_FRONT/image_raw/compressed=sensor_msgs/msg/CompressedImage:5",
                           "/CAM_FRONT/camera_info=sensor_msgs/msg/CameraInfo:5",
                           "/scene_caption_gt=std_msgs/msg/String:5", "/mounts=std_msgs/msg/String:latched:1")
    # No --wait-for-subscribers: waiting for the subscriber is the default, so nothing is lost.
    played = play_cli(bag, env, "--rate", "2")
    assert played.returncode == 0, played.stderr
    assert subscriber_counts(sub) == {"/CAM_FRONT/image_raw/compressed": 5, "/CAM_FRONT/camera_info": 5,
                                      "/scene_caption_gt": 5, "/mounts": 1}
    # tf2_msgs has no rclpy wheel here: /tf is skipped and said so, the rest still plays.
    try:
        message_class(m.TF_MESSAGE)
    except UnplayableType:
        assert "skipping /tf" in played.stderr


@pytest.mark.slow
def test_start_paused_holds_the_first_message_until_a_line_on_stdin(tmp_path):
    bag = write_bag(tmp_path / "bag", frames=3, spacing_ns=SECOND // 10)
    env = ros_env()
    sub = start_subscriber(env, 60, "/scene_caption_gt=std_msgs/msg/String:3")
    player = subprocess.Popen([sys.executable, "-m", "clip_vlm_core", "bag", "play", str(bag), "--start-paused",
                               "--topics", "/scene_caption_gt"], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = []
    while not any("press Enter to play" in line for line in said):
        line = player.stderr.readline()
        assert line, f"the player ended without pausing: {''.join(said)}"
        said.append(line)
    time.sleep(2.0)  # 3 messages 0.1 s apart would all be out by now
    assert player.poll() is None, "the player did not wait for Enter"
    out, err = player.communicate(input="\n", timeout=60)
    assert player.returncode == 0, err
    warn_if_teardown_hung(err, "the player")
    assert "published 3 messages" in out
    assert subscriber_counts(sub) == {"/scene_caption_gt": 3}


@pytest.mark.slow
def test_with_nobody_listening_the_player_says_so_and_plays(tmp_path):
    bag = write_bag(tmp_path / "bag", frames=2, spacing_ns=SECOND // 10)
    played = play_cli(bag, ros_env(), "--wait-for-subscribers", "0.5")
    assert played.returncode == 0, played.stderr
    assert "no subscriber on any of the bag's" in played.stderr and "messages published" in played.stderr
    assert "published" in played.stdout


@pytest.mark.slow
def test_clock_carries_the_bags_time_while_it_plays(tmp_path):
    bag = write_bag(tmp_path / "bag", frames=10, spacing_ns=SECOND // 10)  # one second of bag time
    env = ros_env()
    sub = start_subscriber(env, 30, "/clock=rosgraph_msgs/msg/Clock:best_effort",
                           "/scene_caption_gt=std_msgs/msg/String:10")
    played = play_cli(bag, env, "--clock", "20")
    assert played.returncode == 0, played.stderr
    counts = subscriber_counts(sub)
    first, low, high = counts["/clock:clock_ns"]
    assert counts["/scene_caption_gt"] == 10
    assert 10 <= counts["/clock"] and START <= low <= first < high <= START + 9 * SECOND // 10


@pytest.mark.slow
def test_remap_publishes_a_bag_topic_under_another_name(tmp_path):
    bag = write_bag(tmp_path / "bag", frames=3, spacing_ns=SECOND // 10)
    env = ros_env()
    sub = start_subscriber(env, 30, "/car1/CAM_FRONT/image_raw/compressed=sensor_msgs/msg/CompressedImage:3")
    played = play_cli(bag, env, "--topics", "/CAM_FRONT/image_raw/compressed",
                      "--remap", "/CAM_FRONT/image_raw/compressed:=/car1/CAM_FRONT/image_raw/compressed")
    assert played.returncode == 0, played.stderr
    assert subscriber_counts(sub) == {"/car1/CAM_FRONT/image_raw/compressed": 3}


@pytest.mark.slow
def test_latched_topic_reaches_a_late_subscriber_and_ctrl_c_stops_the_player(tmp_path):
    # Two minutes of bag: Ctrl-C must arrive while it still plays, however slow the machine is today.
    bag = write_bag(tmp_path / "bag", frames=120, spacing_ns=SECOND)
    env = ros_env()
    player = subprocess.Popen([sys.executable, "-m", "clip_vlm_core", "bag", "play", str(bag), "--wait-for-subscribers", "0"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)  # the latched message went out at bag time 0, before anyone listened
        sub = start_subscriber(env, 20, "/mounts=std_msgs/msg/String:latched:1")
        assert subscriber_counts(sub) == {"/mounts": 1}
        player.send_signal(signal.SIGINT)
        out, err = player.communicate(timeout=30)
        assert player.returncode == 0, err
        assert "interrupted" in out
    finally:
        if player.poll() is None:
            player.kill()
            player.wait()


def test_play_api_reports_each_published_message_in_bag_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randint(1, 200)))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    bag = write_bag(tmp_path / "bag", frames=3, spacing_ns=SECOND // 100)
    seen: list[tuple[str, int]] = []
    summary = play_bag(bag, rate=10.0, topics=["/mounts", "/scene_caption_gt"], wait_for_subscribers=0,
                       on_published=lambda topic, t: seen.append((topic, t)))
    assert seen == [("/mounts", START)] + [("/scene_caption_gt", START + i * SECOND // 100) for i in range(3)]
    assert summary.published == 4 and not summary.interrupted


def test_the_summary_is_handed_over_before_the_player_leaves_ros2(tmp_path, monkeypatch):
    import rclpy

    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randint(1, 200)))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    bag = write_bag(tmp_path / "bag", frames=2, spacing_ns=SECOND // 100)
    handed: list[tuple[int, int, bool]] = []

    def on_done(summary) -> None:  # the player's node is still up: it is the only one named "clip_vlm_bag_player"
        from clip_vlm_core.bags.play import PLAYER_NODE

        probe_context = rclpy.Context()
        rclpy.init(args=[], context=probe_context)
        probe = rclpy.create_node("probe", context=probe_context)
        deadline = time.monotonic() + 10
        seen = False
        while not seen and time.monotonic() < deadline:
            seen = PLAYER_NODE in probe.get_node_names()
            time.sleep(0.05)
        probe.destroy_node()
        rclpy.shutdown(context=probe_context)
        handed.append((summary.published, summary.expected, seen))

    summary = play_bag(bag, rate=10.0, topics=["/scene_caption_gt"], wait_for_subscribers=0, on_done=on_done)
    assert handed == [(2, 2, True)] and summary.published == 2


# The hang the teardown watchdog exists for, played by a destroy_node that holds the GIL (as rclpy's does) and
# never returns; the limit is 1 s here instead of 10.
HUNG_PLAYER = """
import ctypes, sys
import rclpy.node
import clip_vlm_core.teardown
clip_vlm_core.teardown.TEARDOWN_LIMIT_S = 1.0
rclpy.node.Node.destroy_node = lambda self: ctypes.PyDLL(None).sleep(60)
from clip_vlm_core.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("extra, code, said", [
    (("--wait-for-subscribers", "0"), 0, "published 4 messages on 2 topics"),
    (("--wait-for-subscribers", "0", "--loop", "--rate", "0.001"), 0, "(interrupted)"),
])
def test_a_player_whose_dds_teardown_hangs_still_reports_and_exits_with_what_its_work_earned(tmp_path, extra, code,
                                                                                           said):
    bag = write_bag(tmp_path / "bag", frames=3, spacing_ns=SECOND // 100)
    started = time.monotonic()
    player = subprocess.Popen([sys.executable, "-c", HUNG_PLAYER, "bag", "play", str(bag), "--topics", "/mounts",
                               "/scene_caption_gt", *extra], env=ros_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    if "--loop" in extra:  # a bag played at a thousandth of its pace, until Ctrl-C
        time.sleep(3.0)
        player.send_signal(signal.SIGINT)
    out, err = player.communicate(timeout=60)
    assert player.returncode == code, err
    assert said in out
    assert err.count(WATCHDOG_LINE) == 1 and "<lambda>" in err  # the stacks, the hung call named
    assert time.monotonic() - started < 45  # not the 60 s the hang lasts


@pytest.mark.parametrize("offset_s, first", [(0.0, 0), (0.02, 2), (0.025, 3), (0.045, 5)])
def test_start_offset_skips_the_bags_first_seconds_and_plays_the_rest_in_time(tmp_path, monkeypatch, offset_s, first):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randint(1, 200)))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    bag = write_bag(tmp_path / "bag", frames=6, spacing_ns=SECOND // 100)  # frames at 0, 10, ..., 50 ms
    seen: list[tuple[str, int]] = []
    summary = play_bag(bag, rate=1.0, topics=["/mounts", "/scene_caption_gt"], wait_for_subscribers=0,
                       start_offset=offset_s, on_published=lambda topic, t: seen.append((topic, t)))
    expected = [("/scene_caption_gt", START + i * SECOND // 100) for i in range(first, 6)]
    assert seen == ([("/mounts", START)] if offset_s == 0 else []) + expected
    assert summary.published == len(seen) and summary.first_pass == {"/mounts": 1, "/scene_caption_gt": 6}


@pytest.mark.parametrize("offset", ["0.06", "-1", "nan"])
def test_a_start_offset_outside_the_bag_is_one_sentence(tmp_path, offset):
    bag = write_bag(tmp_path / "bag", frames=6, spacing_ns=SECOND // 100)
    played = play_cli(bag, ros_env(), "--start-offset", offset, "--wait-for-subscribers", "0")
    assert played.returncode == 2, played.stderr
    assert ("is past the end of bag" if offset == "0.06" else "must be a number of seconds, 0 or more") in played.stderr
    assert "published" not in played.stdout


def test_play_rejects_a_topic_the_bag_does_not_have(tmp_path):
    from clip_vlm_core.errors import UserError

    bag = write_bag(tmp_path / "bag", frames=1, spacing_ns=SECOND)
    with pytest.raises(UserError, match="/nope"):
        play_bag(bag, topics=["/nope"])


def test_a_malformed_remap_is_refused_naming_it(tmp_path):
    bag = write_bag(tmp_path / "bag", frames=1, spacing_ns=SECOND)
    played = play_cli(bag, ros_env(), "--remap", "/CAM_FRONT/image_raw/compressed")
    assert played.returncode == 2 and "--remap '/CAM_FRONT/image_raw/compressed' must read OLD:=NEW" in played.stderr
