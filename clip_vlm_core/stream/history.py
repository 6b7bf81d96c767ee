"""`HistoryMemory`: each view's recent CLIP tokens, so a caption's past frames are never encoded again.

A model with a history (CaptionerConfig.history_frames K, history_stride_s) reads, beside each view's
current frame, its K past frames at stamp - k*stride (k = K..1, oldest first). The node captions live frames
one at a time, so it keeps, per view (full and context views alike), the CLIP tokens of the frames it has
captioned in a small ring keyed by stamp (SceneCaptioner.last_clip_tokens), and builds each caption's history
from it: for each k the kept frame nearest to stamp - k*stride, if it lies within half a stride, else
missing (None, masked as in training, where a scene's first keyframes have none). Nothing waits for a history:
until each view has its K past frames the caption goes without the rest, and `report` says so (WARN).

Captions are what fill the ring, so past frames exist only as often as captions are made: at `rate_hz` below
1/stride some slots stay missing (the report says how many). A stamp far from the ring's frames (a looping
bag, a restarted camera) empties the ring rather than mixing two timelines.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

RING_SLACK = 4  # frames kept per view beyond one per past slot: captions come faster than the stride


class HistoryMemory:
    def __init__(self, views: Sequence[str], frames: int, stride_s: float, ring_size: int | None = None) -> None:
        if frames < 1 or stride_s <= 0:
            raise ValueError(f"a history needs at least one past frame and a stride above 0, got {frames}, {stride_s}")
        self.views = tuple(views)
        self.frames = frames
        self.stride_ns = int(round(stride_s * 1e9))
        self.window_ns = (frames + 1) * self.stride_ns  # how far back a caption reaches, and some
        size = ring_size or max(2 * (frames + RING_SLACK), 8)
        self._rings: dict[str, deque[tuple[int, Any]]] = {v: deque(maxlen=size) for v in self.views}
        self._lock = threading.Lock()  # the worker writes, the diagnostics timer reads
        self.reused = 0  # past frames given to the model from the ring (not encoded again)
        self.missing = 0  # past frames not found (masked)
        self.kept = 0  # frames' tokens put in the ring
        self.restarts = 0  # the ring emptied at a stamp far from its frames
        self.captions = 0  # captions given a history (full or not)
        self.captions_short = 0  # of them, ones with some past frame missing
        self.last_found: int | None = None  # past frames per view (the fewest of any view) the last caption had

    def past_for(self, stamp_ns: int) -> dict[str, list[Any]]:
        """Each view's K past frames for a caption of frames stamped `stamp_ns`, oldest first: the kept tokens
        nearest to stamp - k*stride within half a stride, else None (missing)."""
        half = self.stride_ns // 2
        with self._lock:
            past = {}
            for view, ring in self._rings.items():
                slots = []
                for k in range(self.frames, 0, -1):
                    target = stamp_ns - k * self.stride_ns
                    best = min(ring, key=lambda kept: abs(kept[0] - target), default=None)
                    slots.append(best[1] if best is not None and abs(best[0] - target) <= half else None)
                past[view] = slots
            found = min(sum(slot is not None for slot in slots) for slots in past.values())
            given = sum(slot is not None for slots in past.values() for slot in slots)
            self.reused += given
            self.missing += len(self.views) * self.frames - given
            self.captions += 1
            self.captions_short += found < self.frames
            self.last_found = found
        return past

    def keep(self, stamp_ns: int, tokens: Mapping[str, Any]) -> None:
        """Keep the CLIP tokens of the frames stamped `stamp_ns` (one per view), for later captions."""
        with self._lock:
            newest = max((s for ring in self._rings.values() for s, _ in ring), default=None)
            if newest is not None and not newest - self.window_ns <= stamp_ns <= newest + self.window_ns:
                for ring in self._rings.values():  # another timeline: nothing kept may be its past
                    ring.clear()
                self.restarts += 1
            for view, value in tokens.items():
                ring = self._rings.get(view)
                if ring is None:
                    continue
                kept = [item for item in ring if item[0] != stamp_ns]  # a pair captioned and asked about: once
                kept.append((stamp_ns, value))
                kept.sort(key=lambda item: item[0])
                ring.clear()
                ring.extend(kept[-ring.maxlen:])
                self.kept += 1

    def report(self) -> tuple[list[tuple[str, str]], str | None]:
        """Values for /diagnostics, and a warning while the last caption had fewer than K past frames per view."""
        with self._lock:
            found = self.last_found or 0
            values = [
                ("history", f"{found} of {self.frames} past frames per view"),
                ("history_stride_s", f"{self.stride_ns / 1e9:g}"),
                ("history_frames_reused", str(self.reused)),
                ("history_frames_missing", str(self.missing)),
                ("history_captions_short", str(self.captions_short)),
                ("history_restarts", str(self.restarts)),
            ]
        warning = None
        if found < self.frames:
            warning = (f"history not full yet: {found} of {self.frames} past frames per view "
                       "(captioning without the rest)")
        return values, warning
