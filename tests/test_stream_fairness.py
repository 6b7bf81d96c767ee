"""The worker shares its one model fairly and keeps to rate_hz, with the real tiny captioner and no ROS.

A flood of questions must never silence the captions (nor captions the questions), and
rate_hz is captions a second under policy `all` too, batches included.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from clip_vlm_core.config import DecodingConfig
from clip_vlm_core.stream import CaptionWorker, FramePair, PairQueue, Question, QuestionQueue, StreamStats

VIEWS = ("CAM_FRONT", "CAM_BACK")


@pytest.fixture
def captioner(embedded_captioner):
    return embedded_captioner  # loaded once for the session (conftest.py)


def pair(stamp: int) -> FramePair:
    images = {v: np.full((90, 160, 3), (stamp * 37) % 256, np.uint8) for v in VIEWS}
    return FramePair(stamp, time.monotonic_ns(), images)


def worker(captioner, queue: PairQueue, events: list, rate_hz: float, batch_size: int = 4) -> CaptionWorker:
    return CaptionWorker(
        captioner, queue, StreamStats(VIEWS), lambda p, c: events.append(("caption", p.stamp_ns, time.monotonic())),
        rate_hz=rate_hz, batch_size=batch_size, newest_stamp_ns=lambda: None, source_clock_ns=time.time_ns,
        decoding=DecodingConfig(max_new_tokens=8), questions=QuestionQueue(8),
        answer=lambda q, a: events.append(("answer", q.text, time.monotonic())),
    )


def run_for(w: CaptionWorker, seconds: float, *feeders) -> None:
    stop = threading.Event()
    threads = [threading.Thread(target=feed, args=(stop,), daemon=True) for feed in feeders]
    w.start()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    assert w.stop(10.0)


@pytest.mark.parametrize("policy", ["latest", "all"])
def test_a_flood_of_questions_never_silences_the_captions_nor_they_the_questions(captioner, policy):
    events: list = []
    queue = PairQueue(policy, 64, 10**15)
    w = worker(captioner, queue, events, rate_hz=1000.0)  # a caption is always due: the hardest case
    fresh = pair(0)

    def cameras(stop):  # a pair every 20 ms
        n = 0
        while not stop.is_set():
            n += 1
            queue.put(pair(n))
            stop.wait(0.02)

    def flood(stop):  # questions as fast as a thread can ask them
        n = 0
        while not stop.is_set():
            n += 1
            w.ask(Question(f"What colour is the vehicle ahead, number {n}?", fresh, time.monotonic_ns()))
            time.sleep(0.0005)

    run_for(w, 4.0, cameras, flood)
    runs = _runs([kind for kind, *_ in events])  # [(kind, how many in a row), ...]
    runs = runs[next(n for n, (kind, _) in enumerate(runs) if kind == "caption"):]  # before it, no pair waited
    caption_runs = [n for kind, n in runs if kind == "caption"]
    answer_runs = [n for kind, n in runs if kind == "answer"]
    assert len(caption_runs) >= 3, runs  # the old worker answered questions for ever and captioned nothing
    # Between two caption batches one question turn, never more than a batch of questions ...
    assert max(answer_runs) <= w.question_batch, runs
    # ... and never none: captions do not starve the questions either.
    assert len(answer_runs) >= len(caption_runs) - 1, runs


def _runs(kinds: list[str]) -> list[tuple[str, int]]:
    runs: list[tuple[str, int]] = []
    for kind in kinds:
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + 1)
        else:
            runs.append((kind, 1))
    return runs


def test_rate_hz_is_captions_a_second_under_policy_all_batches_included(captioner):
    events: list = []
    queue = PairQueue("all", 64, 10**15)
    for n in range(12):  # a backlog: three batches of four
        queue.put(pair(n))
    w = worker(captioner, queue, events, rate_hz=2.0)
    deadline = time.monotonic() + 60
    w.start()
    while len(events) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.stop(10.0)
    times = [t for kind, _, t in events if kind == "caption"]
    assert len(times) == 12
    # 12 captions at 2 a second: the third batch of four starts 4 s after the first (it was 1 s: ticks of
    # four every half second, 8 captions a second at rate_hz 2).
    assert times[8] - times[0] >= 4.0 - 0.3, [round(t - times[0], 2) for t in times]


def test_a_question_turn_ahead_of_a_caption_is_cut_to_the_time_a_caption_takes(captioner):
    w = worker(captioner, PairQueue("latest", 1, 10**15), [], rate_hz=2.0, batch_size=8)
    assert w.question_turn() == 8  # nothing measured yet: a whole batch
    w._caption_s, w._per_question_s = 0.3, 0.1
    assert w.question_turn() == 3
    w._caption_s = 0.01
    assert w.question_turn() == 1  # never none: questions are not starved either
