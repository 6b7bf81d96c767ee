"""A caption's history from CLIP tokens kept per view (clip_vlm_core.stream.history), and the model taking them.

The model check uses the real tiny classes: past frames given as the CLIP tokens an earlier call kept give the
same logits as the same frames given as images, and are not encoded again.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from clip_vlm_core.model.captioner import HISTORY, ClipTokens, SceneCaptioner
from clip_vlm_core.model.tiny import tiny_captioner_config
from clip_vlm_core.stream.history import HistoryMemory

SIDES = ("CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
VIEWS = ("CAM_FRONT", "CAM_BACK", *SIDES)
S = 1_000_000_000


# -- the ring ----------------------------------------------------------------------------------------------
def test_past_frames_are_the_nearest_kept_within_half_a_stride_oldest_first():
    memory = HistoryMemory(("A", "B"), frames=3, stride_s=0.5)
    for t in (10.02, 10.49, 11.1, 11.4):
        memory.keep(int(t * S), {"A": f"a{t}", "B": f"b{t}"})
    past = memory.past_for(int(12.0 * S))  # wants 10.5, 11.0, 11.5
    assert past == {"A": ["a10.49", "a11.1", "a11.4"], "B": ["b10.49", "b11.1", "b11.4"]}
    past = memory.past_for(int(11.6 * S))  # wants 10.1 (10.02), 10.6 (10.49), 11.1
    assert past["A"] == ["a10.02", "a10.49", "a11.1"]
    past = memory.past_for(int(13.0 * S))  # wants 11.5 (11.4), 12.0 and 12.5: nothing within 0.25 s
    assert past["B"] == ["b11.4", None, None]
    values, warning = memory.report()
    assert dict(values)["history"] == "1 of 3 past frames per view"
    assert warning == "history not full yet: 1 of 3 past frames per view (captioning without the rest)"
    assert (memory.reused, memory.missing, memory.captions_short) == (6 + 6 + 2, 4, 1)


def test_until_frames_arrive_the_history_is_short_and_said_so_then_full_and_quiet():
    memory = HistoryMemory(VIEWS, frames=2, stride_s=0.25)
    reports = []
    for i in range(5):
        stamp = 100 * S + i * S // 4
        past = memory.past_for(stamp)
        reports.append(dict(memory.report()[0])["history"])
        memory.keep(stamp, {view: (view, i) for view in VIEWS})
    assert reports == [f"{n} of 2 past frames per view" for n in (0, 1, 2, 2, 2)]
    assert past["CAM_BACK_RIGHT"] == [("CAM_BACK_RIGHT", 2), ("CAM_BACK_RIGHT", 3)]
    assert memory.report()[1] is None


def test_a_view_missing_from_a_caption_leaves_only_that_view_short():
    memory = HistoryMemory(("A", "B"), frames=1, stride_s=1.0)
    memory.keep(5 * S, {"A": "a"})  # B's frame was not kept
    assert memory.past_for(6 * S) == {"A": ["a"], "B": [None]}
    assert dict(memory.report()[0])["history"] == "0 of 1 past frames per view"


@pytest.mark.parametrize("jump_s", [-100.0, 3600.0])
def test_a_stamp_on_another_timeline_empties_the_ring(jump_s):
    memory = HistoryMemory(("A",), frames=2, stride_s=0.5)
    for i in range(4):
        memory.keep(200 * S + i * S // 2, {"A": i})
    restart = int((201.5 + jump_s) * S)
    memory.keep(restart, {"A": "new"})
    assert memory.restarts == 1
    assert memory.past_for(restart + S // 2)["A"] == [None, "new"]


def test_the_ring_is_bounded_per_view():
    memory = HistoryMemory(("A",), frames=2, stride_s=10.0, ring_size=5)
    for i in range(50):
        memory.keep(1000 * S + i * S // 100, {"A": i})
    assert len(memory._rings["A"]) == 5 and memory.kept == 50


def test_a_bad_history_setting_is_refused():
    with pytest.raises(ValueError, match="at least one past frame"):
        HistoryMemory(("A",), frames=0, stride_s=0.5)


# -- the model takes kept tokens ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def surround(tiny_base):
    config = dataclasses.replace(tiny_captioner_config(tiny_base), context_views=SIDES, history_frames=2)
    torch.manual_seed(3)
    captioner = SceneCaptioner.build(config, device="cpu")
    torch.nn.init.normal_(captioner.model.connector.gate, std=1.0)  # let the memory reach the fused tokens
    return captioner


def _frames(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {view: rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for view in VIEWS}


def _logits(captioner, sample) -> torch.Tensor:
    with torch.no_grad():
        return captioner.model(**captioner.prepare([sample])).logits[0, -1]


def test_past_frames_given_as_kept_clip_tokens_give_the_same_logits_and_are_not_encoded_again(surround):
    older, old, now = _frames(1), _frames(2), _frames(3)
    # Each earlier frame captioned alone: its CLIP tokens kept, as the node keeps them.
    kept = []
    for frames in (older, old):
        surround.caption([frames], max_new_tokens=1)
        kept.append(surround.last_clip_tokens()[0])
    assert set(kept[0]) == set(VIEWS) and all(isinstance(t, ClipTokens) for t in kept[0].values())
    as_images = dict(now) | {HISTORY: {view: [older[view], old[view]] for view in VIEWS}}
    as_tokens = dict(now) | {HISTORY: {view: [kept[0][view], kept[1][view]] for view in VIEWS}}
    before = surround.model.clip_frames_encoded
    reference = _logits(surround, as_images)
    by_images = surround.model.clip_frames_encoded - before
    tokens = _logits(surround, as_tokens)
    by_tokens = surround.model.clip_frames_encoded - before - by_images
    assert (by_images, by_tokens) == (18, 6)  # 6 views x 3 frames, then only the 6 current frames
    torch.testing.assert_close(tokens, reference)
    without = _logits(surround, dict(now))
    assert not torch.allclose(without, reference)  # the history does reach the caption
    # A mix: some past frames kept, some missing, one given as an image.
    mixed = dict(now) | {HISTORY: {"CAM_FRONT": [None, kept[1]["CAM_FRONT"]], "CAM_BACK_LEFT": [old["CAM_BACK_LEFT"], None]}}
    inputs = surround.prepare([mixed])
    assert inputs["clip_cached_at"].tolist() == [1]
    assert inputs["clip_pixels"].shape[0] == 17 and inputs["clip_absent"].sum() == 10


def test_a_model_that_sees_only_now_keeps_no_tokens(untrained_checkpoint):
    captioner = SceneCaptioner.from_pretrained(untrained_checkpoint, device="cpu")
    captioner.caption([{v: _frames(0)[v] for v in ("CAM_FRONT", "CAM_BACK")}], max_new_tokens=1)
    assert captioner.last_clip_tokens() == []
    assert captioner.clip_views == ("CAM_FRONT", "CAM_BACK")
