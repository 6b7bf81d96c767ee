"""Paths inside data files are untrusted.

nuScenes tables, manifest rows and checkpoint configs name files; each such path is resolved against
its root and refused, with the record and the reason, when it is absolute, climbs out with '..', leads
out through a symlink, or is not a regular file (a FIFO or /dev/zero is never opened).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from intact import REPO, assert_one_sentence, digest

from clip_vlm_core.cli import main
from clip_vlm_core.data.manifest import load_manifest, verify_manifest
from clip_vlm_core.errors import UserError
from clip_vlm_core.paths import data_file, relative_problem

ESCAPES = [("/etc/passwd", "is an absolute path"), ("/dev/zero", "is an absolute path"),
           ("../../../../../../etc/passwd", "climbs out of its root with '..'"),
           ("samples/../../outside.jpg", "climbs out of its root with '..'")]


@pytest.fixture
def tree(synthetic_nuscenes, tmp_path) -> Path:
    shutil.copytree(synthetic_nuscenes, tmp_path / "nuscenes")
    return tmp_path / "nuscenes"


def first_keyframe(tree: Path, camera: str = "CAM_FRONT") -> dict:
    rows = json.loads((tree / "v1.0-mini" / "sample_data.json").read_text())
    return next(r for r in rows if r["is_key_frame"] and f"/{camera}/" in r["filename"])


def set_filename(tree: Path, token: str, filename: str) -> None:
    """Edit the downloaded table as an adversary would: one sample_data row names another file."""
    path = tree / "v1.0-mini" / "sample_data.json"
    rows = json.loads(path.read_text())
    next(r for r in rows if r["token"] == token)["filename"] = filename
    path.write_text(json.dumps(rows))


def build(tree: Path, out: Path) -> list[str]:
    return ["data", "build", "--dataroot", str(tree), "--captions", str(tree / "nuinteract"), "--out", str(out)]


def convert(tree: Path, out: Path) -> list[str]:
    return ["bag", "convert", "--dataroot", str(tree), "--scene", "scene-0061", "--out", str(out)]


@pytest.mark.parametrize("filename, reason", ESCAPES)
def test_a_table_filename_out_of_the_dataroot_is_refused_by_build_and_bag_convert(tree, tmp_path, capsys,
                                                                                   filename, reason):
    record = first_keyframe(tree)
    set_filename(tree, record["token"], filename)
    for argv, command, out in ((build(tree, tmp_path / "m"), "data", tmp_path / "m"),
                               (convert(tree, tmp_path / "bags"), "bag", tmp_path / "bags" / "scene-0061")):
        assert main(argv) == 2
        assert_one_sentence(capsys.readouterr().err, command, f"sample_data {record['token']} filename", reason)
        assert not out.exists()


@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink out", "device link"])
def test_a_table_file_that_is_no_regular_file_inside_the_root_is_never_opened(tree, tmp_path, capsys, kind):
    record = first_keyframe(tree)
    image = tree / record["filename"]
    image.unlink()
    if kind == "fifo":
        os.mkfifo(image)  # reading it would block forever
        says = "is a FIFO (named pipe), not a regular file"
    elif kind == "folder":
        image.mkdir()
        says = "is a folder, not a regular file"
    elif kind == "symlink out":
        outside = tmp_path / "secret.jpg"
        outside.write_bytes(b"not for the bag")
        image.symlink_to(outside)
        says = "leads out of"
    else:
        image.symlink_to("/dev/zero")  # read until memory runs out, before
        says = "leads out of"
    for argv, command in ((build(tree, tmp_path / "m"), "data"), (convert(tree, tmp_path / "bags"), "bag")):
        assert main(argv) == 2
        assert_one_sentence(capsys.readouterr().err, command, record["token"], says)
    assert not (tmp_path / "m").exists() and not (tmp_path / "bags" / "scene-0061").exists()


def test_a_symlink_that_stays_inside_the_dataroot_is_followed(tree, tmp_path):
    record = first_keyframe(tree)
    image = tree / record["filename"]
    (tree / "moved.jpg").write_bytes(image.read_bytes())
    image.unlink()
    image.symlink_to(tree / "moved.jpg")
    assert main(build(tree, tmp_path / "m")) == 0
    assert main(convert(tree, tmp_path / "bags")) == 0


def test_manifest_rows_hold_paths_relative_to_the_dataroot(synthetic_manifest, synthetic_nuscenes):
    meta = json.loads((synthetic_manifest / "manifest.json").read_text())
    rows = load_manifest(synthetic_manifest)
    assert Path(meta["dataroot"]).is_absolute()
    assert all(relative_problem(v.path) is None and v.path.startswith("samples/") for r in rows for v in r.views.values())


@pytest.fixture
def tampered(synthetic_manifest, tmp_path):
    """A copy of the manifest whose first validation row names a file out of the dataroot."""
    manifest = tmp_path / "manifest"
    shutil.copytree(synthetic_manifest, manifest)

    def tamper(path: str) -> Path:
        split = manifest / "mini_val.jsonl"
        rows = [json.loads(line) for line in split.read_text().splitlines()]
        rows[0]["views"]["CAM_BACK"]["path"] = path
        split.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return manifest

    return tamper


@pytest.mark.parametrize("path, reason", ESCAPES[:3])
def test_a_manifest_row_out_of_the_dataroot_is_refused_by_verify_gallery_and_eval(tampered, tmp_path, capsys,
                                                                                   path, reason):
    manifest = tampered(path)
    before = digest(tmp_path)
    for argv, command in ((["data", "verify", str(manifest)], "data"),
                          (["data", "gallery", str(manifest), "--n", "8", "--out", str(tmp_path / "g.html")], "data"),
                          (["eval", "--manifest", str(manifest / "mini_val.jsonl"), "--out", str(tmp_path / "e")],
                           "eval")):
        assert main(argv) == 2
        assert_one_sentence(capsys.readouterr().err, command, f"{manifest / 'mini_val.jsonl'} line 1: CAM_BACK path",
                            reason)
    assert digest(tmp_path) == before


def test_a_manifest_row_leading_through_a_symlink_out_is_refused_when_opened(tampered, synthetic_nuscenes, tmp_path):
    from clip_vlm_core.data.dataset import CaptionDataset

    root = tmp_path / "root"
    shutil.copytree(synthetic_nuscenes / "samples", root / "samples")
    (root / "escape").symlink_to("/etc")
    manifest = tampered("escape/hostname")
    rows = load_manifest(manifest / "mini_val.jsonl")
    with pytest.raises(UserError, match="leads out of .* through a symlink"):
        CaptionDataset(rows, root, ("CAM_FRONT", "CAM_BACK"))[0]
    checked, problems = verify_manifest(manifest, show_progress=False, dataroot=root)
    assert checked == 16 and len(problems) == 1 and problems[0].startswith("refused:")


def test_a_moved_dataset_is_re_rooted_with_dataroot(synthetic_manifest, synthetic_nuscenes, tmp_path, capsys):
    moved = tmp_path / "elsewhere"
    shutil.copytree(synthetic_nuscenes, moved)
    manifest = tmp_path / "manifest"
    shutil.copytree(synthetic_manifest, manifest)
    meta = json.loads((manifest / "manifest.json").read_text())
    meta["dataroot"] = str(tmp_path / "gone")  # where the data was when the manifest was built
    (manifest / "manifest.json").write_text(json.dumps(meta))
    assert main(["data", "verify", str(manifest)]) == 2
    assert_one_sentence(capsys.readouterr().err, "data", "is not a folder", "pass --dataroot")
    assert main(["data", "verify", str(manifest), "--dataroot", str(moved)]) == 0
    assert main(["data", "gallery", str(manifest), "--n", "2", "--dataroot", str(moved), "--out",
                 str(tmp_path / "g.html")]) == 0
    from clip_vlm_core.evaluate import eval_inputs

    assert eval_inputs(manifest / "mini_val.jsonl", moved)["nuScenes dataroot"] == moved


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A copy of the embedded model and its base models: a checkpoint whose config names ../tiny_base/..."""
    shutil.copytree(REPO / "clip_vlm_core" / "assets", tmp_path / "assets",
                    ignore=shutil.ignore_patterns("samples"))
    return tmp_path / "assets" / "default_model"


