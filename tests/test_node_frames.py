"""The node's frame intake against oversized and broken frames, and its decoding path: a compressed frame
is checked from its header in the callback and decoded in the worker.

The core checks run without ROS; the last test runs the node over real DDS: a 20000x20000 PNG bomb
(49 kB) is a counted bad frame within a diagnostics period, costs the node nothing, and captions go on.
"""

from __future__ import annotations

import io
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rosbags.typesys import Stores, get_typestore

from clip_vlm_core.config import DecodingConfig
from clip_vlm_core.images import MAX_IMAGE_BYTES, EncodedImage
from clip_vlm_core.stream import BadFrame, CaptionWorker, Frame, FramePairer, PairQueue, StreamStats
from clip_vlm_core.stream.frames import image_from_message

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "helpers"))
from image_bomb import png_bomb  # noqa: E402
from test_node import NODE, probe, ros_env, start_node, stop_node  # noqa: E402

pytestmark = pytest.mark.ros  # `make test` runs these under Kilted and Jazzy

MS = 1_000_000
VIEWS = ("CAM_FRONT", "CAM_BACK")
store = get_typestore(Stores.ROS2_HUMBLE)
CompressedImage = store.types["sensor_msgs/msg/CompressedImage"]
RawImage = store.types["sensor_msgs/msg/Image"]
Header = store.types["std_msgs/msg/Header"]
Time = store.types["builtin_interfaces/msg/Time"]
HEADER = Header(stamp=Time(sec=1, nanosec=0), frame_id="cam")


def jpeg(width: int = 160, height: int = 90, colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="JPEG")
    return out.getvalue()


def compressed(data: bytes, fmt: str = "jpeg"):
    return CompressedImage(header=HEADER, format=fmt, data=np.frombuffer(data, np.uint8))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the callback's checks ------------------------------------------------------------------------
def test_compressed_frame_stays_encoded_with_its_header_size():
    image = image_from_message(compressed(jpeg(1600, 900)))
    assert isinstance(image, EncodedImage) and (image.width, image.height) == (1600, 900)
    assert image.shape == (900, 1600, 3)  # what the pairer needs to black out a silent view


def test_png_bomb_is_a_bad_frame_without_decoding_it():
    bomb = png_bomb(20000, 20000)
    assert len(bomb) < 100_000  # 1.2 GB once decoded
    before, start = peak_rss_mb(), time.perf_counter()
    with pytest.raises(BadFrame, match="20000x20000 .* over the limit"):
        image_from_message(compressed(bomb, "png"))
    assert time.perf_counter() - start < 0.5 and peak_rss_mb() - before < 50


def test_raw_frame_over_the_pixel_limit_is_refused_before_its_buffer_is_read():
    # 20000x20000 rgb8 with a buffer of the right length would be 1.2 GB; the header alone decides.
    msg = RawImage(header=HEADER, height=20000, width=20000, encoding="rgb8", is_bigendian=0, step=60000,
                   data=np.zeros(16, np.uint8))
    with pytest.raises(BadFrame, match="raw image is 20000x20000 .* over the limit"):
        image_from_message(msg)


def test_compressed_frame_over_the_byte_limit_is_refused_before_it_is_copied():
    with pytest.raises(BadFrame, match="over the limit of 32 MiB"):
        image_from_message(compressed(bytes(MAX_IMAGE_BYTES + 1)))


def test_compressed_frame_without_a_readable_header_cannot_be_decoded():
    with pytest.raises(BadFrame, match="cannot be decoded"):
        image_from_message(compressed(b"\xff\xd8\xff\xe0 not a jpeg"))


# -- the worker decodes what it captions ------------------------------------------------------------
@pytest.fixture
def captioner(embedded_captioner):
    return embedded_captioner  # loaded once for the session (conftest.py)


def encoded_pair(stamp_ms: int, front: bytes, back: bytes):
    pairer = FramePairer(VIEWS, max_skew_ns=20 * MS, view_timeout_ns=1000 * MS)
    pairer.add(Frame("CAM_FRONT", stamp_ms * MS, stamp_ms * MS, image_from_message(compressed(front))))
    return pairer.add(Frame("CAM_BACK", stamp_ms * MS, stamp_ms * MS, image_from_message(compressed(back))))


def worker_for(captioner, queue: PairQueue, stats: StreamStats, published: list, rate_hz: float = 50.0):
    return CaptionWorker(captioner, queue, stats, lambda p, c: published.append((p.stamp_ns, c, time.monotonic())),
                         rate_hz=rate_hz, batch_size=4, newest_stamp_ns=lambda: None, source_clock_ns=time.time_ns,
                         decoding=DecodingConfig(max_new_tokens=3))


