"""Faults get one sentence, a non-zero exit, no traceback, and keep what was there.

Real faults, no mocks: a full tmpfs (where mounting is allowed) and a file-size rlimit for a full
disk, a read-only mount for a read-only folder, a closed pipe for `| head`.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from intact import REPO, assert_one_sentence, clip_vlm, digest, staging_left

from clip_vlm_core.cli import main

RECIPE = REPO / "training" / "configs" / "synthetic-tiny.yaml"
SAMPLES = REPO / "clip_vlm_core" / "assets" / "samples"


def _mount(folder: Path, *options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 512 kB file system of its own (a tmpfs; needs root), unmounted afterwards."""
    disk = tmp_path / "disk"
    if not _mount(disk, "size=512k"):
        pytest.skip("mounting a small tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> None:
    """Leave no free byte on `disk`."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def remount_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


# -- a full disk -------------------------------------------------------------------------------------

def test_data_build_on_a_full_disk_keeps_the_previous_manifest(synthetic_nuscenes, small_disk, capsys):
    argv = ["data", "build", "--dataroot", str(synthetic_nuscenes), "--captions", str(synthetic_nuscenes / "nuinteract"),
            "--out", str(small_disk / "m")]
    assert main(argv) == 0
    fill(small_disk)
    before = digest(small_disk / "m")
    assert main(argv) == 2
    assert_one_sentence(capsys.readouterr().err, "data", f"cannot write {small_disk / 'm'}: No space left on device",
                        "nothing there was changed")
    assert digest(small_disk / "m") == before and not staging_left(small_disk)


def test_bag_convert_on_a_full_disk_leaves_no_partial_bag(synthetic_nuscenes, small_disk, capsys):
    assert main(["bag", "convert", "--dataroot", str(synthetic_nuscenes), "--scene", "scene-0061", "--raw", "--out",
                 str(small_disk)]) == 2  # one raw 1600x900 frame is 4.3 MB: the disk holds 512 kB
    assert_one_sentence(capsys.readouterr().err, "bag", "cannot write", "No space left on device")
    assert sorted(p.name for p in small_disk.iterdir()) == []


@pytest.fixture(scope="module")
def trained(synthetic_manifest, tmp_path_factory) -> Path:
    """A run of two steps with no validation split: latest/ at step 2, best_val_loss never set."""
    run = tmp_path_factory.mktemp("runs") / "run"
    code = main(["train", "--config", str(RECIPE), "--no-progress", *tiny(synthetic_manifest, run, 2)])
    assert code == 0
    return run


def tiny(manifest: Path, run: Path, steps: int) -> list[str]:
    return [f"run_dir={run}", f"data.train_manifest={manifest / 'mini_train.jsonl'}", "data.val_manifest=''",
            "data.synthetic_scenes=0", f"optim.max_steps={steps}", "optim.batch_size=2", "optim.save_every=2",
            "optim.eval_every=2", "optim.warmup_steps=0", "optim.log_every=1"]


def test_the_training_summary_line_is_strict_json(synthetic_manifest, tmp_path, capsys):
    assert main(["train", "--config", str(RECIPE), "--no-progress", *tiny(synthetic_manifest, tmp_path / "r", 1)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} is not JSON: {line}"))
    assert summary["best_val_loss"] is None and summary["step"] == 1
    state = (tmp_path / "r" / "latest" / "trainer_state.json").read_text()
    assert json.loads(state, parse_constant=lambda name: pytest.fail(f"{name} in trainer_state.json"))[
        "best_val_loss"] is None


def test_a_checkpoint_that_does_not_fit_ends_training_in_one_sentence_and_keeps_the_last_one(
        trained, synthetic_manifest):
    before = digest(trained / "latest")

    def small_files():  # a real write limit: writes past 200 kB fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    result = subprocess.run(
        [sys.executable, "-m", "clip_vlm_core", "train", "--config", str(RECIPE), "--no-progress", "--resume",
         "latest", *tiny(synthetic_manifest, trained, 4)],
        capture_output=True, text=True, timeout=300, cwd=REPO, preexec_fn=small_files)
    assert result.returncode == 2, result.stderr[-3000:]
    assert_one_sentence(result.stderr.splitlines()[-1], "train", f"cannot write {trained / 'latest'}",
                        "File too large", "nothing there was changed")
    assert "Traceback" not in result.stderr
    assert digest(trained / "latest") == before and not staging_left(trained)


# -- a read-only folder, a file where a folder should be ---------------------------------------------

def test_training_into_a_read_only_run_folder_stops_at_once_and_changes_nothing(trained, synthetic_manifest, tmp_path):
    mount = tmp_path / "ro"
    if not _mount(mount, "size=64m"):
        pytest.skip("a read-only mount needs root (a read-only permission does not stop root)")
    try:
        shutil.copytree(trained, mount / "run")
        remount_read_only(mount)
        before = digest(mount)
        result = clip_vlm("train", "--config", RECIPE, "--no-progress", "--resume", "latest",
                          *tiny(synthetic_manifest, mount / "run", 4))
        assert result.returncode == 2
        assert_one_sentence(result.stderr, "train", "cannot write", "Read-only file system")
        assert digest(mount) == before
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("argv, command", [
    (["data", "build", "--dataroot", "{tree}", "--captions", "{tree}/nuinteract", "--out", "{file}"], "data"),
    (["bag", "convert", "--dataroot", "{tree}", "--scene", "scene-0061", "--out", "{file}"], "bag"),
    (["eval", "--manifest", "{manifest}/mini_val.jsonl", "--out", "{file}"], "eval"),
    (["train", "--config", str(RECIPE), "run_dir={file}", "data.train_manifest={manifest}/mini_train.jsonl",
      "data.synthetic_scenes=0"], "train"),
])
def test_a_file_where_an_output_folder_should_be_is_named(synthetic_nuscenes, synthetic_manifest, tmp_path, capsys,
                                                          argv, command):
    file = tmp_path / "results"
    file.write_text("a file the user keeps")
    argv = [a.format(tree=synthetic_nuscenes, manifest=synthetic_manifest, file=file) for a in argv]
    assert main(argv) == 2
    assert_one_sentence(capsys.readouterr().err, command, f"{file} is a file, not a folder")
    assert file.read_text() == "a file the user keeps"


@pytest.mark.parametrize("flag", ["--captions", "--dataroot"])
def test_a_file_where_an_input_folder_should_be_is_named(synthetic_nuscenes, tmp_path, capsys, flag):
    file = tmp_path / "notes.json"
    file.write_text("[]")
    paths = {"--captions": str(synthetic_nuscenes / "nuinteract"), "--dataroot": str(synthetic_nuscenes), flag: str(file)}
    assert main(["data", "build", *(x for kv in paths.items() for x in kv), "--out", str(tmp_path / "m")]) == 2
    assert_one_sentence(capsys.readouterr().err, "data", f"{file} is a file")


# -- a reader that goes away, images that are not files, pickled weights -----------------------------

@pytest.mark.parametrize("argv", [["bag", "info", "{bag}"], ["data", "inspect", "{manifest}"]])
def test_output_into_a_closed_pipe_ends_quietly(synthetic_nuscenes, synthetic_manifest, tmp_path, argv):
    from clip_vlm_core.bags import BagConvertOptions, convert_scene, load_nuscenes

    bag = convert_scene(load_nuscenes(synthetic_nuscenes, "v1.0-mini"), "scene-0061", tmp_path,
                        BagConvertOptions(progress=False))
    argv = [a.format(bag=bag, manifest=synthetic_manifest) for a in argv]
    proc = subprocess.Popen([sys.executable, "-m", "clip_vlm_core", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.close()  # `| head` that has read all it wanted, before the command writes a line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


@pytest.mark.parametrize("make, says", [(lambda p: p.mkdir(), "is a folder, not an image file"),
                                        (os.mkfifo, "is a FIFO (named pipe), not a regular image file"),
                                        (lambda p: p.symlink_to("/dev/zero"), "is a device, not a regular image file")])
def test_an_image_that_is_no_file_says_what_it_is(tmp_path, capsys, make, says):
    image = tmp_path / "front.jpg"
    make(image)
    assert main(["caption", "--view", f"CAM_FRONT={image}", "--view", f"CAM_BACK={SAMPLES / 'back.jpg'}"]) == 2
    assert_one_sentence(capsys.readouterr().err, "caption", f"image file {image} {says}")


@pytest.fixture
def pickled_qwen(tmp_path) -> Path:
    """The embedded model's Qwen folder with its weights as a pickle (pytorch_model.bin), no safetensors."""
    from safetensors.torch import load_file

    folder = tmp_path / "models" / "qwen"
    shutil.copytree(REPO / "clip_vlm_core" / "assets" / "tiny_base" / "qwen", folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_a_qwen_folder_of_pickled_weights_is_refused_in_one_sentence(pickled_qwen, tmp_path, capsys):
    assert main(["caption", "--view", f"CAM_FRONT={SAMPLES / 'front.jpg'}", "--view", f"CAM_BACK={SAMPLES / 'back.jpg'}",
                 "--checkpoint", str(pickled_qwen), "--local-files-only"]) == 2
    err = capsys.readouterr().err
    assert_one_sentence(err, "caption", f"{pickled_qwen} holds pickled weights (pytorch_model.bin)",
                        "safetensors weights only")
    assert "weights_only" not in err


def test_a_benchmark_figure_that_could_not_be_measured_is_null_in_its_json(tmp_path):
    from clip_vlm_core.bench.report import write_json

    path = write_json({"device": "cpu", "decode_to_bound_ratio": float("nan"), "best": float("inf"),
                       "rows": [{"captions_per_s": 3.5, "peak_gpu_memory_mib": float("nan")}]}, tmp_path / "b.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["decode_to_bound_ratio"] is None and data["best"] is None
    assert data["rows"] == [{"captions_per_s": 3.5, "peak_gpu_memory_mib": None}]
