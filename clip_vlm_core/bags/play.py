"""Replay a rosbag2 bag with rclpy, for machines that have rclpy but not rosbag2.

The CDR bytes stored in a bag are exactly what rclpy puts on the wire, so messages are published
raw (`Publisher.publish(bytes)`): no deserialization, and the rate is bound by DDS, not Python.
rclpy is imported here, lazily, so the core library still imports on machines without ROS.

Unlike `ros2 bag play`, it waits (10 s by default) for subscribers before the first message: a node
that has not matched yet would lose the first frames, and a converted scene has only a few dozen.
With `clock_hz` it publishes the bag's time on /clock as `ros2 bag play --clock` does, for nodes
running with use_sim_time.

A topic is played only when its message type resolves to an installed ROS interface package
(`interfaces.py`: nothing a bag names is imported any other way), its name is a valid ROS topic name
and its messages are CDR; any other topic is skipped and reported, and a bag with nothing playable is
an error. Each played topic's count must equal what the bag declares (what `bag info` shows), else the
play ends in an error: a play never publishes less than the bag holds in silence. Which topics are
played and why others are not: play_plan.py; the QoS each is offered with: play_qos.py.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip_vlm_core.bags.play_plan import (
    PLAYER_NODE,
    PlayedTopic,
    check_counts,
    checked_remap,
    chosen_topics,
    plan_topics,
    skipped_reasons,
)
from clip_vlm_core.bags.play_qos import playback_qos, rclpy_qos
from clip_vlm_core.bags.reader import Bag, open_bag
from clip_vlm_core.errors import UserError
from clip_vlm_core.teardown import bounded_teardown

log = logging.getLogger(__name__)

DEFAULT_WAIT_S = 10.0  # how long to wait for a first subscriber before playing to nobody
SETTLE_S = 0.5  # once one topic has a subscriber, this long without a new one and playing starts
CLOCK_TOPIC = "/clock"


@dataclass
class PlaySummary:
    published: int = 0
    seconds: float = 0.0
    per_topic: Counter = field(default_factory=Counter)
    played_topics: list[str] = field(default_factory=list)  # the bag's topics that were played
    skipped: dict[str, str] = field(default_factory=dict)  # topic -> why it was not played
    listened_topics: list[str] = field(default_factory=list)  # topics with a subscriber when playing began
    interrupted: bool = False
    expected: int = 0  # messages the bag declares on the played topics (one pass)
    first_pass: Counter | None = None  # messages played per topic in the first pass through the bag

    @property
    def skipped_topics(self) -> list[str]:
        return list(self.skipped)


def play_bag(
    path: str | Path,
    rate: float = 1.0,
    loop: bool = False,
    topics: list[str] | None = None,
    on_published: Callable[[str, int], None] | None = None,
    reliability: str | None = None,
    wait_for_subscribers: float = DEFAULT_WAIT_S,
    report: bool = False,
    clock_hz: float = 0.0,
    remap: dict[str, str] | None = None,
    start_when: Callable[[], object] | None = None,
    start_offset: float = 0.0,
    on_done: Callable[[PlaySummary], object] | None = None,
) -> PlaySummary:
    """Publish the bag's messages at their recorded timing divided by `rate`; Ctrl-C stops cleanly.

    Waits up to `wait_for_subscribers` seconds for subscribers first (0: start at once). `clock_hz` > 0
    publishes the bag's time on /clock at that rate. `remap` renames topics ({bag topic: published as}).
    `on_published(topic, bag_time_ns)` is called after each message. `start_when()`, if given, is called
    once the publishers exist and the wait for subscribers is over, and playing starts when it returns
    (`--start-paused`: a line on stdin). `start_offset` skips the first seconds of the bag, from its start
    (what `bag info` and `clip-vlm search` count from), on every pass. `on_done(summary)`, if given, is
    called once playing has ended and been checked, before ROS 2 is left: that teardown can hang in the
    middleware (clip_vlm_core.teardown), and what a command reports must be out by then. Returns what was
    published.
    """
    if rate <= 0:
        raise UserError(f"play rate must be positive, got {rate}")
    if reliability not in (None, "reliable", "best_effort"):
        raise UserError(f"QoS reliability must be reliable or best_effort, got {reliability!r}")
    if wait_for_subscribers < 0 or clock_hz < 0:
        raise UserError("the wait for subscribers and the clock rate cannot be negative")
    if not (math.isfinite(start_offset) and start_offset >= 0):
        raise UserError(f"the start offset must be a number of seconds, 0 or more, got {start_offset}")
    with open_bag(path) as bag:
        chosen = chosen_topics(bag, topics)
        remap = checked_remap(remap or {}, chosen, bag)
        plan, skipped = plan_topics(chosen)
        if not sum(t.count for t in plan) and any(t.count for t in chosen):
            raise UserError(f"bag {bag.shown} has nothing this machine can play: {skipped_reasons(skipped)}")
        for topic, why in skipped.items():
            log.warning("skipping %s: %s", topic, why)
        playable = sum(t.count for t in plan)
        if start_offset and start_offset * 1e9 > bag.duration_ns:
            raise UserError(f"--start-offset {start_offset:g} s is past the end of bag {bag.shown}, which lasts "
                            f"{bag.duration_ns / 1e9:.2f} s")
        options = _Options(rate, loop and playable > 0, on_published, reliability, wait_for_subscribers, report,
                           clock_hz, remap, start_when, round(start_offset * 1e9), on_done)
        summary = PlaySummary(played_topics=[t.name for t in plan], skipped=skipped, expected=playable)
        _play(bag, plan, options, summary)
        return summary


@dataclass(frozen=True)
class _Options:
    rate: float
    loop: bool
    on_published: Callable[[str, int], None] | None
    reliability: str | None
    wait_for_subscribers: float
    report: bool
    clock_hz: float
    remap: dict[str, str]
    start_when: Callable[[], object] | None = None
    start_offset_ns: int = 0
    on_done: Callable[[PlaySummary], object] | None = None


def _play(bag: Bag, plan: list[PlayedTopic], options: _Options, summary: PlaySummary) -> None:
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    # Our own context, so a caller (the demo) that already runs rclpy keeps its own; no signal
    # handlers, so Ctrl-C arrives as KeyboardInterrupt and we shut down in order. No command-line
    # arguments either: rclpy would read this process's sys.argv, take `--remap OLD:=NEW` for rcl's
    # remapping rules of the whole process and warn about their syntax (remaps are applied below).
    context = rclpy.Context()
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    previous = _ctrl_c_raises()
    node = rclpy.create_node(PLAYER_NODE, context=context, start_parameter_services=False,
                             use_global_arguments=False)
    reported = False
    try:
        publishers = _publishers(node, plan, options)
        clock = BagClock(node, options.clock_hz) if options.clock_hz > 0 else None
        start = time.monotonic()
        try:
            if publishers:
                summary.listened_topics = _wait_for_subscribers(list(publishers.values()), options.wait_for_subscribers)
            if options.start_when is not None:
                options.start_when()
            while True:
                _play_once(bag, plan, publishers, options, clock, summary)
                if not options.loop:
                    break
            _wait_for_acks(publishers.values())
        except KeyboardInterrupt:
            summary.interrupted = True
        summary.seconds = time.monotonic() - start
        if not summary.interrupted:
            check_counts(bag, plan, summary.first_pass)
        if options.on_done is not None:
            options.on_done(summary)
        reported = True
    finally:
        # Played, checked and reported: a teardown that hangs ends the process as a success.
        with bounded_teardown(exit_code=0 if reported else 1):
            node.destroy_node()
            rclpy.shutdown(context=context)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _ctrl_c_raises():
    """Make SIGINT raise KeyboardInterrupt even when it was inherited as ignored (a shell starts
    background jobs that way, and Python then installs no handler). Returns the handler to restore."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.default_int_handler)


