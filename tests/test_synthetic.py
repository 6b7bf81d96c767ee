"""The synthetic nuScenes: loadable by the real nuscenes-devkit, deterministic, its content known."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from clip_vlm_core.cli import main
from clip_vlm_core.data.scene_drawing import HEIGHT, LANE_CENTRE, RGB, WIDTH
from clip_vlm_core.data.scene_facts import COLOURS, LANES, LIGHTS, TIMES, VEHICLE_TYPES, SceneFacts, describe
from clip_vlm_core.data.synthetic import (
    FACT_KEYS,
    caption_corpus,
    describe_back,
    describe_front,
    generate_synthetic_nuscenes,
    parse_facts,
)
from clip_vlm_core.output_guard import MARKER

CAMERAS = {"CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"}


@pytest.fixture(scope="module")
def nusc(synthetic_nuscenes):
    from nuscenes.nuscenes import NuScenes

    return NuScenes("v1.0-mini", str(synthetic_nuscenes), verbose=False)


def test_devkit_loads_the_synthetic_tree_with_both_mini_splits(nusc):
    from nuscenes.utils.splits import create_splits_scenes

    assert len(nusc.scene) == 2 and len(nusc.sample) == 8
    names = {s["name"] for s in nusc.scene}
    splits = create_splits_scenes()
    assert names & set(splits["mini_train"]) and names & set(splits["mini_val"])
    assert set(nusc.sample[0]["data"]) == CAMERAS
    assert nusc.get("sample", nusc.sample[0]["next"])["prev"] == nusc.sample[0]["token"]


def test_cameras_are_calibrated_like_nuscenes_with_real_format_file_names(nusc):
    sd = nusc.get("sample_data", nusc.sample[0]["data"]["CAM_FRONT"])
    path, _, intrinsic = nusc.get_sample_data(sd["token"])
    assert intrinsic[0, 0] == pytest.approx(1266, abs=5) and intrinsic[0, 2] == pytest.approx(816, abs=5)
    assert re.fullmatch(r"samples/CAM_FRONT/n015-2018-07-24-11-22-45\+0800__CAM_FRONT__\d{16}\.jpg", sd["filename"])
    assert Image.open(path).size == (1600, 900) and Image.open(path).format == "JPEG"
    assert re.fullmatch(r"[0-9a-f]{32}", sd["token"])


def test_keyframes_come_at_2_hz_with_an_ego_pose_per_frame(nusc):
    scene = nusc.scene[0]
    sample = nusc.get("sample", scene["first_sample_token"])
    stamps = [sample["timestamp"]]
    while sample["next"]:
        sample = nusc.get("sample", sample["next"])
        stamps.append(sample["timestamp"])
    assert len(stamps) == scene["nbr_samples"] and {b - a for a, b in zip(stamps, stamps[1:], strict=False)} == {500_000}
    assert len(nusc.ego_pose) == len(nusc.sample_data)


def test_sweeps_sit_between_keyframes_on_the_channel_chain(tmp_path):
    from nuscenes.nuscenes import NuScenes

    root = generate_synthetic_nuscenes(tmp_path / "t", scenes=1, samples_per_scene=3, sweeps=2, show_progress=False).root
    nusc = NuScenes("v1.0-mini", str(root), verbose=False)
    sd = nusc.get("sample_data", nusc.sample[0]["data"]["CAM_BACK"])
    chain = []
    while sd:
        chain.append((sd["is_key_frame"], sd["filename"].split("/")[0]))
        sd = nusc.get("sample_data", sd["next"]) if sd["next"] else None
    key, sweep = (True, "samples"), (False, "sweeps")
    assert chain == [key, sweep, sweep, key, sweep, sweep, key]


def test_same_seed_gives_byte_identical_trees(tmp_path):
    a = generate_synthetic_nuscenes(tmp_path / "a", scenes=1, samples_per_scene=2, seed=5, show_progress=False)
    b = generate_synthetic_nuscenes(tmp_path / "b", scenes=1, samples_per_scene=2, seed=5, show_progress=False)
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b.root) for p in b.root.rglob("*") if p.is_file())
    # The output guard's marker also records when each tree was written, to the second (one run here failed
    # when the two writes fell in different seconds): that one field aside, everything is byte for byte.
    data = [f for f in files if f.name != MARKER]
    assert len(data) == len(files) - 1
    assert all((a.root / f).read_bytes() == (b.root / f).read_bytes() for f in data)
    marker_a, marker_b = (json.loads((tree.root / MARKER).read_text()) for tree in (a, b))
    assert marker_a.pop("created") and marker_b.pop("created")
    assert marker_a == marker_b


def test_another_seed_gives_other_facts_and_tokens(tmp_path):
    a = generate_synthetic_nuscenes(tmp_path / "a", scenes=1, samples_per_scene=4, seed=1, show_progress=False)
    b = generate_synthetic_nuscenes(tmp_path / "b", scenes=1, samples_per_scene=4, seed=2, show_progress=False)
    assert not set(a.sample_tokens) & set(b.sample_tokens)
    assert list(a.facts.values()) != list(b.facts.values())


def test_nuinteract_captions_state_the_ground_truth_facts(synthetic_nuscenes):
    truth = json.loads((synthetic_nuscenes / "synthetic_facts.json").read_text())
    records = [r for f in sorted((synthetic_nuscenes / "nuinteract").glob("*.json")) for r in json.loads(f.read_text())]
    assert {r["token"] for r in records} == set(truth)
    for record in records:
        caption = record["gemini_caption"]
        assert set(caption) == CAMERAS | {"FRONT", "BACK"} and set(record["cam_path"]) == CAMERAS
        assert parse_facts(f"{caption['FRONT']} {caption['BACK']}") == truth[record["token"]]


def _pixel(path, x: float, y: float) -> tuple[int, int, int]:
    with Image.open(path) as image:
        return image.convert("RGB").getpixel((int(x), int(y)))


def _near(pixel, colour, tolerance: int = 40) -> bool:
    return all(abs(p - c) <= tolerance for p, c in zip(pixel, colour, strict=True))


def test_drawn_front_and_back_views_show_the_stated_vehicle_in_its_lane(nusc, synthetic_nuscenes):
    truth = json.loads((synthetic_nuscenes / "synthetic_facts.json").read_text())
    body_y = HEIGHT * 0.86 - 70  # inside every vehicle type's body, above the wheels
    for sample in nusc.sample:
        facts = truth[sample["token"]]
        for view, side in (("CAM_FRONT", "front"), ("CAM_BACK", "back")):
            path = synthetic_nuscenes / nusc.get("sample_data", sample["data"][view])["filename"]
            if facts[f"{side}.vehicle_type"] == "none":
                assert not any(_near(_pixel(path, LANE_CENTRE[lane] * WIDTH, body_y), RGB[c], 25)
                               for lane in LANES for c in COLOURS)
            else:
                pixel = _pixel(path, LANE_CENTRE[facts[f"{side}.lane"]] * WIDTH, body_y)
                assert _near(pixel, RGB[facts[f"{side}.vehicle_colour"]]), (view, facts, pixel)


@pytest.mark.parametrize("time", TIMES)
@pytest.mark.parametrize("light", LIGHTS)
def test_every_fact_value_parses_back_from_its_caption(time, light):
    for vtype in VEHICLE_TYPES:
        for colour in COLOURS:
            for lane in LANES:
                facts = SceneFacts(time, vtype, colour, lane, light, vtype, colour, lane)
                assert parse_facts(describe(facts)) == facts.as_dict()
    nothing_behind = SceneFacts(time, "car", "red", "ego", light, "none", "none", "none")
    assert parse_facts(f"{describe_front(nothing_behind)} {describe_back(nothing_behind)}") == nothing_behind.as_dict()
    assert set(nothing_behind.as_dict()) == set(FACT_KEYS)


def test_garbled_caption_parses_to_fewer_facts():
    assert parse_facts("It is night. A purple whale is ahead.") == {"front.time": "night"}


def test_caption_corpus_holds_every_word_the_templates_can_produce():
    corpus_words = {w for c in caption_corpus() for w in c.split()}
    every = [SceneFacts(t, vt, c, ln, lt, *back) for t in TIMES for vt in VEHICLE_TYPES for c in COLOURS
             for ln in LANES for lt in LIGHTS for back in ((vt, c, ln), ("none", "none", "none"))]
    assert {w for f in every for w in describe(f).split()} == corpus_words


def test_captions_out_may_live_outside_the_tree(tmp_path):
    d = generate_synthetic_nuscenes(tmp_path / "tree", scenes=2, samples_per_scene=1, captions_out=tmp_path / "caps",
                                    show_progress=False)
    assert sorted(p.name for p in (tmp_path / "caps").glob("*.json")) == ["scene-0061.json", "scene-0103.json"]
    assert d.captions == (tmp_path / "caps").absolute() and not (tmp_path / "tree" / "nuinteract").exists()


def test_synth_refuses_to_replace_a_non_empty_folder_without_overwrite(tmp_path, capsys):
    keep = tmp_path / "caps" / "mine.json"
    keep.parent.mkdir()
    keep.write_text("[]")
    argv = ["data", "synth", "--out", str(tmp_path / "tree"), "--captions-out", str(keep.parent)]
    assert main(argv) == 2
    assert "--captions-out" in capsys.readouterr().err and keep.read_text() == "[]"
    assert not (tmp_path / "tree").exists()


def test_synth_cli_writes_the_tree_and_rejects_too_many_scenes(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "t"), "--scenes", "1", "--samples-per-scene", "2"]) == 0
    assert "wrote 2 keyframes in 1 scenes (scene-0061)" in capsys.readouterr().out
    assert main(["data", "synth", "--out", str(tmp_path / "u"), "--scenes", "11"]) == 2
    err = capsys.readouterr().err
    assert "--scenes must be between 1 and 10" in err and len(err.strip().splitlines()) == 1
