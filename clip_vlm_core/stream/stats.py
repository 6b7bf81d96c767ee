"""`StreamStats`: what the caption node reports once a second on /diagnostics.

Counts per view (received, bad), caption rate, and latency percentiles over the last captions, both
source stamp -> publish and receive -> publish (the node's own delay, meaningful always).

The source latency compares a frame's stamp with the node's clock, which is only meaningful when both
are the same clock: a live camera stamped with synchronised time, or a replay that publishes /clock to
a node using sim time. A stamp further than `SOURCE_CLOCK_TOLERANCE_NS` from the node's clock (a 2018
bag replayed against today's wall clock is 8 years behind) is not a latency: such captions are left out
of the percentiles, counted, and the report says how far off the stamps are, and why that may be, for as
long as the latest caption's stamp is off: an offset that went away (the replay now publishes /clock, the
camera's clock was synchronised) is no longer reported. A stamp of 0 is a driver that leaves
`header.stamp` unset, and is said so. Thread-safe: callbacks and the worker both write.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from clip_vlm_core.latency import LatencyWindow

RATE_WINDOW_S = 10.0
# Beyond this, a frame stamp and the node's clock are not the same clock (no camera takes a minute to
# deliver a frame); a stamp a little ahead of the clock is skew between synchronised machines.
SOURCE_CLOCK_TOLERANCE_NS = 60 * 1_000_000_000
SOURCE_CLOCK_AHEAD_NS = 1_000_000_000


@dataclass
class StreamReport:
    level: str  # "OK" | "WARN" | "ERROR", as diagnostic_msgs/DiagnosticStatus names them
    message: str
    values: list[tuple[str, str]] = field(default_factory=list)


class StreamStats:
    def __init__(self, views: Sequence[str]) -> None:
        self.views = tuple(views)
        self.received = dict.fromkeys(self.views, 0)
        self.bad = dict.fromkeys(self.views, 0)
        self.last_bad_reason: dict[str, str] = {}
        self.captions = 0
        self.inference_errors = 0  # caption batches the model failed on
        self.last_inference_error = ""
        self.publish_errors = 0  # captions made that could not be published
        self.last_publish_error = ""
        self.batch_halvings = 0
        self.dropped_on_error = 0  # pairs lost to either error
        self.dropped_bad_frame = 0  # pairs lost because a frame's body would not decode in the worker
        self.source_clock_mismatches = 0  # captions whose stamp was on another clock than the node's
        self.source_clock_offset_ns = 0  # node clock minus stamp, at the last mismatch
        self.source_clock_off = False  # whether the latest caption's stamp was on another clock
        self.source_stamp_unset = False  # whether that stamp was 0
        self._source_ms = LatencyWindow()
        self._receive_ms = LatencyWindow()
        self._published_at: deque[float] = deque()
        self._lock = threading.Lock()

    def frame_received(self, view: str) -> None:
        with self._lock:
            self.received[view] += 1

    def frame_bad(self, view: str, reason: str) -> None:
        with self._lock:
            self.received[view] += 1
            self.bad[view] += 1
            self.last_bad_reason[view] = reason

    def frames_found_bad(self, bad: list[tuple[str, str]], pairs_lost: int) -> None:
        """Frames (view, reason) already counted as received whose body the worker could not decode,
        and the pairs lost with them."""
        with self._lock:
            for view, reason in bad:
                self.bad[view] += 1
                self.last_bad_reason[view] = reason
            self.dropped_bad_frame += pairs_lost

    def caption_published(self, source_latency_ns: int, receive_latency_ns: int, stamp_ns: int | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            self.captions += 1
            self.source_clock_off = not -SOURCE_CLOCK_AHEAD_NS <= source_latency_ns <= SOURCE_CLOCK_TOLERANCE_NS
            if not self.source_clock_off:
                self._source_ms.add(source_latency_ns / 1e6)
            else:
                self.source_clock_mismatches += 1
                self.source_clock_offset_ns = source_latency_ns
                self.source_stamp_unset = stamp_ns == 0
            self._receive_ms.add(receive_latency_ns / 1e6)
            self._published_at.append(now)
            while self._published_at and now - self._published_at[0] > RATE_WINDOW_S:
                self._published_at.popleft()

    def inference_failed(self, error: str, pairs_lost: int) -> None:
        with self._lock:
            self.inference_errors += 1
            self.dropped_on_error += pairs_lost
            self.last_inference_error = error

    def publish_failed(self, error: str) -> None:
        """A caption was made but could not be published: its pair is lost, the model did not fail."""
        with self._lock:
            self.publish_errors += 1
            self.dropped_on_error += 1
            self.last_publish_error = error

    def caption_rate_hz(self) -> float:
        with self._lock:
            return self._caption_rate_hz()

    def latency_ms(self) -> dict[str, float]:
        """p50/p95 of both latencies over the window (NaN before the first caption; clip_vlm_core.latency)."""
        with self._lock:
            windows = (("source", self._source_ms), ("receive", self._receive_ms))
            return {f"{name}_p{q}": window.percentile(q) for name, window in windows for q in (50, 95)}

    def report(self, silent_views: Sequence[str], extra: Sequence[tuple[str, str]] = ()) -> StreamReport:
        """Level and values for /diagnostics; `extra` carries the pairer/queue/model facts."""
        latency = self.latency_ms()
        with self._lock:
            values = [
                ("caption_rate_hz", f"{self._caption_rate_hz():.2f}"),
                ("captions", str(self.captions)),
                ("latency_source_to_publish_p50_ms", f"{latency['source_p50']:.1f}"),
                ("latency_source_to_publish_p95_ms", f"{latency['source_p95']:.1f}"),
                ("latency_receive_to_publish_p50_ms", f"{latency['receive_p50']:.1f}"),
                ("latency_receive_to_publish_p95_ms", f"{latency['receive_p95']:.1f}"),
                ("inference_errors", str(self.inference_errors)),
                ("publish_errors", str(self.publish_errors)),
                ("pairs_dropped_on_error", str(self.dropped_on_error)),
                ("pairs_dropped_bad_frame", str(self.dropped_bad_frame)),
                ("batch_halvings", str(self.batch_halvings)),
            ]
            if self.source_clock_mismatches:
                values.append(("source_clock_mismatches", str(self.source_clock_mismatches)))
            if self.source_clock_off:
                offset = ("frame stamps are 0 (unset)" if self.source_stamp_unset
                          else describe_offset(self.source_clock_offset_ns))
                values.append(("source_clock_offset", offset))
            for view in self.views:
                values.append((f"{view}.received", str(self.received[view])))
                values.append((f"{view}.bad", str(self.bad[view])))
                if view in self.last_bad_reason:
                    values.append((f"{view}.last_bad_reason", self.last_bad_reason[view]))
            if self.last_inference_error:
                values.append(("last_inference_error", self.last_inference_error))
            if self.last_publish_error:
                values.append(("last_publish_error", self.last_publish_error))
        values.extend(extra)
        values.append(("silent_views", ",".join(silent_views)))
        if silent_views:
            return StreamReport("WARN", f"no frames from {', '.join(silent_views)}", values)
        if self.inference_errors and self.captions == 0 and not self.publish_errors:
            return StreamReport("ERROR", "every caption attempt failed so far", values)
        if self.publish_errors and self.captions == 0:
            return StreamReport("ERROR", "no caption could be published so far", values)
        return StreamReport("OK", "captioning", values)

    def source_clock_hint(self, use_sim_time: bool) -> str | None:
        """What to do about stamps on another clock, while the latest caption's is; None otherwise.

        Short enough for `ros2 topic echo`, which cuts strings at 128 characters.
        """
        with self._lock:
            if not self.source_clock_off:
                return None
            unset = self.source_stamp_unset
        if unset:
            return "the camera driver leaves header.stamp at 0: stamp frames with their capture time"
        if use_sim_time:
            return "use_sim_time is on: is /clock published (ros2 bag play --clock, clip-vlm bag play --clock)?"
        return ("a bag played without --clock (add it and use_sim_time:=true), or a camera clock "
                "not synchronised (chrony, PTP)")

    def _caption_rate_hz(self) -> float:
        now = time.monotonic()
        return sum(1 for t in self._published_at if now - t <= RATE_WINDOW_S) / RATE_WINDOW_S


def describe_offset(offset_ns: int) -> str:
    """'8.1 years behind' / '3.0 s ahead': how a frame stamp relates to the node's clock, in words."""
    seconds = abs(offset_ns) / 1e9
    for unit, size in (("years", 365.25 * 86400), ("days", 86400.0), ("hours", 3600.0), ("min", 60.0)):
        if seconds >= size:
            amount = f"{seconds / size:.1f} {unit}"
            break
    else:
        amount = f"{seconds:.1f} s"
    return f"frame stamps {amount} {'behind' if offset_ns > 0 else 'ahead of'} this node's clock"
