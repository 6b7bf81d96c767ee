"""What the live stream says about its inputs, without ROS: throttled warnings with their repeats counted,
losses counted from sequence numbers, reliability following the publishers, clock offsets reported while
they last, and raw encodings read as cv_bridge reads them."""

from __future__ import annotations

import numpy as np
import pytest

from clip_vlm_core.stream import BadFrame, StreamStats
from clip_vlm_core.stream.frames import decode_raw
from clip_vlm_core.stream.logs import ThrottledLog
from clip_vlm_core.stream.losses import MAX_PUBLISHERS_TRACKED, DeliveryLosses
from clip_vlm_core.stream.qos import ReliabilityFollower, followed_reliability

MS = 1_000_000
VIEWS = ("CAM_FRONT", "CAM_BACK")
YEARS_57_NS = int(56.9 * 365.25 * 86400 * 1e9)


class Lines:
    """A LogSink that keeps what it was given."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, text: str) -> None:
        self.lines.append(("info", text))

    def warning(self, text: str) -> None:
        self.lines.append(("warning", text))

    def error(self, text: str) -> None:
        self.lines.append(("error", text))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- throttled warnings ---------------------------------------------------------------------------------
def test_a_repeated_warning_is_said_once_a_period_with_its_repeats_counted():
    sink, clock = Lines(), Clock()
    log = ThrottledLog(sink, period_s=10.0, clock=clock)
    for n in range(21_087):  # 30 s of "question queue full" lines, as a flood once logged
        log.warning(f"question queue full: dropped question {n}", key="question_queue_full")
    assert sink.lines == [("warning", "question queue full: dropped question 0")]
    clock.now += 10.0
    log.warning("question queue full: dropped question 21087", key="question_queue_full")
    assert sink.lines[-1] == ("warning", "question queue full: dropped question 21087 (21086 more like it in the "
                                         "last 10 s)")
    assert log.count("question_queue_full") == 21_088


def test_repeats_held_back_are_said_by_flush_once_the_period_is_over():
    sink, clock = Lines(), Clock()
    log = ThrottledLog(sink, period_s=10.0, clock=clock)
    for _ in range(3):
        log.error("CAM_BACK frame refused: empty compressed image", key="bad_frame:CAM_BACK")
    log.flush()
    assert len(sink.lines) == 1  # the period is not over yet
    clock.now += 10.5
    log.flush()
    log.flush()  # said once
    assert sink.lines[1] == ("error", "CAM_BACK frame refused: empty compressed image (2 times more in the last "
                                      "10 s, this the latest)")
    assert len(sink.lines) == 2


def test_distinct_kinds_never_hide_each_other_and_lines_without_a_key_are_never_throttled():
    sink = Lines()
    log = ThrottledLog(sink, period_s=10.0, clock=Clock())
    for _ in range(5):
        log.warning("stamp went back 5.0 s", key="time_jump")
        log.warning("CAM_FRONT frame refused: empty", key="bad_frame:CAM_FRONT")
        log.warning("CAM_BACK frame refused: empty", key="bad_frame:CAM_BACK")
        log.info("question 'Is it day?' -> answer 'day'")
    assert [text for _, text in sink.lines].count("question 'Is it day?' -> answer 'day'") == 5
    assert len(sink.lines) == 3 + 5


# -- losses before the node takes a message -------------------------------------------------------------
def test_sequence_gaps_count_what_each_publisher_lost():
    losses = DeliveryLosses()
    for seq in (1, 2, 5, 6, 10):  # 3, 4, 7, 8, 9 lost
        losses.took(b"camera", seq)
    for seq in (40, 41, 43):  # a late subscriber starts at 40: nothing before counts; 42 lost
        losses.took(b"another camera", seq)
    assert (losses.taken, losses.lost) == (8, 6)


def test_interleaved_publishers_and_a_restarted_one_are_told_apart():
    losses = DeliveryLosses()
    for a, b in zip(range(1, 6), range(100, 105), strict=True):
        losses.took(b"a", a)
        losses.took(b"b", b)
    losses.took(b"a", 1)  # restarted with the same id: counts from here
    losses.took(b"a", 2)
    assert losses.lost == 0


def test_without_publisher_ids_gaps_count_only_while_one_publisher_is_matched():
    losses = DeliveryLosses()
    losses.took(None, 1, publishers_matched=1)
    losses.took(None, 4, publishers_matched=1)  # 2 lost
    losses.took(None, 500, publishers_matched=2)  # two publishers' numbers interleave: nothing told
    losses.took(None, 7, publishers_matched=2)
    losses.took(None, 8, publishers_matched=1)  # a new baseline
    losses.took(None, 9, publishers_matched=1)
    assert losses.lost == 2


def test_middleware_events_count_where_no_sequence_numbers_come():
    losses = DeliveryLosses()
    losses.took(None, None)
    losses.middleware_lost(3)
    losses.middleware_lost(4)
    assert losses.lost == 7
    losses.took(b"a", 1)
    losses.took(b"a", 3)
    assert losses.lost == 1  # sequence numbers cover what the events say, and more


def test_a_peer_making_publishers_by_the_thousand_does_not_grow_memory():
    losses = DeliveryLosses()
    for n in range(10 * MAX_PUBLISHERS_TRACKED):
        losses.took(n.to_bytes(16, "little"), 1)
    assert len(losses._last) == MAX_PUBLISHERS_TRACKED


# -- reliability following the publishers ---------------------------------------------------------------
@pytest.mark.parametrize(("offered", "current", "chosen"), [
    ([], "reliable", "reliable"),  # nobody seen yet: reliable
    (["best_effort"], "reliable", "best_effort"),  # a sensor-data camera
    (["reliable", "best_effort"], "reliable", "best_effort"),  # any best effort wins
    (["reliable", "reliable"], "best_effort", "reliable"),  # the best-effort one left
    ([], "best_effort", "best_effort"),  # everyone left: keep what was chosen
])
def test_reliability_follows_rosbag2s_rule(offered, current, chosen):
    assert followed_reliability(offered, current) == chosen


def test_a_follower_counts_each_change_once_and_a_pinned_one_explains_incompatible_publishers():
    auto = ReliabilityFollower("CAM_FRONT", "auto")
    assert auto.current == "reliable"
    assert auto.follow(["best_effort"]) and not auto.follow(["best_effort", "best_effort"])
    assert auto.follow(["reliable"]) and auto.changes == 2
    pinned = ReliabilityFollower("CAM_BACK", "reliable")
    assert not pinned.follow(["best_effort"]) and pinned.current == "reliable"
    reason = pinned.incompatible_publisher("reliability")
    assert reason.startswith("CAM_BACK's publisher offers best effort; this node asks reliable")
    assert dict(pinned.report())["CAM_BACK.qos_incompatible"] == "1"


# -- clock offsets, while they last ---------------------------------------------------------------------
def test_a_clock_offset_that_went_away_is_no_longer_reported():
    stats = StreamStats(VIEWS)
    stats.caption_published(YEARS_57_NS, 300 * MS, stamp_ns=10**9)
    assert "56.9 years behind" in dict(stats.report([]).values)["source_clock_offset"]
    stats.caption_published(120 * MS, 300 * MS, stamp_ns=2 * 10**18)  # the replay now publishes /clock
    values = dict(stats.report([]).values)
    assert "source_clock_offset" not in values and stats.source_clock_hint(use_sim_time=True) is None
    assert values["source_clock_mismatches"] == "1"  # the count is kept


@pytest.mark.parametrize(("stamp_ns", "sim", "says"), [
    (0, False, "the camera driver leaves header.stamp at 0"),
    (0, True, "the camera driver leaves header.stamp at 0"),
    (10**9, False, "a camera clock not synchronised"),
    (10**9, True, "is /clock published"),
])
def test_the_clock_hint_fits_a_live_camera_and_a_replay(stamp_ns, sim, says):
    stats = StreamStats(VIEWS)
    stats.caption_published(YEARS_57_NS, 300 * MS, stamp_ns=stamp_ns)
    hint = stats.source_clock_hint(use_sim_time=sim)
    assert says in hint and len(hint) <= 128  # ros2 topic echo cuts strings at 128 characters
    assert "replaying a bag?" not in hint
    if stamp_ns == 0:
        assert dict(stats.report([]).values)["source_clock_offset"] == "frame stamps are 0 (unset)"


# -- raw encodings as cv_bridge reads them --------------------------------------------------------------
@pytest.mark.parametrize(("encoding", "channels", "dtype"), [
    ("8UC3", 3, np.uint8), ("8UC4", 4, np.uint8), ("16UC3", 3, np.uint16), ("16UC4", 4, np.uint16)])
def test_opencv_type_encodings_are_read_in_opencvs_bgr_order(encoding, channels, dtype):
    pixel = np.zeros(channels, dtype)
    pixel[0] = np.iinfo(dtype).max  # blue in OpenCV's order
    if channels == 4:
        pixel[3] = np.iinfo(dtype).max
    rgb = decode_raw(encoding, 1, 1, channels * pixel.itemsize, False, pixel.tobytes())
    assert rgb.reshape(-1).tolist() == [0, 0, 255]


def test_8uc1_is_read_as_mono():
    assert decode_raw("8UC1", 1, 2, 2, False, bytes([7, 200])).reshape(-1).tolist() == [7, 7, 7, 200, 200, 200]


@pytest.mark.parametrize(("encoding", "width", "step", "row_bytes"), [
    ("rgb8", 40, 100, 120), ("mono16", 10, 19, 20), ("8UC4", 3, 11, 12), ("bgr8", 1, 0, 3)])
def test_a_step_shorter_than_a_row_says_so(encoding, width, step, row_bytes):
    with pytest.raises(BadFrame) as refused:
        decode_raw(encoding, 2, width, step, False, bytes(max(step, 1) * 2))
    assert str(refused.value) == (f"step {step} is too small: a row of {width} {encoding} pixels takes {row_bytes} "
                                  "bytes (step is the bytes per row)")


def test_a_kind_may_have_its_own_period():
    sink, clock = Lines(), Clock()
    log = ThrottledLog(sink, period_s=10.0, clock=clock)
    for n in range(3):
        log.info(f"question {n} -> answer 'day'", key="answer", period_s=1.0)
        clock.now += 1.0  # a person asking once a second: every answer said
    for n in range(100):
        log.info(f"flood {n} -> answer 'day'", key="answer", period_s=1.0)  # a flood: one line
    assert [text for _, text in sink.lines] == [*(f"question {n} -> answer 'day'" for n in range(3)),
                                                "flood 0 -> answer 'day'"]


# -- each input's budget ----------------------------------------------------------------------------------
def test_a_budget_lets_through_its_rate_and_a_burst_of_a_tenth_of_a_second():
    from clip_vlm_core.stream.budget import RateBudget

    clock = Clock()
    budget = RateBudget(50.0, clock=clock)
    taken = 0
    for _ in range(1000):  # a flood arriving all at once: the burst passes, then nothing
        if budget.available():
            budget.spend()
            taken += 1
    assert taken == 5 and budget.exhausted == 1
    for _ in range(100):  # then 10 s at 1,000 a second: 50 a second pass
        clock.now += 0.1
        for _ in range(100):
            if budget.available():
                budget.spend()
                taken += 1
    assert 0.9 * 500 <= taken - 5 <= 500  # about its rate, never more
