"""NuInteract as released: one reader for data build and bag convert, whatever the files are called."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from intact import assert_one_sentence
from rosbags.rosbag2 import Reader

from clip_vlm_core.bags import BagConvertOptions, convert_scene, load_nuscenes
from clip_vlm_core.bags.messages import TYPESTORE
from clip_vlm_core.cli import main
from clip_vlm_core.data.manifest import build_manifest, load_manifest
from clip_vlm_core.data.nuinteract import load_nuinteract
from clip_vlm_core.errors import UserError

CAMS = ["CAM_FRONT", "CAM_BACK"]
SCENE = "scene-0061"


@pytest.fixture(scope="module")
def nusc(synthetic_nuscenes):
    return load_nuscenes(synthetic_nuscenes, "v1.0-mini")


@pytest.fixture(scope="module")
def released(synthetic_nuscenes) -> list[dict]:
    """Every record of the synthetic tree's captions, in scene order."""
    return [r for path in sorted((synthetic_nuscenes / "nuinteract").glob("*.json")) for r in json.loads(path.read_text())]


def write_layout(folder: Path, records: list[dict], layout: str, field: str = "gemini_caption") -> Path:
    """The same records as a release might lay them out, under `field`."""
    folder.mkdir(parents=True)
    records = [{**{k: v for k, v in r.items() if k != "gemini_caption"}, field: r["gemini_caption"]} for r in records]
    if layout == "by scene token":
        for token in dict.fromkeys(r["scene_token"] for r in records):
            (folder / f"{token}.json").write_text(json.dumps([r for r in records if r["scene_token"] == token]))
    elif layout == "chunks":  # three records a file: chunks cut across scenes
        for n, start in enumerate(range(0, len(records), 3)):
            (folder / f"part{n}.json").write_text(json.dumps(records[start:start + 3]))
    else:
        (folder / "nuinteract_all.json").write_text(json.dumps(records))
    return folder


def bag_captions(bag: Path) -> dict[int, str]:
    with Reader(bag) as reader:
        return {t: TYPESTORE.deserialize_cdr(raw, c.msgtype).data for c, t, raw in reader.messages()
                if c.topic == "/scene_caption_gt"}


def keyframe_stamps(nusc, scene: str) -> dict[str, int]:
    """Sample token -> the stamp its caption carries in a bag (the keyframe's CAM_FRONT time, ns)."""
    record = next(s for s in nusc.scene if s["name"] == scene)
    stamps, token = {}, record["first_sample_token"]
    while token:
        sample = nusc.get("sample", token)
        stamps[token] = nusc.get("sample_data", sample["data"]["CAM_FRONT"])["timestamp"] * 1000
        token = sample["next"]
    return stamps


@pytest.mark.parametrize("field", ["gemini_caption", "gpt_caption"])
@pytest.mark.parametrize("layout", ["by scene token", "chunks", "one file"])
def test_bag_caption_is_data_builds_target_for_every_keyframe(nusc, synthetic_nuscenes, released, tmp_path,
                                                              layout, field):
    captions = write_layout(tmp_path / "nuinteract", released, layout, field)
    build_manifest(synthetic_nuscenes, "v1.0-mini", captions, CAMS, tmp_path / "m", show_progress=False)
    targets = {row.sample_token: row.caption for row in load_manifest(tmp_path / "m")}
    bag = convert_scene(nusc, SCENE, tmp_path / "bags", BagConvertOptions(captions=captions, progress=False))
    in_bag = bag_captions(bag)
    stamps = keyframe_stamps(nusc, SCENE)
    assert len(in_bag) == len(stamps) == 4
    assert {stamps[token]: targets[token] for token in stamps} == in_bag


def test_caption_keys_choose_the_same_caption_in_build_and_bag(synthetic_nuscenes, tmp_path, capsys):
    captions = synthetic_nuscenes / "nuinteract"
    assert main(["data", "build", "--dataroot", str(synthetic_nuscenes), "--captions", str(captions),
                 "--caption-keys", "BACK", "--out", str(tmp_path / "m")]) == 0
    assert main(["bag", "convert", "--dataroot", str(synthetic_nuscenes), "--scene", SCENE, "--captions", str(captions),
                 "--caption-keys", "BACK", "--out", str(tmp_path / "bags")]) == 0
    targets = {row.caption for row in load_manifest(tmp_path / "m") if row.scene == SCENE}
    assert set(bag_captions(tmp_path / "bags" / SCENE).values()) == targets
    assert all(caption.startswith(("Behind", "Nothing is behind")) for caption in targets)


