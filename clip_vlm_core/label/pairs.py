"""A bag's camera frames, paired by stamp exactly as the caption node pairs them live.

The node's own code does the work: each message is read as the node's callback reads it
(`image_from_message`: a compressed frame's header and size checked, a raw frame converted to RGB; a
bad frame is counted and never paired), then handed to the node's `FramePairer` with the same
`max_skew_ms` and views, in the bag's recording order, without substituting silent views. So a bag
labelled offline gives the pairs a node captioning its replay under policy `all` would caption.

Each pair keeps every view's stamp and log time (the bag's time of the message). A pair's place in the
bag (`offset_ns`) is its earliest frame's log time from the bag's start: `ros2 bag play --start-offset`
with that many seconds plays both of its frames. `--every S` keeps the first pair of every S seconds
of the bag (windows counted from its start), so the choice never depends on where a run started.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clip_vlm_core.bags import messages as m
from clip_vlm_core.bags.reader import Bag
from clip_vlm_core.errors import UserError
from clip_vlm_core.images import EncodedImage
from clip_vlm_core.stream import BadFrame, Frame, FramePairer, image_from_message, stamp_to_ns

DEFAULT_TOPIC_TEMPLATE = "/{view}/image_raw"  # the node's `{view}/image_raw`, in the root namespace
TRANSPORTS = ("auto", "compressed", "raw")
IMAGE_TYPES = {"compressed": m.COMPRESSED_IMAGE, "raw": m.RAW_IMAGE}


@dataclass(frozen=True)
class CameraTopics:
    """Where a bag keeps each view's frames."""

    views: tuple[str, ...]
    topics: tuple[str, ...]  # one per view, in view order
    transport: str  # compressed | raw

    @property
    def msgtype(self) -> str:
        return IMAGE_TYPES[self.transport]


def camera_topics(bag: Bag, views: Sequence[str], template: str = DEFAULT_TOPIC_TEMPLATE,
                  transport: str = "auto") -> CameraTopics:
    """Each view's image topic in the bag: `template` with the view, plus `/compressed` for compressed
    frames (as image_transport names them). `auto` takes compressed frames where the bag has them for
    every view, else raw ones. A bag without them is a UserError naming what is missing."""
    known = {t.name: t for t in bag.topics}
    choices = ("compressed", "raw") if transport == "auto" else (transport,)
    tried = []
    for kind in choices:
        topics = tuple(template.format(view=v) + ("/compressed" if kind == "compressed" else "") for v in views)
        tried.append(" and ".join(topics))
        if all(t in known for t in topics):
            for topic in topics:
                if known[topic].msgtype != IMAGE_TYPES[kind]:
                    raise UserError(f"bag {bag.shown}: topic {topic} holds {known[topic].msgtype}, not "
                                    f"{IMAGE_TYPES[kind]}")
            return CameraTopics(tuple(views), topics, kind)
    return _missing(bag, tried, known)


def _missing(bag: Bag, tried: list[str], known: dict) -> CameraTopics:
    images = sorted(n for n, t in known.items() if t.msgtype in IMAGE_TYPES.values())
    has = f"its image topics are {', '.join(images)}" if images else "it has no image topic"
    raise UserError(f"bag {bag.shown} has no camera topics for the model's views (looked for {' or '.join(tried)}; "
                    f"{has}; see --topic-template)")


def estimated_pairs(bag: Bag, cameras: CameraTopics, every_s: float = 0.0) -> int:
    """At most this many pairs: the fewest frames of any view (fewer with --every)."""
    counts = {t.name: t.count for t in bag.topics}
    pairs = min(counts[t] for t in cameras.topics)
    if every_s > 0:
        pairs = min(pairs, int(bag.duration_ns / 1e9 / every_s) + 1)
    return pairs


@dataclass(frozen=True)
class BagFrame:
    """A frame as the pairer holds it: the image as the node keeps it, with its stamp and log time."""

    image: EncodedImage | np.ndarray
    stamp_ns: int
    log_ns: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.image.shape


@dataclass(frozen=True)
class BagPair:
    stamp_ns: int  # the first view's stamp, as the node stamps its caption
    offset_ns: int  # its earliest frame's log time, from the bag's start
    log_ns: int  # the log time of the first view's frame (where a written caption goes)
    frame_id: str
    stamps_ns: tuple[int, ...]  # each view's stamp, in view order
    images: tuple[Any, ...]  # each view's image (EncodedImage or HxWx3 RGB array), in view order


@dataclass
class PairingReport:
    frames: int = 0
    pairs: int = 0  # made by the pairer
    selected: int = 0  # kept (all of them, or one every --every seconds)
    bad_frames: dict[str, int] = field(default_factory=dict)  # per view
    bad_reason: str = ""  # the last bad frame's, with its view
    unpaired: int = 0
    resets: int = 0  # stamps that went back (a bag recorded across a camera restart)


def bag_pairs(bag: Bag, cameras: CameraTopics, max_skew_ms: float, every_s: float = 0.0,
              report: PairingReport | None = None) -> Iterator[BagPair]:
    """The bag's pairs in recording order (one every `every_s` seconds of the bag when > 0)."""
    report = report if report is not None else PairingReport()
    view_of = dict(zip(cameras.topics, cameras.views, strict=True))
    pairer = FramePairer(cameras.views, max_skew_ns=int(max_skew_ms * 1e6), view_timeout_ns=2**62)
    every_ns = int(every_s * 1e9)
    last_window = None
    for topic, log_ns, raw in bag.messages(cameras.topics):
        view = view_of[topic]
        report.frames += 1
        try:
            msg = _deserialize(raw, cameras.msgtype)
            image = image_from_message(msg)
        except BadFrame as exc:
            report.bad_frames[view] = report.bad_frames.get(view, 0) + 1
            report.bad_reason = f"{view}: {exc}"
            continue
        stamp = stamp_to_ns(msg.header.stamp)
        pair = pairer.add(Frame(view, stamp, log_ns, BagFrame(image, stamp, log_ns), msg.header.frame_id))
        if pair is None:
            continue
        frames = [pair.images[v] for v in cameras.views]
        offset = min(f.log_ns for f in frames) - bag.start_ns
        if every_ns:
            window = offset // every_ns
            if window == last_window:
                continue
            last_window = window
        report.selected += 1
        yield BagPair(pair.stamp_ns, offset, frames[0].log_ns, pair.frame_id, tuple(f.stamp_ns for f in frames),
                      tuple(f.image for f in frames))
    counters = pairer.counters
    report.pairs = counters.pairs
    report.unpaired = sum(counters.unpaired.values()) + sum(counters.discarded_at_reset.values())
    report.resets = counters.resets


def _deserialize(raw: Any, msgtype: str) -> Any:
    """A camera message from CDR bytes; a message that does not parse is a bad frame, as a corrupt one."""
    try:
        return m.deserialize(raw, msgtype)
    except Exception as exc:  # rosbags raises struct, index or value errors on a damaged message
        raise BadFrame(f"message does not parse as {msgtype} ({type(exc).__name__})") from None