def _publishers(node: Any, plan: list[PlayedTopic], options: _Options) -> dict[str, Any]:
    """One publisher per played topic (by its bag name), under its remapped name."""
    return {
        topic.name: node.create_publisher(topic.msg_class, options.remap.get(topic.name, topic.name),
                                          rclpy_qos(playback_qos(topic.offered_qos, options.reliability)))
        for topic in plan
    }


def _play_once(bag: Bag, plan: list[PlayedTopic], publishers: dict[str, Any], options: _Options,
               clock: BagClock | None, summary: PlaySummary) -> None:
    from tqdm import tqdm

    total = sum(t.count for t in plan)
    bar = tqdm(total=total, unit="msg", desc="play", disable=None if options.report else True, file=sys.stderr)
    played: Counter = Counter()
    passed_over: Counter = Counter()  # before --start-offset: counted for the check against the bag, not sent
    skip_before = bag.start_ns + options.start_offset_ns if options.start_offset_ns else None
    first_ns, wall_start = None, time.monotonic()

    def bag_time_at(monotonic_s: float) -> int:
        return first_ns + int((monotonic_s - wall_start) * options.rate * 1e9)

    try:
        for topic, bag_ns, raw in bag.messages(publishers):
            if skip_before is not None and bag_ns < skip_before:
                passed_over[topic] += 1
                bar.update()
                continue
            if first_ns is None:
                first_ns = bag_ns
            due = wall_start + (bag_ns - first_ns) / 1e9 / options.rate
            _sleep_until(due, clock, bag_time_at)
            if clock is not None:  # the clock reaches a message's time no later than the message
                clock.publish(bag_ns)
            publishers[topic].publish(bytes(raw))
            summary.published += 1
            summary.per_topic[topic] += 1
            played[topic] += 1
            if options.on_published is not None:
                options.on_published(topic, bag_ns)
            bar.update()
            bar.set_postfix_str(f"bag time {(bag_ns - first_ns) / 1e9:.2f} s", refresh=False)
    finally:
        bar.close()
        if summary.first_pass is None:
            summary.first_pass = played + passed_over


