"""`FramePairer`: one frame per view, matched by header stamp, becomes one `FramePair` for the captioner.

Cameras fire at slightly different times, so frames are matched when their stamps lie within
`max_skew_ns` of each other. Each view keeps only a few recent frames; a frame that finds no partner
before it is pushed out is counted as unpaired. A stamp that jumps backwards by more than the skew
(a bag played in a loop, a restarted driver) restarts pairing rather than pairing across the jump:
frames from before the jump are discarded and counted, frames already on the new timeline are kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from clip_vlm_core.stream.frames import Frame

FRAMES_KEPT_PER_VIEW = 4  # a few frames of slack for views whose messages arrive out of step


@dataclass(frozen=True)
class FramePair:
    """Frames of every view taken at (nearly) the same time; stamped with the first view's stamp."""

    stamp_ns: int
    received_ns: int  # monotonic time the pair became complete
    images: dict[str, np.ndarray]
    frame_id: str = ""
    substituted: tuple[str, ...] = ()  # silent views filled in with a black image


@dataclass
class PairerCounters:
    unpaired: dict[str, int] = field(default_factory=dict)
    substituted: dict[str, int] = field(default_factory=dict)
    discarded_at_reset: dict[str, int] = field(default_factory=dict)  # frames from before a backwards jump
    resets: int = 0
    pairs: int = 0
    last_jump_ns: int = 0  # how far the stamp went back at the last reset


class FramePairer:
    def __init__(
        self,
        views: Sequence[str],
        max_skew_ns: int,
        view_timeout_ns: int,
        caption_missing_views: bool = False,
        started_ns: int = 0,
    ) -> None:
        self.views = tuple(views)
        self.max_skew_ns = max_skew_ns
        self.view_timeout_ns = view_timeout_ns
        self.caption_missing_views = caption_missing_views
        self.newest_stamp_ns: int | None = None
        self.counters = PairerCounters(
            unpaired=dict.fromkeys(self.views, 0),
            substituted=dict.fromkeys(self.views, 0),
            discarded_at_reset=dict.fromkeys(self.views, 0),
        )
        self._started_ns = started_ns
        self._pending: dict[str, deque[Frame]] = {v: deque() for v in self.views}
        self._last_stamp: dict[str, int] = {}
        self._last_received: dict[str, int] = {}
        self._last_shape: dict[str, tuple[int, ...]] = {}

    def add(self, frame: Frame) -> FramePair | None:
        """Take one frame; return a pair when this frame completes one."""
        last = self._last_stamp.get(frame.view)
        if last is not None and frame.stamp_ns < last - self.max_skew_ns:
            self.restart_at(frame.stamp_ns)
            self.counters.last_jump_ns = last - frame.stamp_ns
        self._last_stamp[frame.view] = frame.stamp_ns
        self._last_received[frame.view] = frame.received_ns
        self._last_shape[frame.view] = frame.image.shape
        if self.newest_stamp_ns is None or frame.stamp_ns > self.newest_stamp_ns:
            self.newest_stamp_ns = frame.stamp_ns

        pending = self._pending[frame.view]
        if len(pending) == FRAMES_KEPT_PER_VIEW:
            pending.popleft()
            self.counters.unpaired[frame.view] += 1
        pending.append(frame)
        return self._match(frame)

    def restart_at(self, stamp_ns: int) -> None:
        """Time restarted at `stamp_ns`: forget what lies after it, keep what is already on the new timeline.

        In a looping bag the views jump back one after another, so when the first view jumps another
        may already have sent its first frame of the new loop (kept, it pairs), or may still send a last
        frame of the old loop (it then jumps back itself and restarts pairing once more).
        """
        limit = stamp_ns + self.max_skew_ns
        for view, pending in self._pending.items():
            kept = deque(f for f in pending if f.stamp_ns <= limit)
            self.counters.discarded_at_reset[view] += len(pending) - len(kept)
            self._pending[view] = kept
            if self._last_stamp.get(view, stamp_ns) > limit:
                del self._last_stamp[view]
        on_new_timeline = [f.stamp_ns for pending in self._pending.values() for f in pending]
        self.newest_stamp_ns = max(on_new_timeline, default=None)
        self.counters.resets += 1

    def silent_views(self, now_ns: int) -> list[str]:
        """Views with no frame for longer than the view timeout (counting from start-up if never seen)."""
        return [
            v for v in self.views if now_ns - self._last_received.get(v, self._started_ns) > self.view_timeout_ns
        ]

    def _match(self, frame: Frame) -> FramePair | None:
        chosen: dict[str, Frame] = {frame.view: frame}
        substituted = []
        silent = set(self.silent_views(frame.received_ns)) if self.caption_missing_views else set()
        for view in self.views:
            if view == frame.view:
                continue
            partner = self._closest(view, frame.stamp_ns)
            if partner is not None:
                chosen[view] = partner
            elif view in silent:
                substituted.append(view)
            else:
                return None
        for view, used in chosen.items():
            self._consume(view, used)
        images = {v: chosen[v].image for v in chosen}
        for view in substituted:
            # The captioner reads every view it was trained on, so a silent one is shown as black.
            shape = self._last_shape.get(view, frame.image.shape)
            images[view] = np.zeros(shape, dtype=np.uint8)
            self.counters.substituted[view] += 1
        first = chosen.get(self.views[0], frame)
        self.counters.pairs += 1
        return FramePair(
            stamp_ns=first.stamp_ns,
            received_ns=max(f.received_ns for f in chosen.values()),
            images={v: images[v] for v in self.views},
            frame_id=first.frame_id,
            substituted=tuple(substituted),
        )

    def _closest(self, view: str, stamp_ns: int) -> Frame | None:
        best = None
        for candidate in self._pending[view]:
            skew = abs(candidate.stamp_ns - stamp_ns)
            if skew <= self.max_skew_ns and (best is None or skew < abs(best.stamp_ns - stamp_ns)):
                best = candidate
        return best

    def _consume(self, view: str, used: Frame) -> None:
        """Remove the used frame and every older one: a later pair must never reach back in time."""
        pending = self._pending[view]
        while pending:
            head = pending.popleft()
            if head is used:
                return
            self.counters.unpaired[view] += 1
