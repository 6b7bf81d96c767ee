"""The six-camera synthetic world (`data synth --cameras all`): one continuous drive per scene, seen by every
camera, loadable by the real nuscenes-devkit; its facts (motion, side views), captions and questions agree."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest

from clip_vlm_core.cli import main
from clip_vlm_core.data.drive import FRONT, KEYFRAME_S, Drive
from clip_vlm_core.data.scene_drawing import ACCENT, RGB, draw_drive_view, draw_side_view
from clip_vlm_core.data.scene_facts import DRIVE_FACT_KEYS, FACT_KEYS, MOTIONS, SIDE_VIEWS, parse_facts
from clip_vlm_core.data.scene_questions import DRIVE_QUESTION_TYPE_NAMES, QUESTION_TYPE_NAMES, TYPES_BY_NAME
from clip_vlm_core.data.synthetic import CAMERA_MOUNTS, generate_synthetic_nuscenes
from clip_vlm_core.errors import UserError


@pytest.fixture(scope="module")
def nusc(surround_nuscenes):
    from nuscenes.nuscenes import NuScenes

    return NuScenes("v1.0-mini", str(surround_nuscenes), verbose=False)


def _truth(root) -> dict[str, dict[str, str]]:
    return json.loads((root / "synthetic_facts.json").read_text())


def _chain(nusc, sd_token: str) -> list[dict]:
    chain = []
    while sd_token:
        sd = nusc.get("sample_data", sd_token)
        chain.append(sd)
        sd_token = sd["next"]
    return chain


def test_every_keyframe_states_motion_and_what_each_side_camera_shows(surround_nuscenes):
    truth = _truth(surround_nuscenes)
    assert len(truth) == 12 and all(set(facts) == set(DRIVE_FACT_KEYS) for facts in truth.values())
    assert {"front_left.vehicle_type", "back_right.vehicle_colour", "front.motion", "back.motion"} <= set(DRIVE_FACT_KEYS)
    for facts in truth.values():
        assert facts["front.motion"] in MOTIONS and facts["back.motion"] in MOTIONS
        assert (facts["back.motion"] == "none") == (facts["back.vehicle_type"] == "none")


def test_each_camera_caption_names_its_view_and_all_of_them_parse_back_to_the_facts(surround_nuscenes):
    truth = _truth(surround_nuscenes)
    for file in sorted((surround_nuscenes / "nuinteract").glob("*.json")):
        for record in json.loads(file.read_text()):
            captions = record["gemini_caption"]
            assert parse_facts(" ".join(captions[cam] for cam in CAMERA_MOUNTS)) == truth[record["token"]]
            for cam, side in SIDE_VIEWS.items():  # a side camera's caption states its own facts only
                assert set(parse_facts(captions[cam])) == {f"{side}.vehicle_type", f"{side}.vehicle_colour"}
            # FRONT and BACK stay the front and back cameras' own descriptions, as in the two-camera world.
            assert (captions["FRONT"], captions["BACK"]) == (captions["CAM_FRONT"], captions["CAM_BACK"])


def test_keyframes_and_sweeps_of_a_scene_form_one_chain_of_distinct_frames_per_camera(nusc, surround_nuscenes):
    scene = nusc.scene[0]
    first = nusc.get("sample", scene["first_sample_token"])
    frames = distinct = 0
    for cam in CAMERA_MOUNTS:
        chain = _chain(nusc, first["data"][cam])
        assert [sd["is_key_frame"] for sd in chain] == [True, False, False] * 5 + [True]
        stamps = [sd["timestamp"] for sd in chain]
        assert stamps == sorted(stamps) and stamps[-1] - stamps[0] == 5 * 500_000
        digests = [hashlib.sha256((surround_nuscenes / sd["filename"]).read_bytes()).digest() for sd in chain]
        frames, distinct = frames + len(digests), distinct + len(set(digests))
    # Frames are drawn at their own instant: a sweep is no copy of its keyframe (wherever anything moves).
    assert distinct > frames // 2


def test_cameras_all_draws_every_side_camera_with_a_vehicle_somewhere(nusc, surround_nuscenes):
    truth = _truth(surround_nuscenes)
    checked = {"shown": 0, "empty": 0}
    for cam, side in SIDE_VIEWS.items():
        shown = [s for s in nusc.sample if truth[s["token"]][f"{side}.vehicle_type"] != "none"]
        empty = [s for s in nusc.sample if truth[s["token"]][f"{side}.vehicle_type"] == "none"]
        assert shown, cam
        checked["shown"], checked["empty"] = checked["shown"] + len(shown[:3]), checked["empty"] + len(empty[:3])
        for sample in shown[:3]:  # its body colour and its type's accent
            facts = truth[sample["token"]]
            path = surround_nuscenes / nusc.get("sample_data", sample["data"][cam])["filename"]
            assert _share_near(path, RGB[facts[f"{side}.vehicle_colour"]]) > 0.01, (cam, sample["token"])
            assert _share_near(path, ACCENT[facts[f"{side}.vehicle_type"]]) > 0.005, (cam, sample["token"])
        for sample in empty[:3]:
            path = surround_nuscenes / nusc.get("sample_data", sample["data"][cam])["filename"]
            assert max(_share_near(path, accent) for accent in ACCENT.values()) < 0.001, (cam, sample["token"])
    assert checked["shown"] >= 8 and checked["empty"] >= 4


def _share_near(path, colour, tolerance: int = 30) -> float:
    """The share of the frame's pixels within `tolerance` of `colour`."""
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB").resize((160, 90)), dtype=np.int16)
    return float((np.abs(pixels - np.array(colour)) <= tolerance).all(axis=-1).mean())