def test_frame_whose_body_does_not_decode_costs_its_pair_only(captioner):
    good = jpeg()
    corrupt = good[:300] + bytes(2000) + good[-2:]  # the header reads, the body does not
    queue, stats, published = PairQueue("all", 16, 10**15), StreamStats(VIEWS), []
    for pair in (encoded_pair(100, good, good), encoded_pair(200, corrupt, good), encoded_pair(300, good, good)):
        queue.put(pair)
    stats.received = dict.fromkeys(VIEWS, 3)  # as the callbacks counted them
    assert worker_for(captioner, queue, stats, published).tick() == 2
    assert [stamp for stamp, _, _ in published] == [100 * MS, 300 * MS]
    assert stats.bad == {"CAM_FRONT": 1, "CAM_BACK": 0} and stats.received == {"CAM_FRONT": 3, "CAM_BACK": 3}
    assert stats.dropped_bad_frame == 1 and "cannot be decoded" in stats.last_bad_reason["CAM_FRONT"]
    assert ("pairs_dropped_bad_frame", "1") in stats.report([]).values


def test_encoded_frames_caption_as_the_arrays_they_decode_to(captioner):
    from clip_vlm_core.stream.frames import decode_compressed

    front, back = jpeg(640, 360, (20, 200, 40)), jpeg(640, 360, (30, 30, 220))
    arrays = {"CAM_FRONT": decode_compressed(front), "CAM_BACK": decode_compressed(back)}
    queue, stats, published = PairQueue("all", 16, 10**15), StreamStats(VIEWS), []
    queue.put(encoded_pair(100, front, back))
    worker_for(captioner, queue, stats, published).tick()
    assert published[0][1] == captioner.caption([arrays], max_new_tokens=3)[0]


def test_a_pair_arriving_at_an_idle_worker_is_captioned_without_waiting_for_a_tick(captioner):
    queue, stats, published = PairQueue("all", 16, 10**15), StreamStats(VIEWS), []
    worker = worker_for(captioner, queue, stats, published, rate_hz=0.25)  # ticks at least 4 s apart
    worker.start()
    try:
        time.sleep(0.3)  # a fixed 4 s tick would have fired at start-up and fire next at 4 s
        put_at = time.monotonic()
        queue.put(encoded_pair(100, jpeg(), jpeg()))
        deadline = put_at + 20.0
        while not published and time.monotonic() < deadline:
            time.sleep(0.01)
        queue.put(encoded_pair(200, jpeg(), jpeg()))  # the next tick may not start before 4 s have passed
        while len(published) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        assert worker.stop()
    times = [at - put_at for _, _, at in published]
    assert len(published) == 2 and times[0] < 3.0, times  # a caption here takes ~0.1 s, ~1 s under load
    assert times[1] >= 4.0 - 0.05, times  # the second tick starts at least 4 s after the first


# -- over DDS -----------------------------------------------------------------------------------------
@pytest.mark.skipif(not NODE.exists(), reason="caption_node is not installed: run `make venv`")
def test_bomb_frame_is_counted_promptly_and_captions_go_on(tmp_path):
    env = ros_env()
    node = start_node({"policy": "all", "rate_hz": 20.0, "batch_size": 4, "queue_size": 64, "max_age_ms": 60000.0,
                       "max_new_tokens": 4}, env)
    try:
        bomb = probe(env, tmp_path, [
            {"kind": "bad", "view": "CAM_FRONT", "what": "bomb"},
            {"kind": "wait_diagnostics", "key": "CAM_FRONT.bad", "value": 1, "timeout": 5.0},
            {"kind": "pairs", "count": 3, "rate": 5.0},
            {"kind": "wait_captions", "count": 3, "timeout": 30.0},
        ])
        corrupt = probe(env, tmp_path, [
            {"kind": "bad", "view": "CAM_FRONT", "what": "corrupt_body", "paired": True},
            {"kind": "pairs", "count": 2, "rate": 5.0},
            {"kind": "wait_captions", "count": 2, "timeout": 30.0},
            {"kind": "wait_diagnostics", "key": "pairs_dropped_bad_frame", "value": 1, "timeout": 5.0},
        ])
    finally:
        stop_node(node)
    # Counted by the next diagnostics message (one a second), not after a stall; captions go on.
    assert bomb["waits"][0] < 2.5, bomb["waits"]
    assert "20000x20000" in bomb["diagnostics"]["CAM_FRONT.last_bad_reason"]
    assert [m["stamp_ns"] for m in bomb["markers"]] == bomb["sent_pairs"]
    # A frame whose header reads but whose body does not is found by the worker: counted, its pair dropped.
    diagnostics = corrupt["diagnostics"]
    assert [m["stamp_ns"] for m in corrupt["markers"]] == corrupt["sent_pairs"]
    assert diagnostics["CAM_FRONT.bad"] == "2" and diagnostics["CAM_BACK.bad"] == "0"
    assert "cannot be decoded" in diagnostics["CAM_FRONT.last_bad_reason"]
    assert diagnostics["pairs_dropped_bad_frame"] == "1" and diagnostics["inference_errors"] == "0"