@pytest.mark.parametrize("cameras", [
    ["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"],
    ["CAM_BACK", "CAM_FRONT", "CAM_BACK_LEFT"],
    ["CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK"],
])
def test_bag_ground_truth_over_more_than_two_cameras_is_the_named_target_data_build_writes(surround_nuscenes, tmp_path,
                                                                                          cameras):
    from clip_vlm_core.data.nuinteract import view_label
    from clip_vlm_core.data.scene_facts import parse_facts

    captions = surround_nuscenes / "nuinteract"
    assert main(["data", "build", "--dataroot", str(surround_nuscenes), "--captions", str(captions), "--cameras",
                 *cameras, "--out", str(tmp_path / "m")]) == 0
    assert main(["bag", "convert", "--dataroot", str(surround_nuscenes), "--scene", SCENE, "--captions", str(captions),
                 "--cameras", *cameras, "--out", str(tmp_path / "bags")]) == 0
    targets = {row.caption for row in load_manifest(tmp_path / "m") if row.scene == SCENE}
    said = bag_captions(tmp_path / "bags" / SCENE)
    assert len(said) == 6 and set(said.values()) == targets
    truth = json.loads((surround_nuscenes / "synthetic_facts.json").read_text())
    for text in said.values():  # each camera's caption under its name, in --cameras order
        positions = [text.index(view_label(camera) + ": ") for camera in cameras]
        assert positions == sorted(positions) and positions[0] == 0
        facts = parse_facts(text)
        assert facts and any(f.items() >= facts.items() for f in truth.values())  # the keyframe's own facts


def test_a_keyframe_without_caption_is_skipped_on_the_topic_and_counted(nusc, synthetic_nuscenes, released, tmp_path,
                                                                        capsys):
    stamps = keyframe_stamps(nusc, SCENE)
    dropped = list(stamps)[1]
    records = [r for r in released if r["token"] != dropped]
    captions = write_layout(tmp_path / "nuinteract", records, "one file")
    assert main(["bag", "convert", "--dataroot", str(synthetic_nuscenes), "--scene", SCENE, "--captions",
                 str(captions), "--out", str(tmp_path / "bags")]) == 0
    assert "3 keyframes captioned; 1 without a caption" in capsys.readouterr().out
    assert sorted(bag_captions(tmp_path / "bags" / SCENE)) == sorted(t for k, t in stamps.items() if k != dropped)


def test_captions_of_no_keyframe_of_the_scene_are_one_clear_error(nusc, synthetic_nuscenes, released, tmp_path, capsys):
    other = [r for r in released if r["token"] not in keyframe_stamps(nusc, SCENE)]
    captions = write_layout(tmp_path / "nuinteract", other, "one file")
    assert main(["bag", "convert", "--dataroot", str(synthetic_nuscenes), "--scene", SCENE, "--captions",
                 str(captions), "--out", str(tmp_path / "bags")]) == 2
    assert_one_sentence(capsys.readouterr().err, "bag", f"have no record for any of the 4 keyframes of scene {SCENE}")
    assert not (tmp_path / "bags").exists() or not any((tmp_path / "bags").iterdir())


def test_a_misspelt_caption_key_is_named_by_bag_convert_as_by_build(synthetic_nuscenes, tmp_path):
    with pytest.raises(UserError, match=r"caption key\(s\) \['FRNT'\]"):
        BagConvertOptions(captions=synthetic_nuscenes / "nuinteract", caption_keys=("FRNT", "BACK"))


def test_a_sample_token_in_two_files_is_named(released, tmp_path):
    folder = write_layout(tmp_path / "nuinteract", released, "one file")
    (folder / "extra.json").write_text(json.dumps(released[:1]))
    with pytest.raises(UserError, match=f"sample token {released[0]['token']} appears twice"):
        load_nuinteract(folder)
