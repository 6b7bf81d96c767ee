"""Synthetic nuScenes, NuInteract captions and the manifest, through the real nuscenes-devkit."""

from __future__ import annotations

import json
import shutil

import pytest

from clip_vlm_core.cli import main
from clip_vlm_core.data.manifest import build_manifest, load_manifest, read_manifest_meta, verify_manifest
from clip_vlm_core.data.nuinteract import joint_caption
from clip_vlm_core.data.scene_facts import COLOURS, LANES, LIGHTS, TIMES, VEHICLE_TYPES, SceneFacts, describe
from clip_vlm_core.data.synthetic import generate_synthetic_nuscenes, parse_facts
from clip_vlm_core.errors import UserError

CAMS = ["CAM_FRONT", "CAM_BACK"]


def test_devkit_loads_the_synthetic_tree_with_both_mini_splits(synthetic_nuscenes):
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.splits import create_splits_scenes

    nusc = NuScenes("v1.0-mini", str(synthetic_nuscenes), verbose=False)
    assert len(nusc.scene) == 2 and len(nusc.sample) == 8
    names = {s["name"] for s in nusc.scene}
    splits = create_splits_scenes()
    assert names & set(splits["mini_train"]) and names & set(splits["mini_val"])
    sample = nusc.sample[0]
    assert set(sample["data"]) == {"CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT",
                                   "CAM_BACK_RIGHT"}
    path, _, intrinsic = nusc.get_sample_data(sample["data"]["CAM_FRONT"])
    assert path.endswith(".jpg") and intrinsic.shape == (3, 3)
    assert nusc.get("sample", sample["next"])["prev"] == sample["token"]


def test_sweeps_sit_between_keyframes_on_the_channel_chain(tmp_path):
    root = generate_synthetic_nuscenes(tmp_path / "t", scenes=1, samples_per_scene=3, sweeps=2, show_progress=False).root
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes("v1.0-mini", str(root), verbose=False)
    sd = nusc.get("sample_data", nusc.sample[0]["data"]["CAM_BACK"])
    chain = []
    while sd:
        chain.append(sd["is_key_frame"])
        sd = nusc.get("sample_data", sd["next"]) if sd["next"] else None
    assert chain == [True, False, False, True, False, False, True]


def test_same_seed_gives_identical_trees(tmp_path):
    a = generate_synthetic_nuscenes(tmp_path / "a", scenes=1, samples_per_scene=2, seed=5, show_progress=False)
    b = generate_synthetic_nuscenes(tmp_path / "b", scenes=1, samples_per_scene=2, seed=5, show_progress=False)
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b.root) for p in b.root.rglob("*") if p.is_file())
    assert all((a.root / f).read_bytes() == (b.root / f).read_bytes() for f in files)


@pytest.mark.parametrize("time", TIMES)
@pytest.mark.parametrize("light", LIGHTS)
def test_every_fact_value_parses_back_from_its_caption(time, light):
    for vtype in VEHICLE_TYPES:
        for colour in COLOURS:
            for lane in LANES:
                facts = SceneFacts(time, vtype, colour, lane, light, vtype, colour, lane)
                assert parse_facts(describe(facts)) == facts.as_dict()
    nothing_behind = SceneFacts(time, "car", "red", "ego", light, "none", "none", "none")
    assert parse_facts(describe(nothing_behind)) == nothing_behind.as_dict()


def test_garbled_caption_parses_to_fewer_facts():
    assert parse_facts("It is night. A purple whale is ahead.") == {"front.time": "night"}


def test_nuinteract_gpt_caption_alias_and_missing_key():
    record = {"token": "t", "gpt_caption": {"FRONT": "Front.", "BACK": "Back."}}
    assert joint_caption(record) == "Front. Back."
    assert joint_caption({"token": "t", "gemini_caption": {"FRONT": "Front."}}) is None


