"""Latency figures: the one percentile every p50/p95 clip-vlm prints or publishes is computed with (the
demo, the node's /diagnostics, the benchmarks), and the bounded window of recent latencies the node keeps.

The method is linear interpolation between the two nearest ranks (numpy's default, Hyndman and Fan's
type 7): over n sorted values, percentile q lies at rank (n - 1) * q / 100, so p50 of [100, 200] is 150
and p95 of 1..100 is 95.05. An empty list has no percentile: NaN, which /diagnostics shows as `nan`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

LATENCY_WINDOW = 200  # latencies kept for the percentiles: a bounded window keeps the node's memory flat


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (q in 0..100) of `values`, linearly interpolated; NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class LatencyWindow:
    """The last `size` latencies in milliseconds and their percentiles. Not locked: its owner's lock guards it."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self._ms: deque[float] = deque(maxlen=size)

    def add(self, ms: float) -> None:
        self._ms.append(ms)

    def percentile(self, q: float) -> float:
        return percentile(self._ms, q)

    def __len__(self) -> int:
        return len(self._ms)
