"""`ThrottledLog`: what the live stream reports, said once per kind and period, with the repeats counted.

A flood repeats the same warning thousands of times a second (a full question queue, a camera sending
broken frames); one line per event drowns the log and costs the node its time. Each warning therefore
carries a key naming its kind (`question_queue_full`, `bad_frame:CAM_FRONT`): the first of a kind is said at
once, the repeats within `period_s` are counted, and the count is said with the next line of that kind or
by `flush()` once the period is over, so no repeat goes unmentioned. Distinct kinds never hide each other.
A kind may have its own period (an answer is logged at most once a second, so a person asking now and
then sees each one and a flood costs a line a second). Lines without a key (start-up, a subscription
re-created) are never throttled.

The sink is where lines go: the ROS node passes its rclpy logger (so /rosout, `--log-level` and log files
see them), everything else Python's logging. rclpy's own throttling keys on the call site, one per source
line, which is why throttling lives here and the sink is called without it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

LOG_THROTTLE_S = 10.0  # one line per kind of warning in this long, the repeats counted


class LogSink(Protocol):
    def info(self, text: str) -> None: ...

    def warning(self, text: str) -> None: ...

    def error(self, text: str) -> None: ...


class PythonLogSink:
    """Lines to a Python `logging.Logger` (the library used without ROS)."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def info(self, text: str) -> None:
        self._logger.info("%s", text)

    def warning(self, text: str) -> None:
        self._logger.warning("%s", text)

    def error(self, text: str) -> None:
        self._logger.error("%s", text)


@dataclass
class _Kind:
    level: str
    period_s: float
    said_at: float  # when a line of this kind was last said
    repeats: int = 0  # not said since then
    total: int = 0  # every occurrence, said or not
    last_text: str = ""


class ThrottledLog:
    def __init__(self, sink: LogSink, period_s: float = LOG_THROTTLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sink = sink
        self.period_s = period_s
        self._clock = clock
        self._kinds: dict[str, _Kind] = {}
        self._lock = threading.Lock()

    def info(self, text: str, key: str | None = None, period_s: float | None = None) -> None:
        self._log("info", text, key, period_s)

    def warning(self, text: str, key: str | None = None, period_s: float | None = None) -> None:
        self._log("warning", text, key, period_s)

    def error(self, text: str, key: str | None = None, period_s: float | None = None) -> None:
        self._log("error", text, key, period_s)

    def count(self, key: str) -> int:
        """How often a kind occurred, said or not."""
        with self._lock:
            kind = self._kinds.get(key)
            return kind.total if kind else 0

    def flush(self) -> None:
        """Say the repeats of every kind whose period is over (call it now and then, e.g. once a second)."""
        now = self._clock()
        due = []
        with self._lock:
            for kind in self._kinds.values():
                if kind.repeats and now - kind.said_at >= kind.period_s:
                    times = f"{kind.repeats} times" if kind.repeats > 1 else "once"
                    due.append((kind.level, f"{kind.last_text} ({times} more in the last {kind.period_s:g} s, "
                                            "this the latest)"))
                    kind.repeats, kind.said_at = 0, now
        for level, text in due:
            getattr(self.sink, level)(text)

    def _log(self, level: str, text: str, key: str | None, period_s: float | None) -> None:
        if key is None:
            getattr(self.sink, level)(text)
            return
        now = self._clock()
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None:
                period = self.period_s if period_s is None else period_s
                kind = self._kinds[key] = _Kind(level, period, now - period)
            kind.total += 1
            kind.last_text = text
            if now - kind.said_at < kind.period_s:
                kind.repeats += 1
                return
            repeats, kind.repeats, kind.said_at = kind.repeats, 0, now
        if repeats:
            text += f" ({repeats} more like it in the last {kind.period_s:g} s)"
        getattr(self.sink, level)(text)
