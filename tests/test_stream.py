"""The node's core without ROS: decoding, stamp pairing, queue policies, parameter validation, worker."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image
from rosbags.typesys import Stores, get_typestore

from clip_vlm_core.config import DecodingConfig
from clip_vlm_core.errors import UserError
from clip_vlm_core.stream import (
    PARAMETERS,
    BadFrame,
    CaptionWorker,
    Frame,
    FramePairer,
    PairQueue,
    StreamStats,
    decode_image_message,
    validate_parameters,
)
from clip_vlm_core.stream.config import replace_parameter

MS = 1_000_000
VIEWS = ("CAM_FRONT", "CAM_BACK")
store = get_typestore(Stores.ROS2_HUMBLE)
CompressedImage = store.types["sensor_msgs/msg/CompressedImage"]
Image_ = store.types["sensor_msgs/msg/Image"]
Header = store.types["std_msgs/msg/Header"]
Time = store.types["builtin_interfaces/msg/Time"]
HEADER = Header(stamp=Time(sec=1, nanosec=0), frame_id="cam")


def jpeg(width: int = 32, height: int = 18, colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="JPEG")
    return out.getvalue()


def raw(encoding: str, width: int, height: int, step: int, data: bytes):
    return Image_(header=HEADER, height=height, width=width, encoding=encoding, is_bigendian=0, step=step,
                  data=np.frombuffer(data, np.uint8))


def frame(view: str, stamp_ms: float, received_ms: float | None = None, shape=(4, 6, 3)) -> Frame:
    received = stamp_ms if received_ms is None else received_ms
    return Frame(view, int(stamp_ms * MS), int(received * MS), np.full(shape, 7, np.uint8))


def pairer(**kw) -> FramePairer:
    args = {"views": VIEWS, "max_skew_ns": 20 * MS, "view_timeout_ns": 1000 * MS} | kw
    return FramePairer(**args)


# -- decoding ------------------------------------------------------------------------------------
def test_jpeg_message_decodes_to_rgb_array():
    msg = CompressedImage(header=HEADER, format="jpeg", data=np.frombuffer(jpeg(), np.uint8))
    image = decode_image_message(msg)
    assert image.shape == (18, 32, 3) and image.dtype == np.uint8
    assert image[9, 16, 0] > 150 and image[9, 16, 2] < 80  # red stays red: BGR was converted


def test_bgr8_raw_message_with_row_padding_decodes():
    width, height, step = 3, 2, 12  # 9 bytes of pixels + 3 of padding per row
    rows = bytes([255, 0, 0] * width + [0, 0, 0]) * height  # blue in BGR
    image = decode_image_message(raw("bgr8", width, height, step, rows))
    assert image.shape == (2, 3, 3) and image[1, 2].tolist() == [0, 0, 255]


def test_mono8_raw_message_becomes_three_channels():
    image = decode_image_message(raw("mono8", 4, 2, 4, bytes(range(8))))
    assert image.shape == (2, 4, 3) and image[1, 3].tolist() == [7, 7, 7]


@pytest.mark.parametrize(
    "msg, reason",
    [
        (CompressedImage(header=HEADER, format="jpeg", data=np.frombuffer(b"\xff\xd8garbage", np.uint8)),
         "cannot be decoded"),
        (CompressedImage(header=HEADER, format="jpeg", data=np.zeros(0, np.uint8)), "empty"),
        (raw("rgb8", 0, 0, 0, b""), "zero-size"),
        (raw("weird42", 2, 2, 6, bytes(12)), "unknown encoding"),
        (raw("rgb8", 4, 4, 12, bytes(40)), "needs 48 bytes"),
    ],
    ids=["undecodable-jpeg", "empty-jpeg", "zero-size", "unknown-encoding", "short-buffer"],
)
def test_bad_messages_raise_bad_frame_naming_the_problem(msg, reason):
    with pytest.raises(BadFrame, match=reason):
        decode_image_message(msg)


# -- pairing -------------------------------------------------------------------------------------
def test_frames_within_skew_pair_with_the_first_views_stamp():
    p = pairer()
    assert p.add(frame("CAM_BACK", 1012)) is None
    pair = p.add(frame("CAM_FRONT", 1000))
    assert pair is not None and pair.stamp_ns == 1000 * MS and set(pair.images) == set(VIEWS)


def test_frames_further_apart_than_skew_do_not_pair():
    p = pairer()
    p.add(frame("CAM_FRONT", 1000))
    assert p.add(frame("CAM_BACK", 1030)) is None


def test_older_frames_left_behind_by_a_pair_count_as_unpaired():
    p = pairer()
    p.add(frame("CAM_FRONT", 1000))
    p.add(frame("CAM_FRONT", 1100))
    assert p.add(frame("CAM_BACK", 1101)) is not None
    assert p.counters.unpaired == {"CAM_FRONT": 1, "CAM_BACK": 0}


def test_stamp_jumping_backwards_restarts_pairing_and_counts_what_it_discards():
    p = pairer()
    p.add(frame("CAM_FRONT", 5000))
    p.add(frame("CAM_FRONT", 1000))  # the bag looped
    assert p.counters.resets == 1 and p.counters.last_jump_ns == 4000 * MS
    assert p.counters.discarded_at_reset == {"CAM_FRONT": 1, "CAM_BACK": 0}
    assert p.add(frame("CAM_BACK", 5000)) is None  # never paired across the jump
    assert p.newest_stamp_ns == 5000 * MS


def test_a_looping_bag_pairs_its_first_frames_of_the_new_loop():
    """Views jump back one after another; a last old frame arriving late must not cost the new pair."""
    p = pairer()
    assert p.add(frame("CAM_FRONT", 9000)) is None
    assert p.add(frame("CAM_BACK", 9000)) is not None
    assert p.add(frame("CAM_FRONT", 9500)) is None  # old loop, its partner comes late
    assert p.add(frame("CAM_FRONT", 0)) is None  # new loop: front jumps back
    assert p.add(frame("CAM_BACK", 9500)) is None  # the late old partner: nothing to pair with
    pair = p.add(frame("CAM_BACK", 0))  # back jumps back too, and pairs with front's new frame
    assert pair is not None and pair.stamp_ns == 0
    assert p.counters.resets == 2
    assert p.counters.discarded_at_reset == {"CAM_FRONT": 1, "CAM_BACK": 1}


def test_silent_view_is_reported_after_the_timeout():
    p = pairer(view_timeout_ns=500 * MS)
    p.add(frame("CAM_FRONT", 1000, received_ms=1000))
    assert p.silent_views(now_ns=1400 * MS) == ["CAM_BACK"]
    p.add(frame("CAM_BACK", 1450, received_ms=1450))
    assert p.silent_views(now_ns=1480 * MS) == []


def test_silent_view_is_filled_black_when_captioning_missing_views():
    p = pairer(view_timeout_ns=500 * MS, caption_missing_views=True)
    p.add(frame("CAM_BACK", 0, shape=(9, 16, 3)))
    pair = p.add(frame("CAM_FRONT", 2000))  # back has been silent since 500 ms
    assert pair.substituted == ("CAM_BACK",)
    assert pair.images["CAM_BACK"].shape == (9, 16, 3) and not pair.images["CAM_BACK"].any()


# -- queue policies ------------------------------------------------------------------------------
def make_pair(stamp_ms: float, received_ms: float | None = None):
    p = pairer()
    p.add(frame("CAM_FRONT", stamp_ms, received_ms))
    return p.add(frame("CAM_BACK", stamp_ms, received_ms))


def test_latest_policy_keeps_only_the_freshest_pair():
    q = PairQueue("latest", queue_size=10, max_age_ns=10_000 * MS)
    for t in (100, 200, 300):
        q.put(make_pair(t))
    taken = q.take(4, newest_stamp_ns=300 * MS, now_ns=300 * MS)
    assert [p.stamp_ns for p in taken] == [300 * MS] and q.counters.superseded == 2


def test_all_policy_drops_the_oldest_when_full():
    q = PairQueue("all", queue_size=2, max_age_ns=10_000 * MS)
    for t in (100, 200, 300):
        q.put(make_pair(t))
    taken = q.take(4, newest_stamp_ns=300 * MS, now_ns=300 * MS)
    assert [p.stamp_ns for p in taken] == [200 * MS, 300 * MS] and q.counters.overflow == 1


def test_pair_behind_the_newest_source_stamp_is_stale_even_with_old_bag_stamps():
    q = PairQueue("all", queue_size=10, max_age_ns=500 * MS)
    q.put(make_pair(1000, received_ms=0))
    q.put(make_pair(1900, received_ms=0))
    taken = q.take(4, newest_stamp_ns=2000 * MS, now_ns=10 * MS)
    assert [p.stamp_ns for p in taken] == [1900 * MS] and q.counters.stale == 1


def test_pair_that_waited_too_long_here_is_stale():
    q = PairQueue("all", queue_size=10, max_age_ns=500 * MS)
    q.put(make_pair(1000, received_ms=0))
    assert q.take(4, newest_stamp_ns=1000 * MS, now_ns=600 * MS) == [] and q.counters.stale == 1


# -- parameters ----------------------------------------------------------------------------------
def test_defaults_validate():
    config = validate_parameters({})
    assert config.views == VIEWS and config.policy == "latest"
    # Relative, so a namespace or a remap moves the camera inputs with the node.
    assert config.topic_for("CAM_FRONT") == "CAM_FRONT/image_raw/compressed"


@pytest.mark.parametrize("template", ["{view}/image_raw", "/{view}/image_raw", "~/{view}/image", "cams/{view}"])
def test_topic_template_may_be_relative_absolute_or_private(template):
    assert validate_parameters({"topic_template": template}).topic_for("CAM_BACK").endswith("/compressed")


@pytest.mark.parametrize("template", ["{view}/image raw", "{view}//image", "{view}/", "{view}/2d", "{view}__x"])
def test_topic_template_giving_an_invalid_topic_name_is_refused(template):
    with pytest.raises(UserError, match="not a valid ROS topic name"):
        validate_parameters({"topic_template": template})


@pytest.mark.parametrize(
    "values, named",
    [
        ({"rate_hz": 0.0}, "rate_hz"),
        ({"policy": "newest"}, "policy"),
        ({"batch_size": 0}, "batch_size"),
        ({"views": []}, "views"),
        ({"device": "tpu"}, "device"),
        ({"topic_template": "/front/image"}, "topic_template"),
        ({"rate_hz": "fast"}, "rate_hz"),
        ({"rate": 2.0}, "rate"),
    ],
)
def test_invalid_parameter_is_refused_naming_it(values, named):
    with pytest.raises(UserError, match=named):
        validate_parameters(values)


def test_whole_numbers_are_accepted_for_float_parameters():
    assert validate_parameters({"rate_hz": 5}).rate_hz == 5.0


def test_read_only_parameter_cannot_change_live():
    config = validate_parameters({})
    assert replace_parameter(config, "rate_hz", 4.0).rate_hz == 4.0
    with pytest.raises(UserError, match="read-only"):
        replace_parameter(config, "views", ["CAM_FRONT"])


def test_every_parameter_default_is_valid():
    config = validate_parameters({spec.name: spec.default for spec in PARAMETERS})
    assert config.model == ""


# -- worker with the real tiny captioner ---------------------------------------------------------
@pytest.fixture
def captioner(embedded_captioner):
    return embedded_captioner  # loaded once for the session (conftest.py)


def run_worker(captioner, pairs, policy="all", batch_size=4):
    q = PairQueue(policy, queue_size=16, max_age_ns=10**15)
    for pair in pairs:
        q.put(pair)
    stats, published = StreamStats(VIEWS), []
    worker = CaptionWorker(captioner, q, stats, lambda p, c: published.append((p.stamp_ns, c)), rate_hz=50.0,
                           batch_size=batch_size, newest_stamp_ns=lambda: None,
                           source_clock_ns=time.time_ns, decoding=DecodingConfig(max_new_tokens=4))
    worker.tick()
    return published, stats


def test_worker_captions_a_batch_in_one_call_and_publishes_each(captioner, monkeypatch):
    batches = []  # the batch size of each call of the model's generate()
    generate = captioner.model.generate

    def counted(**inputs):
        batches.append(int(inputs["input_ids"].shape[0]))
        return generate(**inputs)

    monkeypatch.setattr(captioner.model, "generate", counted)
    pairs = [make_pair(t) for t in (100, 200, 300)]
    published, stats = run_worker(captioner, pairs)
    assert batches == [3], "three pairs must be captioned by one model call"
    assert [s for s, _ in published] == [100 * MS, 200 * MS, 300 * MS]
    assert all(isinstance(c, str) and c for _, c in published) and stats.captions == 3


def test_inference_error_is_counted_and_the_worker_goes_on(captioner):
    p = pairer()
    p.add(frame("CAM_FRONT", 100, shape=(1, 400, 3)))  # an aspect ratio Qwen's processor refuses
    bad = p.add(frame("CAM_BACK", 100, shape=(1, 400, 3)))
    published, stats = run_worker(captioner, [bad])
    assert published == [] and stats.inference_errors == 1 and stats.dropped_on_error == 1
    published, _ = run_worker(captioner, [make_pair(200)])
    assert len(published) == 1


# -- accounting: every pair made is captioned, waiting, or dropped for a named reason ---------------
def test_every_pair_is_accounted_for_through_a_looping_replay(captioner):
    """Core objects wired as the node wires them; stamps go backwards twice (a bag looping)."""
    p = pairer()
    q = PairQueue("all", queue_size=2, max_age_ns=10**15)
    stats, published = StreamStats(VIEWS), []
    worker = CaptionWorker(captioner, q, stats, lambda pair, c: published.append(pair.stamp_ns), rate_hz=50.0,
                           batch_size=3, newest_stamp_ns=lambda: p.newest_stamp_ns,
                           source_clock_ns=time.time_ns, decoding=DecodingConfig(max_new_tokens=2))
    for _loop in range(3):
        for i in range(9):  # 9 pairs per loop into a queue of 2, one batch taken per 3 pairs
            for view in VIEWS:
                pair = p.add(frame(view, 1000 + 100 * i))
                if pair is not None:
                    q.put(pair)
            if i % 3 == 2:
                worker.tick()
    while worker.tick():
        pass
    dropped = q.counters.superseded + q.counters.overflow + q.counters.stale + stats.dropped_on_error
    assert p.counters.resets == 2 and p.counters.pairs == 27
    assert stats.captions == len(published) and q.counters.overflow > 0
    assert p.counters.pairs == stats.captions + dropped + len(q) + worker.in_flight


def test_a_caption_that_cannot_be_published_is_counted_and_the_worker_goes_on(captioner):
    def publish(pair, caption):
        if pair.stamp_ns == 100 * MS:
            raise RuntimeError("publisher gone")

    q = PairQueue("all", queue_size=8, max_age_ns=10**15)
    for t in (100, 200):
        q.put(make_pair(t))
    stats = StreamStats(VIEWS)
    worker = CaptionWorker(captioner, q, stats, publish, rate_hz=50.0, batch_size=4, newest_stamp_ns=lambda: None,
                           source_clock_ns=time.time_ns, decoding=DecodingConfig(max_new_tokens=2))
    assert worker.tick() == 1
    assert stats.captions == 1 and stats.dropped_on_error == 1 and worker.in_flight == 0
    # A publish error, not an inference error (it used to count as one): the model did its part.
    assert stats.publish_errors == 1 and stats.inference_errors == 0
    assert "publisher gone" in stats.last_publish_error and not stats.last_inference_error


def test_diagnostics_say_which_failure_left_no_caption():
    stats = StreamStats(VIEWS)
    stats.publish_failed("RuntimeError: publisher gone")
    assert (stats.report([]).level, stats.report([]).message) == ("ERROR", "no caption could be published so far")
    stats = StreamStats(VIEWS)
    stats.inference_failed("RuntimeError: out of memory", 2)
    assert (stats.report([]).level, stats.report([]).message) == ("ERROR", "every caption attempt failed so far")
    stats.caption_published(10 * MS, 10 * MS)
    assert stats.report([]).level == "OK"


# -- latency against the node's clock ------------------------------------------------------------------
def test_source_latency_on_another_clock_is_left_out_and_said():
    stats = StreamStats(VIEWS)
    eight_years_ns = int(8.1 * 365.25 * 86400 * 1e9)
    stats.caption_published(eight_years_ns, 300 * MS)  # a 2018 bag against today's wall clock
    values = dict(stats.report([]).values)
    assert values["latency_source_to_publish_p50_ms"] == "nan"
    assert values["latency_receive_to_publish_p50_ms"] == "300.0"
    assert values["source_clock_offset"] == "frame stamps 8.1 years behind this node's clock"
    stats.caption_published(250 * MS, 300 * MS)  # the same bag with /clock and use_sim_time
    values = dict(stats.report([]).values)
    assert values["latency_source_to_publish_p50_ms"] == "250.0" and values["source_clock_mismatches"] == "1"


# -- decoding settings: one object from the parameters to generate() -------------------------------------------
def test_the_nodes_decoding_parameters_become_one_frozen_decoding_config():
    import dataclasses

    config = replace_parameter(validate_parameters({"max_new_tokens": 12, "do_sample": True, "top_k": 5}),
                               "repetition_penalty", 1.2)
    decoding = config.decoding()
    assert decoding == DecodingConfig(max_new_tokens=12, do_sample=True, top_k=5, repetition_penalty=1.2)
    assert validate_parameters({}).decoding().repetition_penalty is None  # 0.0: the model's own, resolved later
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoding.max_new_tokens = 3


def test_the_worker_hands_the_captioner_its_decoding_config_itself(captioner, monkeypatch):
    seen = []
    caption = captioner.caption

    def recorded(batch, instructions=None, decoding=None, **overrides):
        seen.append((decoding, overrides))
        return caption(batch, instructions, decoding, **overrides)

    monkeypatch.setattr(captioner, "caption", recorded)
    decoding = DecodingConfig(max_new_tokens=3)
    q = PairQueue("all", queue_size=4, max_age_ns=10**15)
    q.put(make_pair(100))
    worker = CaptionWorker(captioner, q, StreamStats(VIEWS), lambda p, c: None, rate_hz=50.0, batch_size=4,
                           newest_stamp_ns=lambda: None, source_clock_ns=time.time_ns, decoding=decoding)
    assert worker.tick() == 1
    assert len(seen) == 1 and seen[0][0] is decoding and seen[0][1] == {}


def test_a_decoding_config_and_its_shorthand_caption_alike(captioner):
    pair = make_pair(100).images
    assert captioner.caption([pair], decoding=DecodingConfig(max_new_tokens=5)) == \
        captioner.caption([pair], max_new_tokens=5)
    resolved = captioner.decoding_in_effect(DecodingConfig(max_new_tokens=5))
    assert resolved.max_new_tokens == 5 and resolved.eos_token_ids and resolved.repetition_penalty is not None
