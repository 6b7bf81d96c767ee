"""The QoS `bag play` offers each topic: what `ros2 bag play` would offer, given what the bag recorded."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability

from clip_vlm_core.bags.messages import STREAM_QOS

# rosbag2's player offers keep-last 10 whatever depth was recorded (Rosbag2QoS::default_history).
PLAYBACK_DEPTH = 10


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


def rclpy_qos(qos: Qos) -> Any:
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