def set_ref(checkpoint: Path, **refs: str) -> None:
    path = checkpoint / "clip_vlm_config.json"
    config = json.loads(path.read_text())
    config.update(refs)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("ref, reason", [("/etc", "an absolute path"), ("local-dir:/etc", "an absolute path"),
                                         ("../../../../etc", "which leads out of"),
                                         ("./nowhere", "does not exist"), ("symlink", "through a symlink")])
def test_a_checkpoint_config_naming_a_base_model_out_of_its_folder_is_refused(checkpoint, tmp_path, capsys,
                                                                             ref, reason):
    if ref == "symlink":
        outside = tmp_path / "outside_qwen"
        shutil.copytree(checkpoint.parent / "tiny_base" / "qwen", outside)
        (checkpoint.parent / "linked").symlink_to(outside)
        ref = "../linked"
    set_ref(checkpoint, qwen_model=ref)
    assert main(["caption", "--view", f"CAM_FRONT={REPO / 'clip_vlm_core/assets/samples/front.jpg'}",
                 "--view", f"CAM_BACK={REPO / 'clip_vlm_core/assets/samples/back.jpg'}",
                 "--checkpoint", str(checkpoint), "--local-files-only"]) == 2
    assert_one_sentence(capsys.readouterr().err, "caption", "names its Qwen2.5-VL base model", reason)


