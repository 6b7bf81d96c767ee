"""The caption rate with and without a flood of questions, measured in one run of one node.

    .venv/bin/python tests/helpers/flood_bench.py --rate 1000 --seconds 10 [--out result.json]
    PYTHONPATH=OLD:OLD/ros2_ws/src/clip_vlm .venv/bin/python tests/helpers/flood_bench.py --node-module clip_vlm.caption_node

Starts caption_node (policy latest, rate_hz 2, the default decoding), feeds it front/back JPEG pairs at
10 Hz throughout, counts the captions it publishes for `seconds` without questions, then for `seconds`
while tests/helpers/question_flood.py (another process) publishes `rate` questions a second, and prints
both rates, the question figures from /diagnostics and how many lines the node logged, with the machine.
`--node-module` runs another checkout's node (python -m MODULE) to measure code before a change.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from PIL import Image as PILImage
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from clip_vlm_core.teardown import bounded_teardown

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VIEWS = ("CAM_FRONT", "CAM_BACK")
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
PAIR_HZ = 10.0


def jpeg(colour: int) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (320, 180), (colour, 80, 255 - colour)).save(out, format="JPEG")
    return out.getvalue()


class Feeder:
    """Camera pairs in, caption markers and diagnostics out, over DDS."""

    def __init__(self) -> None:
        self.node = rclpy.create_node("flood_bench")
        self.pubs = {v: self.node.create_publisher(CompressedImage, f"/{v}/image_raw/compressed", RELIABLE) for v in VIEWS}
        self.captions: list[float] = []
        self.diagnostics: dict[str, str] = {}
        self.node.create_subscription(Marker, "/scene_caption/marker", lambda m: self.captions.append(time.monotonic()),
                                      RELIABLE)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.frames = [jpeg(c) for c in (30, 120, 210)]
        self.sent = 0

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("clip_vlm"):
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def feed(self, seconds: float) -> None:
        """Pairs at PAIR_HZ for `seconds`, spinning in between."""
        end, period = time.monotonic() + seconds, 1.0 / PAIR_HZ
        next_at = time.monotonic()
        while time.monotonic() < end:
            if time.monotonic() >= next_at:
                ns = time.time_ns()
                header = Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="cam")
                data = self.frames[self.sent % len(self.frames)]
                for view in VIEWS:
                    self.pubs[view].publish(CompressedImage(header=header, format="jpeg", data=data))
                self.sent += 1
                next_at += period
            rclpy.spin_once(self.node, timeout_sec=max(0.0, min(0.01, next_at - time.monotonic())))

    def wait_for_node(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(p.get_subscription_count() for p in self.pubs.values()) and self.diagnostics:
                return
            rclpy.spin_once(self.node, timeout_sec=0.1)
        raise SystemExit("caption_node did not come up")

    def captions_between(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.captions)


FRAME_KEYS = ("CAM_FRONT.received", "CAM_FRONT.lost_before_taken", "pairs_made", "captions", "questions_answered")


def _delta(before: dict, after: dict, key: str) -> int | None:
    if key not in before or key not in after:
        return None
    return int(after[key]) - int(before[key])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="questions a second in the flood")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--node-module", default="clip_vlm.caption_node")
    parser.add_argument("--out", help="also write the result here as JSON")
    args = parser.parse_args()
    env = {**os.environ, "ROS_DOMAIN_ID": str(random.randint(100, 200)), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "PYTHONUNBUFFERED": "1"}
    os.environ.update(env)
    node = subprocess.Popen([sys.executable, "-m", args.node_module, "--ros-args", "-p", "policy:=latest",
                             "-p", "rate_hz:=2.0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    flood = None
    rclpy.init()
    feeder = Feeder()
    try:
        feeder.wait_for_node(120.0)
        feeder.feed(3.0)  # warm-up
        quiet_start, before_quiet = time.monotonic(), dict(feeder.diagnostics)
        feeder.feed(args.seconds)
        quiet_end, after_quiet = time.monotonic(), dict(feeder.diagnostics)
        flood = subprocess.Popen([sys.executable, str(HERE / "question_flood.py"), "--rate", str(args.rate),
                                  "--seconds", str(args.seconds + 2.5)], env=env, stdout=subprocess.PIPE, text=True)
        assert flood.stdout.readline().strip() == "ready"
        feeder.feed(2.0)  # the flood reaches full strength
        flood_start, before_flood = time.monotonic(), dict(feeder.diagnostics)
        feeder.feed(args.seconds)
        flood_end, after_flood = time.monotonic(), dict(feeder.diagnostics)
        while flood.poll() is None:  # frames go on while the flood lasts: its questions stay answerable
            feeder.feed(0.2)
        sent = json.loads(flood.communicate(timeout=60)[0].strip().splitlines()[-1])
        feeder.feed(1.5)  # a last /diagnostics
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
        node.send_signal(signal.SIGINT)
        try:
            log = node.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            node.kill()
            log = node.communicate()[0]
        with bounded_teardown(exit_code=1):
            feeder.node.destroy_node()
            rclpy.try_shutdown()
    quiet = feeder.captions_between(quiet_start, quiet_end) / (quiet_end - quiet_start)
    flooded = feeder.captions_between(flood_start, flood_end) / (flood_end - flood_start)
    keys = ("questions_received", "questions_answered", "questions_dropped", "questions_unanswerable",
            "scene_question.lost_before_taken", "questions_refused")
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        "caption_rate_without_flood_hz": round(quiet, 2),
        "caption_rate_with_flood_hz": round(flooded, 2),
        "flood": {"rate": args.rate, **sent},
        "node": {k: feeder.diagnostics.get(k) for k in keys},
        "frames_per_phase": {phase: {k: _delta(a, b, k) for k in FRAME_KEYS}
                             for phase, a, b in (("quiet", before_quiet, after_quiet), ("flood", before_flood, after_flood))},
        "node_log_lines": len(log.splitlines()),
        "node_log_lines_queue_full": log.count("question queue full"),
        "node_log_tail": log.splitlines()[-5:],
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
