"""`RateBudget`: how many messages an input may hand the node a second, so that no input starves another.

The node's callbacks share one executor thread, and in Python one interpreter lock with the caption
worker: a peer publishing 1,000 questions a second kept the executor 40 % busy taking them (rclpy spends
a few hundred microseconds per message), which slowed every caption by half even though the worker gave
captions their turns. A token bucket per input bounds each input's share: while an input's budget is
spent, the node does not take its messages (rclpy leaves the subscription out of its wait set); they wait
in the subscription's history, where the oldest are overwritten and counted as lost before taken. The
budget refills continuously at `rate_hz`, up to a burst of a tenth of a second's worth.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

BURST_S = 0.1  # a full bucket holds this many seconds' worth of messages


class RateBudget:
    def __init__(self, rate_hz: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be above 0, got {rate_hz}")
        self.rate_hz = rate_hz
        self.burst = max(1.0, rate_hz * BURST_S)
        self.exhausted = 0  # how often the budget ran out
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()
        self._lock = threading.Lock()

    def available(self) -> bool:
        """Whether a message may be taken now."""
        with self._lock:
            self._refill()
            return self._tokens >= 1.0

    def spend(self) -> None:
        """A message was taken."""
        with self._lock:
            self._refill()
            self._tokens -= 1.0
            if self._tokens < 1.0:
                self.exhausted += 1

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_hz)
        self._at = now