@pytest.mark.parametrize("seed", range(6))
def test_the_motion_fact_is_how_the_gap_changed_over_the_last_half_second(seed):
    drive = Drive(random.Random(seed), 20.0)
    for k in range(40):
        t = k * KEYFRAME_S
        facts = drive.facts(t)
        for slot, motion in ((FRONT, facts.front_motion), ("back", facts.back_motion)):
            now, before = drive.moment(t), drive.moment(t - KEYFRAME_S + 0.06)
            vehicle, gap = now.place(slot)
            if vehicle is None:
                assert motion == "none"
                continue
            _, gap_before = before.place(slot)
            change = gap - gap_before
            expected = "approaching" if change < -1 else "pulling away" if change > 1 else "steady"
            assert motion == expected, (seed, k, slot)


def test_drives_show_approaches_pull_aways_cut_ins_and_overtakes():
    seen = {"approaching": 0, "pulling away": 0, "steady": 0, "overtake": 0, "light change": 0}
    for seed in range(20):
        drive = Drive(random.Random(seed), 10.0)
        for t in (k * KEYFRAME_S for k in range(20)):
            seen[drive.facts(t).front_motion] += 1
        for rear, ahead in (("back_left", "front_left"), ("back_right", "front_right")):
            starts = {(s.start, s.vehicle) for s in drive.segments[ahead] if s.vehicle}
            seen["overtake"] += sum((s.start, prev.vehicle) in starts
                                    for prev, s in zip(drive.segments[rear], drive.segments[rear][1:], strict=False)
                                    if prev.vehicle and s.vehicle is None)
        seen["light change"] += len(drive.lights) - 1
    assert all(n > 0 for n in seen.values()), seen


def test_a_nearer_vehicle_is_drawn_larger():
    def area(gap: float) -> int:
        image = np.asarray(draw_drive_view("day", ("car", "red", "ego"), gap, None))
        return int((image == RGB["red"]).all(axis=-1).sum())

    assert area(15.0) > area(25.0) * 1.5 > area(45.0) * 1.5 > 0


def test_a_side_vehicle_moves_across_the_frame_towards_the_front_of_the_car():
    def centre(along: float, forward_right: bool) -> float:
        image = np.asarray(draw_side_view("day", ("bus", "blue"), along, forward_right))
        return float(np.nonzero((image == RGB["blue"]).all(axis=-1))[1].mean())

    assert centre(-0.5, True) < centre(0.5, True) and centre(-0.5, False) > centre(0.5, False)


