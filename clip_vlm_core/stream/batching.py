"""`PairQueue`: the bounded hand-over between the frame callbacks and the caption worker.

Two policies:
- `latest` keeps only the freshest pair: a live car wants the scene now, not a backlog.
- `all` keeps a FIFO of `queue_size` pairs (the oldest dropped when full), to caption every frame
  of a replayed bag when the worker keeps up.

A pair is also dropped as stale when its turn comes and it is older than `max_age_ns`. Age is the
larger of (a) how far the newest source stamp seen has moved past the pair's stamp and (b) how long
the pair has waited here (monotonic clock). Neither compares a source stamp with this machine's
clock, so a bag recorded last year with old stamps is judged the same as a live camera.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from clip_vlm_core.stream.pairing import FramePair

POLICIES = ("latest", "all")


@dataclass
class QueueCounters:
    superseded: int = 0  # `latest`: replaced by a fresher pair before the worker took it
    overflow: int = 0  # `all`: pushed out of a full queue
    stale: int = 0  # older than max_age when its turn came


class PairQueue:
    def __init__(self, policy: str, queue_size: int, max_age_ns: int) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}")
        self.policy = policy
        self.max_age_ns = max_age_ns
        self.counters = QueueCounters()
        self._pairs: deque[FramePair] = deque()
        self._capacity = 1 if policy == "latest" else queue_size
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)

    def put(self, pair: FramePair) -> None:
        with self._lock:
            if len(self._pairs) == self._capacity:
                self._pairs.popleft()
                if self.policy == "latest":
                    self.counters.superseded += 1
                else:
                    self.counters.overflow += 1
            self._pairs.append(pair)
            self._arrived.notify_all()

    def wait(self, timeout_s: float, also: Callable[[], bool] = lambda: False) -> bool:
        """Block until a pair is queued or `also()` holds (True; `also` is checked when `nudge` is
        called), or `timeout_s` passes (False)."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._pairs) > 0 or also(), timeout_s)

    def nudge(self) -> None:
        """Wake a `wait` so it checks its `also` condition again."""
        with self._arrived:
            self._arrived.notify_all()

    def take(self, limit: int, newest_stamp_ns: int | None, now_ns: int) -> list[FramePair]:
        """Up to `limit` fresh pairs, oldest first; stale ones met on the way are dropped and counted."""
        taken: list[FramePair] = []
        with self._lock:
            while self._pairs and len(taken) < limit:
                pair = self._pairs.popleft()
                if self.age_ns(pair, newest_stamp_ns, now_ns) > self.max_age_ns:
                    self.counters.stale += 1
                else:
                    taken.append(pair)
        return taken

    @staticmethod
    def age_ns(pair: FramePair, newest_stamp_ns: int | None, now_ns: int) -> int:
        behind_source = 0 if newest_stamp_ns is None else newest_stamp_ns - pair.stamp_ns
        return max(behind_source, now_ns - pair.received_ns)

    def clear(self) -> None:
        with self._lock:
            self._pairs.clear()

    def __len__(self) -> int:
        return len(self._pairs)
