"""Publish questions on scene_question as fast as asked, from a process of its own (a peer flooding the node).

    question_flood.py --rate 1000 --seconds 12 [--qos best_effort] [--namespace /car1]
    question_flood.py --frames-of CAM_FRONT --rate 2000 --seconds 8   # junk frames on one camera instead

Waits for a subscriber, then publishes `rate` questions a second (each a different text, so nothing can be
collapsed) for `seconds`, paced in bursts of 1 ms. Prints one JSON line: how many were sent and how long it took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import String

from clip_vlm_core.teardown import arm_exit_watchdog


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--qos", choices=("reliable", "best_effort"), default="reliable")
    parser.add_argument("--namespace", default="")
    parser.add_argument("--question", default="What colour is the vehicle ahead, number {n}?")
    parser.add_argument("--frames-of", metavar="VIEW", help="flood this view's compressed image topic with frames "
                        "that do not decode, instead of asking questions")
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("question_flood")
    reliability = ReliabilityPolicy.RELIABLE if args.qos == "reliable" else ReliabilityPolicy.BEST_EFFORT
    ns = args.namespace.rstrip("/")
    if args.frames_of:
        publisher = node.create_publisher(CompressedImage, f"{ns}/{args.frames_of}/image_raw/compressed",
                                          QoSProfile(depth=10, reliability=reliability))
        junk = CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0 not a jpeg")

        def message(n: int):
            return junk
    else:
        publisher = node.create_publisher(String, f"{ns}/scene_question", QoSProfile(depth=10, reliability=reliability))

        def message(n: int):
            return String(data=args.question.format(n=n))
    deadline = time.monotonic() + 30.0
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    print("ready", flush=True)
    sent, start = 0, time.monotonic()
    end = start + args.seconds
    while (now := time.monotonic()) < end:
        due = int((now - start) * args.rate) + 1
        while sent < due:
            publisher.publish(message(sent))
            sent += 1
        time.sleep(0.001)
    print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - start, 3)}), flush=True)
    arm_exit_watchdog(exit_code=0)  # the result is out; a DDS teardown that hangs must not keep the test waiting
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
