"""Count messages per topic in a separate process and print them as JSON (for tests of `bag play`).

usage: bag_subscriber.py [--matched] SECONDS TOPIC=TYPE[:latched|:best_effort][:EXPECTED] ...
Subscribes to each topic (transient local when marked latched, best effort when so marked, else
reliable volatile), prints
"ready" once subscriptions exist (with --matched: once each has found a publisher, so nothing a running
publisher sends next is missed), and exits after SECONDS, or as soon as every topic has reached its
EXPECTED count, printing {"topic": count, ...}; for rosgraph_msgs/Clock topics also
{"topic:clock_ns": [first, min, max]}.
"""

from __future__ import annotations

import importlib
import json
import sys
import time

import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from clip_vlm_core.teardown import arm_exit_watchdog


def main() -> int:
    args = sys.argv[1:]
    matched = "--matched" in args
    args = [a for a in args if a != "--matched"]
    seconds = float(args[0])
    specs = [arg.split("=", 1) for arg in args[1:]]
    rclpy.init()
    node = rclpy.create_node("bag_test_subscriber")
    counts: dict[str, int] = {}
    clocks: dict[str, list[int]] = {}
    expected: dict[str, int] = {}
    subscriptions = []
    for topic, rest in specs:
        msgtype, _, tail = rest.partition(":")
        flags = tail.split(":") if tail else []
        latched = "latched" in flags
        best_effort = "best_effort" in flags
        expected[topic] = next((int(f) for f in flags if f.isdigit()), 0)
        package, _, name = msgtype.rpartition("/")
        msg_class = getattr(importlib.import_module(package.replace("/", ".")), name)
        qos = QoSProfile(
            depth=100,
            reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
        )
        counts[topic] = 0

        def callback(msg: object, topic: str = topic) -> None:
            counts[topic] += 1
            if hasattr(msg, "clock"):
                ns = msg.clock.sec * 1_000_000_000 + msg.clock.nanosec
                seen = clocks.setdefault(topic, [ns, ns, ns])
                seen[1], seen[2] = min(seen[1], ns), max(seen[2], ns)

        subscriptions.append(node.create_subscription(msg_class, topic, callback, qos))
    deadline = time.monotonic() + seconds
    while matched and time.monotonic() < deadline and any(s.get_publisher_count() == 0 for s in subscriptions):
        rclpy.spin_once(node, timeout_sec=0.05)
    print("ready", flush=True)
    while time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
        if expected and all(counts[t] >= n for t, n in expected.items() if n):
            break
    print(json.dumps({**counts, **{f"{t}:clock_ns": v for t, v in clocks.items()}}), flush=True)
    arm_exit_watchdog(exit_code=0)  # the counts are out; a DDS teardown that hangs must not keep the test waiting
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
