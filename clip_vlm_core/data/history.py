"""A view's short history: its K previous frames from nuScenes' sample_data chain, oldest first.

nuScenes links every camera's frames, keyframes (2 Hz) and the sweeps between them (~12 Hz), in one
prev/next chain per camera and scene. The past frame j (1..K) of a frame taken at t is the chain's frame
nearest to t - j * stride, within half a stride of it, older than past frame j - 1 (so no frame serves
twice, nor the current one). Where there is none (before the scene's first frame, a stride finer than the
frames there are, a gap in the chain) the frame is missing: `None` in its place, counted by the build, never
fatal. A frame's offset is its time minus the current frame's, in seconds (negative).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from clip_vlm_core.data.records import ViewRecord
from clip_vlm_core.errors import UserError

MAX_HISTORY_FRAMES = 16  # more than any recipe uses (Alpamayo: 4 frames, video captioners: 8)
MAX_HISTORY_STRIDE_S = 10.0
DEFAULT_HISTORY_STRIDE_S = 0.5  # nuScenes' keyframe interval: a history with or without sweeps
NO_EARLIER_FRAME = "past frame before the view's first frame"
NO_FRAME_NEAR = "no past frame within half a stride"


@dataclass(frozen=True)
class PastFrame(ViewRecord):
    """A past frame of a view: what a manifest records of any frame, and when it was taken."""

    offset_s: float  # its time minus the current frame's, in seconds (< 0)


def check_history(frames: int, stride_s: float) -> None:
    """Refuse a history length or stride that no data set could serve."""
    if isinstance(frames, bool) or not isinstance(frames, int) or not 0 <= frames <= MAX_HISTORY_FRAMES:
        raise UserError(f"--history must be a whole number of past frames from 0 to {MAX_HISTORY_FRAMES}, got {frames!r}")
    if not isinstance(stride_s, (int, float)) or not 0 < stride_s <= MAX_HISTORY_STRIDE_S:
        raise UserError(f"--history-stride must be a time in seconds above 0 and at most {MAX_HISTORY_STRIDE_S:g}, "
                        f"got {stride_s!r}")


def pick_past(earlier: Sequence[tuple[str, int]], now_us: int, frames: int, stride_s: float
              ) -> list[tuple[str | None, str]]:
    """(token, "") per past frame, oldest first, or (None, why) where it is missing.

    `earlier`: the chain's (token, timestamp in µs) before the current frame, newest first."""
    stride_us, picked, start = stride_s * 1e6, [], 0
    for j in range(1, frames + 1):
        target = now_us - j * stride_us
        best = min(range(start, len(earlier)), key=lambda i: abs(earlier[i][1] - target), default=None)
        if best is None:
            picked.append((None, NO_EARLIER_FRAME))
        elif abs(earlier[best][1] - target) > stride_us / 2:
            picked.append((None, NO_EARLIER_FRAME if earlier[-1][1] > target + stride_us / 2 else NO_FRAME_NEAR))
        else:
            picked.append((earlier[best][0], ""))
            start = best + 1
    return picked[::-1]


def chain_before(get: Callable[[str, str], dict], sample_data: dict, span_s: float) -> list[tuple[str, int]]:
    """(token, timestamp) of the frames before `sample_data` on its chain, newest first, reaching `span_s` back.
    `get`: the devkit's `NuScenes.get`."""
    earlier, record = [], sample_data
    while record["prev"] and sample_data["timestamp"] - record["timestamp"] <= span_s * 1e6:
        record = get("sample_data", record["prev"])
        earlier.append((record["token"], record["timestamp"]))
    return earlier


def check_manifest_history(meta: dict, manifest: object, frames: int, stride_s: float) -> None:
    """Refuse a manifest (its manifest.json `meta`) whose history a model taking `frames` past frames every
    `stride_s` seconds cannot use: too few frames, or frames another stride apart."""
    if not frames:
        return
    held = (meta.get("history") or {}).get("frames", 0)
    if held < frames:
        raise UserError(f"the model takes {frames} past frame(s) per view but manifest {manifest} holds {held}; "
                        f"build it with --history {frames} --history-stride {stride_s:g}")
    built = float(meta["history"].get("stride_s", DEFAULT_HISTORY_STRIDE_S))
    if abs(built - stride_s) > 1e-6:
        raise UserError(f"manifest {manifest} holds past frames {built:g} s apart but the model's are {stride_s:g} s "
                        f"apart (captioner.history_stride_s); build it with --history-stride {stride_s:g}")
