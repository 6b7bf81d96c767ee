"""The hashed JSONL manifest from nuScenes + NuInteract: build, verify, inspect, gallery, bad data."""

from __future__ import annotations

import json
import shutil

import pytest

from clip_vlm_core import __version__
from clip_vlm_core.cli import main
from clip_vlm_core.data.manifest import build_manifest, load_manifest, read_manifest_meta, verify_manifest
from clip_vlm_core.data.nuinteract import joint_caption
from clip_vlm_core.data.synthetic import parse_facts
from clip_vlm_core.errors import UserError

CAMS = ["CAM_FRONT", "CAM_BACK"]


def test_build_then_verify_round_trip(synthetic_manifest, synthetic_nuscenes):
    meta = read_manifest_meta(synthetic_manifest)
    assert meta["counts"] == {"mini_train": 4, "mini_val": 4} and meta["skipped"] == {}
    assert meta["dataroot"] == str(synthetic_nuscenes.resolve()) and meta["tool_version"] == __version__
    assert meta["cameras"] == CAMS and meta["caption_keys"] == ["FRONT", "BACK"]
    assert verify_manifest(synthetic_manifest, show_progress=False) == (16, [])


def test_a_split_file_loads_rows_whose_images_resolve_through_the_meta_dataroot(synthetic_manifest):
    rows = load_manifest(synthetic_manifest / "mini_val.jsonl")
    dataroot = read_manifest_meta(synthetic_manifest / "mini_val.jsonl")["dataroot"]
    assert len(rows) == 4 and {r.scene for r in rows} == {"scene-0103"}
    view = rows[0].views["CAM_BACK"]
    assert (view.width, view.height) == (1600, 900) and len(view.sha256) == 64
    assert rows[0].image_path("CAM_BACK", dataroot).is_file()
    assert parse_facts(rows[0].caption)["front.time"] in ("day", "night")


def test_caption_keys_choose_the_target(synthetic_nuscenes, tmp_path):
    build_manifest(synthetic_nuscenes, "v1.0-mini", synthetic_nuscenes / "nuinteract", ["CAM_FRONT"], tmp_path / "m",
                   caption_keys=["FRONT"], show_progress=False)
    captions = [r.caption for r in load_manifest(tmp_path / "m")]
    assert len(captions) == 8 and not any("behind" in c.lower() for c in captions)


def test_a_misspelt_caption_key_is_named(synthetic_nuscenes, tmp_path):
    with pytest.raises(UserError, match=r"caption key\(s\) \['FRONTT'\]"):
        build_manifest(synthetic_nuscenes, "v1.0-mini", synthetic_nuscenes / "nuinteract", CAMS, tmp_path / "m",
                       caption_keys=["FRONTT"], show_progress=False)


def test_nuinteract_gpt_caption_alias_and_missing_key():
    record = {"token": "t", "gpt_caption": {"FRONT": "Front.", "BACK": "Back."}}
    assert joint_caption(record) == "Front. Back."
    assert joint_caption({"token": "t", "gemini_caption": {"FRONT": "Front."}}) is None


def test_rebuilding_replaces_the_previous_manifest(synthetic_nuscenes, tmp_path):
    out = tmp_path / "m"
    build_manifest(synthetic_nuscenes, "v1.0-mini", synthetic_nuscenes / "nuinteract", CAMS, out, show_progress=False)
    build_manifest(synthetic_nuscenes, "v1.0-mini", synthetic_nuscenes / "nuinteract", ["CAM_FRONT"], out,
                   show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".clip-vlm-output", "manifest.json", "mini_train.jsonl",
                                                     "mini_val.jsonl"]
    assert read_manifest_meta(out)["cameras"] == ["CAM_FRONT"]


