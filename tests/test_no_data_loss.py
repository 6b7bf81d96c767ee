"""No command destroys what the user has.

Every command that writes a folder or file replaces an existing target only when it wrote it itself
(or with --overwrite), never one that is, holds or lies inside one of its inputs (not even with
--overwrite), and leaves no staging behind, even after kill -9.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from intact import REPO, assert_one_sentence, clip_vlm, digest, staging_left

from clip_vlm_core.atomic import staged_dir, sweep_stale_staging
from clip_vlm_core.cli import main
from clip_vlm_core.errors import UserError
from clip_vlm_core.output_guard import guard_output

RECIPE = REPO / "training" / "configs" / "synthetic-tiny.yaml"


@pytest.fixture(scope="module")
def world(synthetic_nuscenes, tmp_path_factory) -> Path:
    """A folder holding a nuScenes tree (dataroot/) with its captions, and a manifest built from it."""
    root = tmp_path_factory.mktemp("world")
    shutil.copytree(synthetic_nuscenes, root / "dataroot")
    assert main(["data", "build", "--dataroot", str(root / "dataroot"), "--captions", str(root / "dataroot" / "nuinteract"),
                 "--out", str(root / "manifest")]) == 0
    return root


def build_args(world: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "build", "--dataroot", str(world / "dataroot"), "--captions", str(world / "dataroot" / "nuinteract"),
            "--out", str(out), *extra]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
@pytest.mark.parametrize("target, says", [("dataroot/nuinteract", "is the NuInteract captions folder"),
                                          ("dataroot", "is the nuScenes dataroot"),
                                          (".", "holds the nuScenes dataroot")])
def test_data_build_never_replaces_its_inputs(world, capsys, target, says, overwrite):
    before = digest(world)
    assert main(build_args(world, world / target, *overwrite)) == 2
    assert_one_sentence(capsys.readouterr().err, "data", says, "even with --overwrite")
    assert digest(world) == before


def test_data_build_refuses_a_folder_inside_an_input_that_it_did_not_write(world, capsys):
    before = digest(world)
    assert main(build_args(world, world / "dataroot" / "samples", "--overwrite")) == 2
    assert_one_sentence(capsys.readouterr().err, "data", "is inside the nuScenes dataroot", "never replaces")
    assert digest(world) == before


def test_data_build_asks_before_replacing_a_folder_it_did_not_write(world, tmp_path, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    assert main(build_args(world, theirs)) == 2
    assert_one_sentence(capsys.readouterr().err, "data", f"--out {theirs} already exists and was not written by "
                        "clip-vlm data build", "--overwrite")
    assert (theirs / "thesis.tex").read_text() == "years of work"
    assert main(build_args(world, theirs, "--overwrite")) == 0
    assert not (theirs / "thesis.tex").exists() and (theirs / "manifest.json").is_file()


def test_data_build_reruns_into_its_own_output_without_asking(world, tmp_path):
    out = tmp_path / "m"
    assert main(build_args(world, out)) == 0
    assert main(build_args(world, out, "--cameras", "CAM_FRONT")) == 0
    assert not staging_left(tmp_path)


def test_data_synth_asks_before_replacing_a_folder_it_did_not_write(tmp_path, capsys):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "keep.txt").write_text("mine")
    assert main(["data", "synth", "--out", str(tmp_path / "tree"), "--scenes", "1", "--samples-per-scene", "1"]) == 2
    assert_one_sentence(capsys.readouterr().err, "data", "was not written by clip-vlm data synth")
    assert (tmp_path / "tree" / "keep.txt").read_text() == "mine"
    assert main(["data", "synth", "--out", str(tmp_path / "tree"), "--captions-out", str(tmp_path), "--scenes", "1",
                 "--samples-per-scene", "1", "--overwrite"]) == 2  # captions folder holding the tree
    assert_one_sentence(capsys.readouterr().err, "data", "holds --out")
    assert (tmp_path / "tree" / "keep.txt").read_text() == "mine"


def test_gallery_replaces_its_own_page_but_no_other_file_and_never_an_input(world, tmp_path, capsys):
    manifest = world / "manifest"
    page = tmp_path / "gallery.html"
    page.write_text("<html>my notes</html>")
    gallery = ["data", "gallery", str(manifest), "--n", "1", "--out"]
    assert main([*gallery, str(page)]) == 2
    assert_one_sentence(capsys.readouterr().err, "data", "was not written by clip-vlm data gallery")
    assert page.read_text() == "<html>my notes</html>"
    assert main([*gallery, str(page), "--overwrite"]) == 0
    assert main([*gallery, str(page)]) == 0  # its own page now: replaced without asking
    before = digest(world)
    for target in (manifest / "mini_val.jsonl", manifest / "manifest.json"):
        assert main([*gallery, str(target), "--overwrite"]) == 2
        assert_one_sentence(capsys.readouterr().err, "data", "never replaces its own inputs")
    assert digest(world) == before


def test_eval_never_replaces_its_manifest_or_checkpoint(world, capsys):
    checkpoint = world / "ckpt"
    shutil.copytree(REPO / "clip_vlm_core" / "assets", world / "assets")  # a checkpoint to name, with its base
    before = digest(world)
    cases = [(world / "manifest", "is the manifest folder"),
             (world / "assets", "holds the checkpoint")]
    for out, says in cases:
        code = main(["eval", "--manifest", str(world / "manifest" / "mini_val.jsonl"), "--out", str(out),
                     "--checkpoint", str(world / "assets" / "default_model"), "--overwrite"])
        assert code == 2
        assert_one_sentence(capsys.readouterr().err, "eval", says, "even with --overwrite")
    assert digest(world) == before
    assert not checkpoint.exists()


def test_train_refuses_a_run_folder_it_would_clobber(world, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.md").write_text("my last run")
    manifest = world / "manifest"
    data = [f"data.train_manifest={manifest / 'mini_train.jsonl'}", "data.synthetic_scenes=0"]
    assert main(["train", "--config", str(RECIPE), f"run_dir={run}", *data]) == 2
    assert_one_sentence(capsys.readouterr().err, "train", f"run_dir {run} already exists", "--overwrite")
    before = digest(world)
    for run_dir, says in ((manifest, "is the training manifest folder"), (world, "holds the training manifest"),
                          (RECIPE.parent, "holds the training recipe")):
        assert main(["train", "--config", str(RECIPE), f"run_dir={run_dir}", *data, "--overwrite"]) == 2
        assert_one_sentence(capsys.readouterr().err, "train", says, "even with --overwrite")
    assert digest(world) == before and (run / "notes.md").read_text() == "my last run"


def test_bag_convert_never_replaces_the_dataroot_it_reads(synthetic_nuscenes, tmp_path, capsys):
    # A dataroot that happens to carry a scene's name: converting into its parent would replace it.
    dataroot = tmp_path / "scene-0061"
    shutil.copytree(synthetic_nuscenes, dataroot)
    before = digest(tmp_path)
    assert main(["bag", "convert", "--dataroot", str(dataroot), "--scene", "scene-0061", "--out", str(tmp_path),
                 "--overwrite"]) == 2
    assert_one_sentence(capsys.readouterr().err, "bag", "is the nuScenes dataroot", "even with --overwrite")
    assert digest(tmp_path) == before


def test_embedded_model_install_asks_before_replacing_asset_folders_it_did_not_write(tmp_path):
    from clip_vlm_core.model.embedded import install_embedded_model
    from clip_vlm_core.model.tiny import save_untrained_tiny_checkpoint

    run = tmp_path / "run"
    save_untrained_tiny_checkpoint(run / "best", base_dir=run / "base")
    assets = tmp_path / "assets"
    (assets / "default_model").mkdir(parents=True)
    (assets / "default_model" / "mine.txt").write_text("mine")
    with pytest.raises(UserError, match="was not written by clip-vlm embedded-model install"):
        install_embedded_model(run, assets)
    assert (assets / "default_model" / "mine.txt").read_text() == "mine" and not (assets / "tiny_base").exists()
    installed = install_embedded_model(run, assets, overwrite=True)
    assert install_embedded_model(run, assets) == installed  # its own folders: replaced without asking
    from clip_vlm_core.model import SceneCaptioner

    assert SceneCaptioner.from_pretrained(installed, device="cpu").views == ("CAM_FRONT", "CAM_BACK")
    assert not staging_left(assets)


def test_embedded_model_install_takes_the_base_a_second_stage_checkpoint_names(tmp_path):
    # make embedded-model's second stage starts from the first stage's best/: its checkpoint names the
    # first run's base/, and the install ships that base beside it.
    from clip_vlm_core.model import SceneCaptioner
    from clip_vlm_core.model.embedded import install_embedded_model
    from clip_vlm_core.model.tiny import save_untrained_tiny_checkpoint

    first, second = tmp_path / "runs" / "first", tmp_path / "runs" / "second"
    save_untrained_tiny_checkpoint(first / "best", base_dir=first / "base")
    shutil.copytree(first / "best", second / "best")
    config = second / "best" / "clip_vlm_config.json"
    config.write_text(config.read_text().replace('"../base/', '"../../first/base/'))
    installed = install_embedded_model(second, tmp_path / "assets")
    assert (tmp_path / "assets" / "tiny_base" / "qwen" / "config.json").is_file()
    assert SceneCaptioner.from_pretrained(installed, device="cpu").views == ("CAM_FRONT", "CAM_BACK")
    config.write_text(config.read_text().replace('"../../first/base/clip"', '"../../elsewhere/clip"'))
    with pytest.raises(UserError, match="not the qwen/ and clip/ folders of one tiny base"):
        install_embedded_model(second, tmp_path / "assets2")
    assert not (tmp_path / "assets2").exists()


def test_a_second_embedded_model_installs_beside_the_default_on_its_base_models_only(tmp_path):
    # embedded:surround shares tiny_base/ with the default model: a run on other base models is refused, and
    # so is a default model whose base would pull the shared one from under an installed surround model.
    from clip_vlm_core.model import SceneCaptioner
    from clip_vlm_core.model.embedded import install_embedded_model
    from clip_vlm_core.model.tiny import save_untrained_tiny_checkpoint

    assets = tmp_path / "assets"
    default, same, other = (tmp_path / name for name in ("default", "same", "other"))
    save_untrained_tiny_checkpoint(default / "best", base_dir=default / "base", seed=0)
    save_untrained_tiny_checkpoint(same / "best", base_dir=same / "base", seed=0)  # the same seed: the same bases
    save_untrained_tiny_checkpoint(other / "best", base_dir=other / "base", seed=1)
    with pytest.raises(UserError, match=r"base models .* are not the installed .*tiny_base"):
        install_embedded_model(same, assets, name="surround")  # no default model (nor its base) yet
    assert not assets.exists() or not any(assets.iterdir())
    install_embedded_model(default, assets)
    with pytest.raises(UserError, match=r"base models .* are not the installed .*tiny_base"):
        install_embedded_model(other, assets, name="surround")
    installed = install_embedded_model(same, assets, name="surround")
    assert installed == assets / "surround_model" and not staging_left(assets)
    assert SceneCaptioner.from_pretrained(installed, device="cpu").views == ("CAM_FRONT", "CAM_BACK")
    before = digest(assets)
    with pytest.raises(UserError, match="which surround_model needs"):
        install_embedded_model(other, assets)
    assert digest(assets) == before
    with pytest.raises(UserError, match="--name 'side': the embedded models are default, surround"):
        install_embedded_model(same, assets, name="side")


def test_embedded_model_install_keeps_no_path_of_the_training_machine(tmp_path):
    from clip_vlm_core.model.embedded import install_embedded_model
    from clip_vlm_core.model.tiny import save_untrained_tiny_checkpoint

    run = tmp_path / "run"
    save_untrained_tiny_checkpoint(run / "best", base_dir=run / "base")
    adapter = run / "best" / "adapter"  # as PEFT writes it beside a trained checkpoint
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(run / "base" / "qwen")}))
    (adapter / "README.md").write_text(f"---\nbase_model: {run}/base/qwen\ntags:\n- base_model:adapter:{run}/base/qwen\n")
    installed = install_embedded_model(run, tmp_path / "assets")
    texts = {p.name: p.read_text() for p in (installed / "adapter").iterdir()}
    assert not [name for name, text in texts.items() if str(tmp_path) in text], texts
    assert "base_model: ../tiny_base/qwen" in texts["README.md"]


def test_shipped_assets_name_no_path_of_the_machine_that_trained_them():
    import clip_vlm_core

    assets = Path(clip_vlm_core.__file__).parent / "assets"
    texts = {p: p.read_text(errors="replace") for p in assets.rglob("*") if p.is_file() and p.suffix in (".json", ".md", ".txt")}
    leaked = {str(p.relative_to(assets)) for p, text in texts.items() if re.search(r"(^|[\s\"':])(/tmp/|/home/|/work/|/root/)", text)}
    assert not leaked


def test_kill_9_during_bag_convert_leaves_staging_that_the_next_run_removes(synthetic_nuscenes, tmp_path):
    out = tmp_path / "bags"
    out.mkdir()
    argv = [sys.executable, "-m", "clip_vlm_core", "bag", "convert", "--dataroot", str(synthetic_nuscenes), "--all",
            "--raw", "--out", str(out)]  # raw: a few seconds of decoding and writing to catch it in
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not staging_left(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    left = staging_left(out)
    assert left, "the conversion ended before it could be killed mid-write"
    assert f"-{proc.pid}-" in left[0]  # the staging folder names the process that owns it
    result = clip_vlm("bag", "convert", "--dataroot", synthetic_nuscenes, "--all", "--out", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert staging_left(out) == [] and sorted(p.name for p in out.iterdir()) == ["scene-0061", "scene-0103"]


def test_staging_of_a_running_process_is_kept_and_a_dead_ones_is_removed(tmp_path):
    from clip_vlm_core.atomic import _HOST

    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        ours = tmp_path / f".bag.partial-{_HOST}-{alive.pid}-abcd1234"
        stale = tmp_path / f".bag.partial-{_HOST}-{dead.pid}-abcd1234"
        other_host = tmp_path / f".bag.partial-elsewhere-{dead.pid}-abcd1234"
        for folder in (ours, stale, other_host):
            folder.mkdir()
        assert sweep_stale_staging(tmp_path) == [stale]
        assert ours.exists() and other_host.exists()
    finally:
        alive.kill()
        alive.wait()


def test_an_output_moved_aside_by_a_killed_replace_is_put_back(tmp_path):
    from clip_vlm_core.atomic import _HOST

    dead = subprocess.Popen(["true"])
    dead.wait()
    aside = tmp_path / f".m.old-{_HOST}-{dead.pid}-abcd1234"  # killed between its two renames
    aside.mkdir()
    (aside / "manifest.json").write_text("{}")
    with staged_dir(tmp_path / "other") as staged:
        (staged / "x").write_text("")
    assert (tmp_path / "m" / "manifest.json").read_text() == "{}" and not aside.exists()


def test_an_empty_target_or_a_new_one_needs_no_overwrite(tmp_path):
    (tmp_path / "empty").mkdir()
    guard_output(tmp_path / "empty", "clip-vlm data build")
    guard_output(tmp_path / "new", "clip-vlm data build")


# -- durability: what a rename shows is on the disk ---------------------------------------------------------
def test_a_written_file_and_folder_are_flushed_to_the_disk_around_their_rename(tmp_path, monkeypatch):
    """Before a rename makes a file or folder visible its data is flushed (fsync), and after it the folder
    holding it: after a power loss the target is the old one or the new one, whole."""
    from clip_vlm_core.atomic import write_text

    flushed: list[str] = []
    fsync = os.fsync

    def recorded(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recorded)
    write_text(tmp_path / "notes.txt", "hello")
    assert len(flushed) == 2 and flushed[0].endswith("/notes.txt") and ".partial-" in flushed[0]
    assert flushed[1] == str(tmp_path)  # the folder, after the rename
    flushed.clear()
    with staged_dir(tmp_path / "out", writer="clip-vlm data build") as staged:
        (staged / "a.json").write_text("{}")
        (staged / "sub").mkdir()
        (staged / "sub" / "b.bin").write_bytes(b"x")
    names = [Path(p).name for p in flushed]
    for name in ("a.json", "b.bin", ".clip-vlm-output", "sub", "out"):  # every file and folder before the rename
        assert name in names[:-1], name
    assert all(".partial-" in p for p in flushed[:-1]) and flushed[-1] == str(tmp_path)
    assert (tmp_path / "out" / "sub" / "b.bin").read_bytes() == b"x"
