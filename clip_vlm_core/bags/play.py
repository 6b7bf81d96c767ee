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
play ends in an error: a play never publishes less than the bag holds in silence.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
)

from clip_vlm_core.bags.interfaces import UnplayableType, message_class
from clip_vlm_core.bags.messages import STREAM_QOS
from clip_vlm_core.bags.metadata import TopicRecord
from clip_vlm_core.bags.reader import Bag, open_bag
from clip_vlm_core.errors import UserError

log = logging.getLogger(__name__)

# rosbag2's player offers keep-last 10 whatever depth was recorded (Rosbag2QoS::default_history).
PLAYBACK_DEPTH = 10
PLAYER_NODE = "clip_vlm_bag_player"
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


def playback_qos(recorded: Iterable[Qos], reliability: str | None = None) -> Qos:
    """The offer `ros2 bag play` makes for a topic, given the offers recorded for it.

    One recorded offer (or several that agree on the policies that decide compatibility) is
    replayed with keep-last 10; none, or disagreeing ones, fall back to reliable volatile keep-last 10.
    """
    recorded = list(recorded)

    def compatibility(q: Qos) -> tuple:
        return (q.reliability, q.durability, q.deadline, q.liveliness, q.liveliness_lease_duration)

    if recorded and all(compatibility(q) == compatibility(recorded[0]) for q in recorded):
        chosen = recorded[0]
    else:
        chosen = STREAM_QOS
    chosen = chosen._replace(history=QosHistory.KEEP_LAST, depth=PLAYBACK_DEPTH)
    if reliability is not None:
        chosen = chosen._replace(reliability=QosReliability[reliability.upper()])
    return chosen


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
) -> PlaySummary:
    """Publish the bag's messages at their recorded timing divided by `rate`; Ctrl-C stops cleanly.

    Waits up to `wait_for_subscribers` seconds for subscribers first (0: start at once). `clock_hz` > 0
    publishes the bag's time on /clock at that rate. `remap` renames topics ({bag topic: published as}).
    `on_published(topic, bag_time_ns)` is called after each message. Returns what was published.
    """
    if rate <= 0:
        raise UserError(f"play rate must be positive, got {rate}")
    if reliability not in (None, "reliable", "best_effort"):
        raise UserError(f"QoS reliability must be reliable or best_effort, got {reliability!r}")
    if wait_for_subscribers < 0 or clock_hz < 0:
        raise UserError("the wait for subscribers and the clock rate cannot be negative")
    with open_bag(path) as bag:
        chosen = _chosen_topics(bag, topics)
        remap = _checked_remap(remap or {}, chosen, bag)
        plan, skipped = _plan(chosen)
        if not sum(t.count for t in plan) and any(t.count for t in chosen):
            raise UserError(f"bag {bag.shown} has nothing this machine can play: {_reasons(skipped)}")
        for topic, why in skipped.items():
            log.warning("skipping %s: %s", topic, why)
        playable = sum(t.count for t in plan)
        options = _Options(rate, loop and playable > 0, on_published, reliability, wait_for_subscribers, report,
                           clock_hz, remap)
        summary = _play(bag, plan, options)
        summary.skipped = skipped
        summary.played_topics = [t.name for t in plan]
        summary.expected = playable
        if not summary.interrupted:
            _check_counts(bag, plan, summary)
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


def _chosen_topics(bag: Bag, topics: list[str] | None) -> list[TopicRecord]:
    known = {t.name for t in bag.topics}
    for topic in topics or []:
        if topic not in known:
            raise UserError(f"topic {topic} is not in bag {bag.shown} (it has {', '.join(sorted(known)) or 'none'})")
    return [t for t in bag.topics if topics is None or t.name in topics]


def _checked_remap(remap: dict[str, str], chosen: list[TopicRecord], bag: Bag) -> dict[str, str]:
    names = {t.name for t in chosen}
    for old, new in remap.items():
        if old not in names:
            raise UserError(f"--remap {old}:={new} names {old}, which is not a topic played from bag {bag.shown}")
        if (why := topic_name_problem(new)) is not None:
            raise UserError(f"--remap {old}:={new}: {why}")
    return remap


@dataclass(frozen=True)
class _PlayedTopic:
    name: str
    msgtype: str
    count: int
    offered_qos: tuple[Qos, ...]
    msg_class: type


def _plan(chosen: list[TopicRecord]) -> tuple[list[_PlayedTopic], dict[str, str]]:
    """The topics that can be played, and why each other one cannot."""
    plan, skipped = [], {}
    for topic in chosen:
        why = topic_name_problem(topic.name)
        if why is None and topic.serialization_format != "cdr":
            why = f"its messages are serialized as {topic.serialization_format!r}, not CDR"
        if why is None:
            try:
                plan.append(_PlayedTopic(topic.name, topic.msgtype, topic.count, topic.offered_qos,
                                         message_class(topic.msgtype)))
                continue
            except UnplayableType as exc:
                why = str(exc)
        skipped[topic.name] = why
    return plan, skipped


def topic_name_problem(name: str) -> str | None:
    """Why `name` is not a valid ROS 2 topic name (as rcl checks it), or None."""
    from rclpy.expand_topic_name import expand_topic_name
    from rclpy.validate_full_topic_name import validate_full_topic_name

    try:
        validate_full_topic_name(expand_topic_name(name, PLAYER_NODE, "/"))
    except Exception as exc:  # rclpy raises InvalidTopicNameException, ValueError or RCLError
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        rule = re.search(r"(topic name (?:token )?must .*?)(?::$|, at |$)", text)
        return f"{name!r} is not a valid ROS 2 topic name ({rule[1] if rule else text})"
    return None