def test_a_file_added_to_a_manifest_folder_makes_a_rebuild_ask_for_overwrite(synthetic_nuscenes, tmp_path):
    out = tmp_path / "m"
    build_manifest(synthetic_nuscenes, "v1.0-mini", synthetic_nuscenes / "nuinteract", CAMS, out, show_progress=False)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="pass --overwrite"):
        build_manifest(synthetic_nuscenes, "v1.0-mini", synthetic_nuscenes / "nuinteract", CAMS, out,
                       show_progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    build_manifest(synthetic_nuscenes, "v1.0-mini", synthetic_nuscenes / "nuinteract", CAMS, out,
                   show_progress=False, overwrite=True)
    assert not (out / "notes.txt").exists()


@pytest.fixture
def copied_tree(synthetic_nuscenes, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(synthetic_nuscenes, root)
    return root


def test_changing_one_image_makes_verify_fail_naming_it(copied_tree, tmp_path, capsys):
    out = tmp_path / "manifest"
    build_manifest(copied_tree, "v1.0-mini", copied_tree / "nuinteract", CAMS, out, show_progress=False)
    victim = copied_tree / load_manifest(out / "mini_val.jsonl")[1].views["CAM_BACK"].path
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert main(["data", "verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"sha256 changed: {victim}" in err and err.count("sha256 changed") == 1


def test_verify_names_a_missing_image(copied_tree, tmp_path, capsys):
    out = tmp_path / "manifest"
    build_manifest(copied_tree, "v1.0-mini", copied_tree / "nuinteract", CAMS, out, show_progress=False)
    victim = copied_tree / load_manifest(out / "mini_train.jsonl")[0].views["CAM_FRONT"].path
    victim.unlink()
    assert main(["data", "verify", str(out)]) == 1
    assert f"missing: {victim}" in capsys.readouterr().err


def test_verify_of_an_intact_manifest_prints_one_summary_line(synthetic_manifest, capsys):
    assert main(["data", "verify", str(synthetic_manifest)]) == 0
    assert capsys.readouterr().out.strip() == "all 16 images match their sha256"


def _damage(root, case: str) -> str:
    """Break the tree in one way; return the token or path the build must name."""
    captions = root / "nuinteract" / "scene-0061.json"
    records = json.loads(captions.read_text())
    if case == "no caption":
        what = records.pop(0)["token"]
    elif case == "unknown token":
        records.append({**records[0], "token": "f" * 32})
        what = "f" * 32
    else:
        what = records[0]["cam_path"]["CAM_FRONT"]
        data = (root / what).read_bytes()
        if case == "missing image":
            (root / what).unlink()
        elif case == "truncated image":  # a valid JPEG header: only a full decode notices
            (root / what).write_bytes(data[: len(data) // 2])
        else:
            (root / what).write_bytes(b"not a jpeg at all")
    captions.write_text(json.dumps(records))
    return what


@pytest.mark.parametrize("case, reason", [("no caption", "keyframe without caption"),
                                          ("unknown token", "caption for an unknown sample token"),
                                          ("missing image", "missing image"), ("corrupt image", "corrupt image"),
                                          ("truncated image", "corrupt image")])
def test_bad_data_is_skipped_and_reported_or_fatal_when_strict(copied_tree, tmp_path, case, reason):
    what = _damage(copied_tree, case)
    report = build_manifest(copied_tree, "v1.0-mini", copied_tree / "nuinteract", CAMS, tmp_path / "m",
                            show_progress=False)
    assert report.skipped == {reason: [what]} and what in report.summary()
    assert sum(report.counts.values()) == (8 if case == "unknown token" else 7)
    assert read_manifest_meta(tmp_path / "m")["skipped"] == {reason: 1}
    with pytest.raises(UserError, match=reason):
        build_manifest(copied_tree, "v1.0-mini", copied_tree / "nuinteract", CAMS, tmp_path / "strict", strict=True,
                       show_progress=False)
    assert not (tmp_path / "strict").exists(), "a failed build must leave no manifest"


@pytest.mark.parametrize("argv, message", [
    (["--dataroot", "/no/such/root"], "nuScenes dataroot /no/such/root does not exist"),
    (["--version", "v9"], "unknown nuScenes version 'v9'"),
    (["--version", "v1.0-trainval"], "nuScenes version v1.0-trainval not found in"),
    (["--cameras", "CAM_TOP"], "unknown camera(s) ['CAM_TOP']"),
    (["--captions", "/no/such/captions"], "NuInteract captions folder /no/such/captions does not exist"),
])
def test_build_cli_errors_are_one_line(synthetic_nuscenes, tmp_path, capsys, argv, message):
    base = {"--dataroot": str(synthetic_nuscenes), "--captions": str(synthetic_nuscenes / "nuinteract"),
            "--out": str(tmp_path / "m")}
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    assert main(["data", "build", *(x for kv in base.items() for x in kv)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_build_cli_prints_counts_and_writes_the_manifest(synthetic_nuscenes, tmp_path, capsys):
    argv = ["data", "build", "--dataroot", str(synthetic_nuscenes), "--captions", str(synthetic_nuscenes / "nuinteract"),
            "--cameras", *CAMS, "--out", str(tmp_path / "m")]
    assert main(argv) == 0
    assert "mini_train: 4 samples\nmini_val: 4 samples" in capsys.readouterr().out
    assert (tmp_path / "m" / "mini_train.jsonl").is_file()


def test_inspect_shows_counts_and_caption_lengths(synthetic_manifest, capsys):
    assert main(["data", "inspect", str(synthetic_manifest)]) == 0
    out = capsys.readouterr().out
    assert "mini_train: 4 samples, caption words min" in out and "mini_val: 4 samples" in out


def test_gallery_is_one_self_contained_page_of_views_and_captions(synthetic_manifest, tmp_path):
    page = tmp_path / "g.html"
    assert main(["data", "gallery", str(synthetic_manifest), "--n", "3", "--out", str(page)]) == 0
    html = page.read_text()
    assert html.count("<section>") == 3 and html.count("data:image/jpeg;base64,") == 6
    assert "src=\"http" not in html and "src=\"/" not in html


def test_gallery_shows_chosen_tokens_and_names_unknown_ones(synthetic_manifest, tmp_path, capsys):
    token = load_manifest(synthetic_manifest / "mini_val.jsonl")[2].sample_token
    page = tmp_path / "g.html"
    assert main(["data", "gallery", str(synthetic_manifest), "--token", token, "--out", str(page)]) == 0
    assert page.read_text().count("<section>") == 1 and token in page.read_text()
    assert main(["data", "gallery", str(synthetic_manifest), "--token", "0" * 32, "--out", str(tmp_path / "x.html")]) == 2
    assert "0" * 32 in capsys.readouterr().err and not (tmp_path / "x.html").exists()