def _sleep_until(due: float, clock: BagClock | None, bag_time_at: Callable[[float], int]) -> None:
    """Sleep until the monotonic time `due`, ticking the clock at its rate meanwhile."""
    while (now := time.monotonic()) < due:
        if clock is None:
            time.sleep(due - now)
            return
        clock.publish(bag_time_at(now))
        time.sleep(min(due - now, clock.period_s))


class BagClock:
    """/clock carrying the bag's time, offered as `ros2 bag play --clock` offers it (best effort, keep
    last 1, like rclpy's and rclcpp's /clock subscriptions)."""

    def __init__(self, node: Any, hz: float) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        self._message = Clock
        self.period_s = 1.0 / hz
        self._publisher = node.create_publisher(
            Clock, CLOCK_TOPIC, QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        )

    def publish(self, bag_ns: int) -> None:
        msg = self._message()
        msg.clock.sec, msg.clock.nanosec = divmod(bag_ns, 1_000_000_000)
        self._publisher.publish(msg)


def _wait_for_subscribers(publishers: list[Any], timeout_s: float) -> list[str]:
    """Wait until subscribers stop appearing (SETTLE_S after the last new one) or every topic has one,
    at most `timeout_s`; return the topics that have one. Nobody at all is said loudly.

    A node subscribes to only some of a bag's topics (images, not camera_info or /tf), so waiting for
    every topic would always time out; one node's subscriptions are discovered together, so a short
    settle after the first catches the rest.
    """
    deadline = time.monotonic() + timeout_s
    if timeout_s > 0:
        log.info("waiting up to %.0f s for subscribers (--wait-for-subscribers 0 starts at once)", timeout_s)
    listened: set[str] = set()
    changed = time.monotonic()
    while True:
        now_listened = {p.topic_name for p in publishers if p.get_subscription_count() > 0}
        now = time.monotonic()
        if now_listened != listened:
            listened, changed = now_listened, now
        everyone = len(listened) == len({p.topic_name for p in publishers})
        if everyone or (listened and now - changed >= SETTLE_S) or now >= deadline:
            break
        time.sleep(0.05)
    if not listened:
        waited = f"after {timeout_s:.0f} s" if timeout_s > 0 else "(not waiting: --wait-for-subscribers 0)"
        log.warning("no subscriber on any of the bag's %d topics %s: playing anyway, and messages published "
                    "before a subscriber appears are lost", len(publishers), waited)
    else:
        log.info("subscribers on %s: playing", ", ".join(sorted(listened)))
    return sorted(listened)


def _wait_for_acks(publishers: Iterable[Any], timeout_s: float = 10.0) -> list[str]:
    """Let reliable subscribers receive the last messages before the publishers go away; return the topics
    whose subscribers had not acknowledged everything by then (said in a warning).

    One deadline for all publishers (it was 2 s each, one after another), and it returns as soon as
    everything is acknowledged: on a busy machine a subscriber's acknowledgements can take seconds, and a
    publisher destroyed before them takes its unacknowledged messages with it. A subscriber still behind at
    the deadline is named in a warning.
    """
    from rclpy.duration import Duration

    deadline = time.monotonic() + timeout_s
    unacknowledged = []
    for publisher in {id(p): p for p in publishers}.values():
        left = max(0.0, deadline - time.monotonic())
        if not publisher.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9))):
            unacknowledged.append(publisher.topic_name)
    if unacknowledged:
        log.warning("subscribers of %s had not acknowledged every message %.0f s after the last one: they may "
                    "have missed the end of the replay", ", ".join(sorted(unacknowledged)), timeout_s)
    return sorted(unacknowledged)
