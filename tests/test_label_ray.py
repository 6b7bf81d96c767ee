"""`clip-vlm label` on real Ray Data (one local Ray for the session, 2 CPUs), the embedded model, bags written by
`clip-vlm bag convert`: every pair labelled once, what LABELS holds never labelled again, bad bags skipped."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from intact import digest

from clip_vlm_core.bags.reader import open_bag
from clip_vlm_core.config import DecodingConfig
from clip_vlm_core.errors import UserError
from clip_vlm_core.label import run
from clip_vlm_core.label.labeller import LabelSettings
from clip_vlm_core.label.pairs import bag_pairs, camera_topics
from clip_vlm_core.label.write_bags import CAPTION_TOPIC

QUESTION = "What colour is the vehicle ahead?"
FAST = DecodingConfig(max_new_tokens=12)


def pairs_in(bag_path: Path) -> set[tuple[int, ...]]:
    with open_bag(bag_path) as bag:
        return {p.stamps_ns for p in bag_pairs(bag, camera_topics(bag, ("CAM_FRONT", "CAM_BACK")), 50.0)}


def rows(labels: Path) -> list[dict]:
    return pq.ParquetDataset(sorted(labels.glob("part-*.parquet"))).read().to_pylist()


def label(inputs, labels, **kwargs):
    settings = LabelSettings(decoding=FAST, questions=kwargs.pop("questions", ()), every_s=kwargs.pop("every", 0.0))
    return run.label([str(i) for i in inputs], labels, settings, workers=kwargs.pop("workers", 2), progress=False,
                     say=lambda _: None, **kwargs)


@pytest.fixture(scope="module")
def broken(scene_bags, tmp_path_factory) -> Path:
    """A bag whose storage file was cut short, as a recording that was killed."""
    bag = shutil.copytree(scene_bags[1], tmp_path_factory.mktemp("broken") / "cut")
    storage = next(bag.glob("*.mcap"))
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 2])
    return bag


@pytest.fixture(scope="module")
def first_run(ray_local, scene_bags, broken, tmp_path_factory):
    out = tmp_path_factory.mktemp("first")
    before = {b: digest(b) for b in scene_bags}
    result = label([scene_bags[0], scene_bags[2], broken], out / "labels", questions=(QUESTION,),
                   write_bags=out / "labelled")
    assert {b: digest(b) for b in scene_bags} == before  # inputs untouched
    return out, result


@pytest.mark.slow  # a Ray run with 2 workers and --write-bags, then another
def test_every_pair_of_every_readable_bag_is_labelled_once(first_run, scene_bags):
    out, result = first_run
    table = rows(out / "labels")
    assert len({r["key"] for r in table}) == len(table) == result.report.labelled == 20
    for bag in (scene_bags[0], scene_bags[2]):
        mine = [r for r in table if r["bag"] == str(bag)]
        assert {tuple(r["view_stamps_ns"]) for r in mine} == pairs_in(bag)
        assert all(r["stamp_ns"] == r["view_stamps_ns"][0] and r["views"] == ["CAM_FRONT", "CAM_BACK"] for r in mine)
    row = table[0]
    assert row["caption"].startswith("It is") and row["questions"] == [QUESTION] and len(row["answers"]) == 1
    assert row["model"] == "embedded-default" and row["model_sha256"].startswith("sha256:")
    assert '"max_new_tokens": 12' in row["decoding"] and '"repetition_penalty": 1.05' in row["decoding"]  # in effect
    assert row["bag_id"].startswith("sha256:") and row["offset_s"] >= 0


@pytest.mark.slow
def test_an_unreadable_bag_is_reported_and_the_run_goes_on(first_run, broken):
    _, result = first_run
    reasons = dict(result.skipped)
    assert str(broken) in reasons and "cut short" in reasons[str(broken)]
    assert "cut short" in run.summary(result, "labels")


@pytest.mark.slow
def test_the_labelled_bags_hold_every_caption(first_run, scene_bags):
    out, result = first_run
    assert sorted(b["status"] for b in result.written_bags) == ["written", "written"]
    for bag in (scene_bags[0], scene_bags[2]):
        with open_bag(out / "labelled" / bag.name) as copy:
            counts = {t.name: t.count for t in copy.topics}
        assert counts[CAPTION_TOPIC] == counts["/scene_caption/marker"] == 10


@pytest.mark.slow
def test_a_second_run_over_the_same_bags_adds_nothing(first_run, scene_bags, broken):
    out, _ = first_run
    before = digest(out / "labels")
    again = label([scene_bags[2], scene_bags[0], broken], out / "labels", questions=(QUESTION,),
                  write_bags=out / "labelled", workers=1)
    assert again.report.labelled == 0 and again.report.already == 20 and again.parts_written == 0
    assert digest(out / "labels") == before
    assert sorted(b["status"] for b in again.written_bags) == ["up to date", "up to date"]


# Not slow (one worker, 4 pairs): the run of `make test` without the slow tests still goes through Ray Data.
def test_other_settings_are_other_rows_and_every_takes_one_pair_a_window(ray_local, scene_bags, tmp_path):
    result = label([scene_bags[0]], tmp_path / "labels", every=0.5, workers=1)
    table = rows(tmp_path / "labels")
    assert result.report.labelled == len(table) == 4  # 1.5 s of bag: windows 0, 0.5, 1.0, 1.5
    assert sorted(int(r["offset_s"] // 0.5) for r in table) == [0, 1, 2, 3]
    assert all(r["questions"] == [] and r["answers"] == [] for r in table)


def test_nothing_to_label_is_one_sentence_before_ray_starts(scene_bags, tmp_path):
    with pytest.raises(UserError, match="no bag to label: .*does not exist"):
        label([tmp_path / "missing"], tmp_path / "labels")
    with pytest.raises(UserError, match=r"\(--strict\)"):
        label([scene_bags[0], tmp_path / "missing"], tmp_path / "labels", strict=True)
    assert not (tmp_path / "labels").exists()