def test_build_then_verify_round_trip(synthetic_manifest):
    meta = read_manifest_meta(synthetic_manifest)
    assert meta["counts"] == {"mini_train": 4, "mini_val": 4} and meta["skipped"] == {}
    rows = load_manifest(synthetic_manifest / "mini_train.jsonl")
    assert rows[0].views["CAM_FRONT"].width == 1600 and len(rows[0].views["CAM_BACK"].sha256) == 64
    assert verify_manifest(synthetic_manifest, show_progress=False) == (16, [])


def test_changing_one_image_makes_verify_fail_naming_it(synthetic_nuscenes, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(synthetic_nuscenes, root)
    out = tmp_path / "manifest"
    build_manifest(root, "v1.0-mini", root / "nuinteract", CAMS, out, show_progress=False)
    victim = root / load_manifest(out / "mini_val.jsonl")[1].views["CAM_BACK"].path
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert main(["data", "verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"sha256 changed: {victim}" in err and err.count("sha256 changed") == 1


def _damaged_tree(synthetic_nuscenes, tmp_path, case: str):
    root = tmp_path / "tree"
    shutil.copytree(synthetic_nuscenes, root)
    captions = root / "nuinteract" / "scene-0061.json"
    records = json.loads(captions.read_text())
    if case == "no caption":
        what = records.pop(0)["token"]
    elif case == "unknown token":
        records.append({**records[0], "token": "f" * 32})
        what = "f" * 32
    else:
        from nuscenes.nuscenes import NuScenes

        nusc = NuScenes("v1.0-mini", str(root), verbose=False)
        what = nusc.get("sample_data", nusc.sample[0]["data"]["CAM_FRONT"])["filename"]
        if case == "missing image":
            (root / what).unlink()
        else:
            (root / what).write_bytes(b"not a jpeg at all")
    captions.write_text(json.dumps(records))
    return root, what


@pytest.mark.parametrize("case, reason", [("no caption", "keyframe without caption"),
                                          ("unknown token", "caption for an unknown sample token"),
                                          ("missing image", "missing image"), ("corrupt image", "corrupt image")])
def test_bad_data_is_skipped_and_reported_or_fatal_when_strict(synthetic_nuscenes, tmp_path, case, reason):
    root, what = _damaged_tree(synthetic_nuscenes, tmp_path, case)
    report = build_manifest(root, "v1.0-mini", root / "nuinteract", CAMS, tmp_path / "m", show_progress=False)
    assert report.skipped == {reason: [what]}
    assert sum(report.counts.values()) == (8 if case == "unknown token" else 7)
    with pytest.raises(UserError, match=reason):
        build_manifest(root, "v1.0-mini", root / "nuinteract", CAMS, tmp_path / "strict", strict=True,
                       show_progress=False)
    assert not (tmp_path / "strict").exists(), "a failed build must leave no manifest"


@pytest.mark.parametrize("argv, message", [
    (["--dataroot", "/no/such/root"], "nuScenes dataroot /no/such/root does not exist"),
    (["--version", "v9"], "unknown nuScenes version 'v9'"),
    (["--cameras", "CAM_TOP"], "unknown camera(s) ['CAM_TOP']"),
])
def test_build_cli_errors_are_one_line(synthetic_nuscenes, tmp_path, capsys, argv, message):
    base = {"--dataroot": str(synthetic_nuscenes), "--captions": str(synthetic_nuscenes / "nuinteract"),
            "--out": str(tmp_path / "m")}
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    args = ["data", "build"] + [x for kv in base.items() for x in kv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_inspect_and_gallery_show_the_samples(synthetic_manifest, tmp_path, capsys):
    assert main(["data", "inspect", str(synthetic_manifest)]) == 0
    out = capsys.readouterr().out
    assert "mini_train: 4 samples" in out and "mini_val: 4 samples" in out
    page = tmp_path / "g.html"
    assert main(["data", "gallery", str(synthetic_manifest), "--n", "3", "--out", str(page)]) == 0
    html = page.read_text()
    assert html.count("<section>") == 3 and html.count("data:image/jpeg;base64,") == 6