def test_relative_refs_inside_the_checkpoints_parent_and_hub_ids_stay_allowed(checkpoint):
    from clip_vlm_core.model import SceneCaptioner

    assert SceneCaptioner.from_pretrained(checkpoint, device="cpu").views == ("CAM_FRONT", "CAM_BACK")
    set_ref(checkpoint, clip_model="../tiny_base/../tiny_base/clip")  # '..' that stays inside is fine
    assert SceneCaptioner.from_pretrained(checkpoint, device="cpu").views == ("CAM_FRONT", "CAM_BACK")
    set_ref(checkpoint, qwen_model="Qwen/Qwen2.5-VL-3B-Instruct")  # a hub id: not refused, only not cached here
    with pytest.raises(UserError) as err:
        SceneCaptioner.from_pretrained(checkpoint, device="cpu", local_files_only=True)
    assert "'Qwen/Qwen2.5-VL-3B-Instruct' is not in the local Hugging Face cache" in str(err.value)


@pytest.mark.parametrize("relative", ["samples/x.jpg", "./samples/x.jpg", "samples/../samples/x.jpg"])
def test_relative_paths_that_stay_inside_are_accepted(relative, tmp_path):
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "x.jpg").write_bytes(b"jpeg")
    assert data_file(tmp_path, relative, "row").read_bytes() == b"jpeg"


def test_a_trusted_checkpoint_whose_base_models_live_elsewhere_loads_with_a_named_root(tmp_path, capsys, monkeypatch):
    """A fine-tuned checkpoint naming a shared base-model folder (e.g. /models, written relative to the
    checkpoint as training writes it): refused by default with the way out named, loaded once the user
    names the folder it may read from, by flag or by environment."""
    shared = tmp_path / "models"
    shutil.copytree(REPO / "clip_vlm_core" / "assets" / "tiny_base", shared / "tiny_base")
    runs = tmp_path / "runs" / "mine"
    shutil.copytree(REPO / "clip_vlm_core" / "assets" / "default_model", runs / "best")
    set_ref(runs / "best", qwen_model="../../../models/tiny_base/qwen", clip_model="../../../models/tiny_base/clip")
    views = ["--view", f"CAM_FRONT={REPO / 'clip_vlm_core/assets/samples/front.jpg'}",
             "--view", f"CAM_BACK={REPO / 'clip_vlm_core/assets/samples/back.jpg'}", "--max-new-tokens", "4"]
    argv = ["caption", *views, "--checkpoint", str(runs / "best"), "--local-files-only"]
    monkeypatch.delenv("CLIP_VLM_BASE_MODELS", raising=False)
    assert main(argv) == 2
    assert_one_sentence(capsys.readouterr().err, "caption", "leads out of", "--base-models-root DIR",
                        "CLIP_VLM_BASE_MODELS")
    assert main([*argv, "--base-models-root", str(shared)]) == 0
    assert capsys.readouterr().out.strip()
    assert main([*argv, "--base-models-root", str(shared / "tiny_base" / "clip")]) == 2  # qwen is not inside
    capsys.readouterr()
    monkeypatch.setenv("CLIP_VLM_BASE_MODELS", str(shared))
    assert main(["ask", *views, "--checkpoint", str(runs / "best"), "--question", "Is it day or night?"]) == 0
    assert capsys.readouterr().out.strip()