def test_questions_cover_motion_and_every_side_view_with_the_true_answers(surround_nuscenes):
    truth = _truth(surround_nuscenes)
    for name, per_type in (("qa.jsonl", 6), ("qa_heldout.jsonl", 1)):
        rows = [json.loads(line) for line in (surround_nuscenes / name).read_text().splitlines()]
        types = [row["type"] for row in rows]
        assert set(types) == set(QUESTION_TYPE_NAMES) | set(DRIVE_QUESTION_TYPE_NAMES)
        assert all(types.count(t) == per_type * len(truth) for t in DRIVE_QUESTION_TYPE_NAMES)
        for row in rows:
            if row["type"] in DRIVE_QUESTION_TYPE_NAMES:
                assert row["answer"] == truth[row["token"]][row["type"]], row
    held_out = {q.lower() for t in DRIVE_QUESTION_TYPE_NAMES for q, _ in TYPES_BY_NAME[t].phrasings(held_out=True)}
    trained = {q.lower() for t in TYPES_BY_NAME.values() for q, _ in t.phrasings()}
    assert held_out and not held_out & trained


def test_the_two_camera_world_is_what_it_was(tmp_path):
    """Its facts, captions, questions and tables byte for byte as before the drive world was added (the digest
    of main's output for this seed; its images are checked by the tests of test_synthetic)."""
    root = generate_synthetic_nuscenes(tmp_path / "t", scenes=3, samples_per_scene=4, sweeps=1, seed=3,
                                       show_progress=False).root
    files = ["synthetic_facts.json", "qa.jsonl", "qa_heldout.jsonl", *sorted(
        str(p.relative_to(root)) for p in root.glob("nuinteract/*.json")), *sorted(
        str(p.relative_to(root)) for p in root.glob("v1.0-mini/*.json"))]
    digest = hashlib.sha256(b"".join((root / f).read_bytes() for f in files)).hexdigest()
    assert digest == "1f1aab5abd3cb2b2d420fefc96234102557afdc7fe39ee3930bdd63e8c6327ca"
    assert all(set(facts) == set(FACT_KEYS) for facts in json.loads((root / "synthetic_facts.json").read_text()).values())


def test_synth_cli_writes_the_six_camera_drive_and_refuses_an_unknown_world(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["data", "synth", "--out", str(out), "--cameras", "all", "--scenes", "1", "--samples-per-scene", "2",
                 "--sweeps", "1"]) == 0
    assert "wrote 2 keyframes" in capsys.readouterr().out
    assert all(set(f) == set(DRIVE_FACT_KEYS) for f in _truth(out).values())
    with pytest.raises(SystemExit) as exit_:
        main(["data", "synth", "--out", str(tmp_path / "u"), "--cameras", "six"])
    assert exit_.value.code == 2
    assert "--cameras" in capsys.readouterr().err and not (tmp_path / "u").exists()
    with pytest.raises(UserError, match="--cameras must be one of front-back, all"):
        generate_synthetic_nuscenes(tmp_path / "v", cameras="surround", show_progress=False)


@pytest.mark.parametrize("seed", range(4))
def test_a_drive_shows_many_vehicles_ahead_while_the_gap_moves_on_continuously(seed):
    drive = Drive(random.Random(seed), 20.0)
    ahead = [(f.front_type, f.front_colour, f.front_lane) for f in (drive.facts(k * KEYFRAME_S) for k in range(40))]
    assert len(set(ahead)) >= 5  # a learner needs variety: another vehicle takes the place every few seconds
    gaps = [drive.moment(k * 0.05).place(FRONT)[1] for k in range(400)]
    assert max(abs(b - a) for a, b in zip(gaps, gaps[1:], strict=False)) <= 8.0 * 0.05 + 1e-9  # never a jump
