"""One percentile for every p50/p95 clip-vlm shows (the demo, /diagnostics, the benchmarks): linear
interpolation between the two nearest ranks, numpy's default."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clip_vlm_core.latency import LATENCY_WINDOW, LatencyWindow, percentile


@pytest.mark.parametrize("values", [[100.0, 200.0], list(range(1, 101)), [5.0], [3.0, 1.0, 2.0, 10.0, 7.5]])
@pytest.mark.parametrize("q", [0, 50, 95, 100])
def test_the_percentile_is_numpys_linear_one(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_worked_examples_and_no_values():
    assert percentile([100, 200], 50) == 150 and percentile(range(1, 101), 95) == pytest.approx(95.05)
    assert math.isnan(percentile([], 50))


def test_the_window_keeps_the_latest_values_only():
    window = LatencyWindow()
    for ms in range(1000):
        window.add(float(ms))
    assert len(window) == LATENCY_WINDOW and window.percentile(0) == 1000 - LATENCY_WINDOW


def test_diagnostics_the_demo_and_the_benchmarks_compute_it_the_same_way():
    from clip_vlm_core.bench.measure import summary_ms
    from clip_vlm_core.demo.report import latency_line
    from clip_vlm_core.stream.questions import QuestionQueue
    from clip_vlm_core.stream.stats import StreamStats

    latencies_ms = [120.0, 80.0, 400.0, 95.0]
    stats = StreamStats(("CAM_FRONT",))
    for ms in latencies_ms:
        stats.caption_published(int(ms * 1e6), int(ms * 1e6))
    expected = {q: percentile(latencies_ms, q) for q in (50, 95)}
    assert stats.latency_ms()["receive_p50"] == pytest.approx(expected[50])
    assert stats.latency_ms()["source_p95"] == pytest.approx(expected[95])
    assert latency_line(latencies_ms, 50, 95) == f"p50 {expected[50]:.0f} ms, p95 {expected[95]:.0f} ms"
    bench = summary_ms([ms / 1000 for ms in latencies_ms])
    assert (bench["p50"], bench["p95"]) == (pytest.approx(expected[50]), pytest.approx(expected[95]))
    assert dict(QuestionQueue(1).report())["answer_latency_p50_ms"] == "nan"


@pytest.mark.parametrize("values", [[], [None, None], iter([None])], ids=["none", "all-unmeasured", "iterator"])
def test_the_demo_says_not_measured_rather_than_nan_when_no_keyframe_was_timed(values):
    from clip_vlm_core.demo.report import latency_line

    assert latency_line(values, 50, 95) == "not measured"
    assert latency_line([None, 300.0, None], 50) == "p50 300 ms"