def _reasons(skipped: dict[str, str], most: int = 3) -> str:
    parts = [f"{topic}: {why}" for topic, why in list(skipped.items())[:most]]
    if len(skipped) > most:
        parts.append(f"and {len(skipped) - most} more topic{'s' if len(skipped) - most > 1 else ''} like these")
    return "; ".join(parts)


def _check_counts(bag: Bag, plan: list[_PlayedTopic], summary: PlaySummary) -> None:
    """Each played topic's messages must number what the bag declares (what `bag info` shows)."""
    wrong = [(t, summary.first_pass[t.name]) for t in plan if summary.first_pass[t.name] != t.count]
    if wrong:
        source = "its metadata.yaml" if bag.metadata is not None else "its storage file"
        details = "; ".join(f"{t.name} {played} of {t.count}" for t, played in wrong[:4])
        raise UserError(f"bag {bag.shown}: the messages played differ from what {source} declares ({details}); "
                        f"the bag is damaged or its metadata is wrong")


def _play(bag: Bag, plan: list[_PlayedTopic], options: _Options) -> PlaySummary:
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    summary = PlaySummary()
    # Our own context, so a caller (the demo) that already runs rclpy keeps its own; no signal
    # handlers, so Ctrl-C arrives as KeyboardInterrupt and we shut down in order. No command-line
    # arguments either: rclpy would read this process's sys.argv, take `--remap OLD:=NEW` for rcl's
    # remapping rules of the whole process and warn about their syntax (remaps are applied below).
    context = rclpy.Context()
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    previous = _ctrl_c_raises()
    node = rclpy.create_node(PLAYER_NODE, context=context, start_parameter_services=False,
                             use_global_arguments=False)
    try:
        publishers = _publishers(node, plan, options)
        clock = BagClock(node, options.clock_hz) if options.clock_hz > 0 else None
        start = time.monotonic()
        try:
            if publishers:
                summary.listened_topics = _wait_for_subscribers(list(publishers.values()), options.wait_for_subscribers)
            while True:
                _play_once(bag, plan, publishers, options, clock, summary)
                if not options.loop:
                    break
            _wait_for_acks(publishers.values())
        except KeyboardInterrupt:
            summary.interrupted = True
        summary.seconds = time.monotonic() - start
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return summary


def _ctrl_c_raises():
    """Make SIGINT raise KeyboardInterrupt even when it was inherited as ignored (a shell starts
    background jobs that way, and Python then installs no handler). Returns the handler to restore."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.default_int_handler)


def _publishers(node: Any, plan: list[_PlayedTopic], options: _Options) -> dict[str, Any]:
    """One publisher per played topic (by its bag name), under its remapped name."""
    return {
        topic.name: node.create_publisher(topic.msg_class, options.remap.get(topic.name, topic.name),
                                          _rclpy_qos(playback_qos(topic.offered_qos, options.reliability)))
        for topic in plan
    }


def _rclpy_qos(qos: Qos) -> Any:
    from rclpy.duration import Duration
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, LivelinessPolicy, QoSProfile, ReliabilityPolicy

    def duration(t: Any) -> Duration:
        # Humble records "infinite" as INT32_MAX seconds, later distros as INT64_MAX nanoseconds; rclpy's
        # default (0) means the same. A value no QoS can hold (negative, beyond either) is taken so too.
        ns = t.sec * 1_000_000_000 + t.nsec if isinstance(t.sec, int) and isinstance(t.nsec, int) else -1
        unset = not 0 < ns < 2**63 - 1 or t.sec >= 2**31 - 1 or not 0 <= t.nsec < 1_000_000_000
        return Duration() if unset else Duration(nanoseconds=ns)

    liveliness = {QosLiveliness.AUTOMATIC: LivelinessPolicy.AUTOMATIC, QosLiveliness.MANUAL_BY_TOPIC: LivelinessPolicy.MANUAL_BY_TOPIC}
    durability = {QosDurability.TRANSIENT_LOCAL: DurabilityPolicy.TRANSIENT_LOCAL}.get(qos.durability, DurabilityPolicy.VOLATILE)
    reliable = qos.reliability != QosReliability.BEST_EFFORT
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=qos.depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=durability,
        deadline=duration(qos.deadline),
        lifespan=duration(qos.lifespan),
        liveliness=liveliness.get(qos.liveliness, LivelinessPolicy.SYSTEM_DEFAULT),
        liveliness_lease_duration=duration(qos.liveliness_lease_duration),
    )


def _play_once(bag: Bag, plan: list[_PlayedTopic], publishers: dict[str, Any], options: _Options,
               clock: BagClock | None, summary: PlaySummary) -> None:
    from tqdm import tqdm

    total = sum(t.count for t in plan)
    bar = tqdm(total=total, unit="msg", desc="play", disable=None if options.report else True, file=sys.stderr)
    played: Counter = Counter()
    first_ns, wall_start = None, time.monotonic()

    def bag_time_at(monotonic_s: float) -> int:
        return first_ns + int((monotonic_s - wall_start) * options.rate * 1e9)

    try:
        for topic, bag_ns, raw in bag.messages(publishers):
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
            summary.first_pass = played


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
