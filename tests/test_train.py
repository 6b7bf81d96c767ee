"""Training on the tiny model: resumable, stops cleanly, runs under DDP, and the recipes are sound."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clip_vlm_core.cli import main
from clip_vlm_core.errors import UserError
from clip_vlm_core.train import TrainingStopped, run_training
from clip_vlm_core.train_config import load_run_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"


def tiny_overrides(manifest: Path, run_dir: Path, **optim) -> list[str]:
    settings = {"max_steps": 6, "batch_size": 2, "log_every": 1, "eval_every": 3, "save_every": 3,
                "warmup_steps": 2, **optim}
    return [f"run_dir={run_dir}", f"data.train_manifest={manifest / 'mini_train.jsonl'}",
            f"data.val_manifest={manifest / 'mini_val.jsonl'}", "data.synthetic_scenes=0",
            *(f"optim.{k}={v}" for k, v in settings.items())]


def train_losses(history: list[dict]) -> list[float]:
    return [h["loss"] for h in history if "loss" in h]


@pytest.mark.slow  # 20-40 s on 2 shared cores
def test_resumed_run_continues_the_same_loss_curve(synthetic_manifest, tmp_path):
    recipe = CONFIGS / "synthetic-tiny.yaml"
    run_training(load_run_config(recipe, tiny_overrides(synthetic_manifest, tmp_path / "whole")),
                         show_progress=False)
    config = load_run_config(recipe, tiny_overrides(synthetic_manifest, tmp_path / "split"))
    first = run_training(config, show_progress=False, stop_after=3)
    assert first["step"] == 3 and (tmp_path / "split" / "latest" / "trainer_state.json").exists()
    second = run_training(config, resume="latest", show_progress=False)
    assert second["step"] == 6
    state = lambda run: json.loads((tmp_path / run / "latest" / "trainer_state.json").read_text())  # noqa: E731
    uninterrupted, resumed = train_losses(state("whole")["history"]), train_losses(state("split")["history"])
    assert len(uninterrupted) == len(resumed) == 6
    assert resumed == pytest.approx(uninterrupted, rel=1e-5, abs=1e-6)
    assert uninterrupted[-1] < uninterrupted[0], "six steps on the same few samples should lower the loss"


def test_run_folder_records_config_commit_seed_and_versions(synthetic_manifest, tmp_path):
    run_training(load_run_config(CONFIGS / "synthetic-tiny.yaml",
                                 tiny_overrides(synthetic_manifest, tmp_path / "r", max_steps=3)), show_progress=False)
    run = tmp_path / "r"
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["max_steps"] == 3
    info = json.loads((run / "run_info.json").read_text())
    recipe_seed = yaml.safe_load((CONFIGS / "synthetic-tiny.yaml").read_text())["optim"]["seed"]
    assert info["seed"] == recipe_seed and {"torch", "transformers", "peft", "git_commit"} <= set(info)
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    from clip_vlm_core.model import SceneCaptioner

    best = SceneCaptioner.from_pretrained(run / "best", device="cpu")  # best/ is an inference checkpoint
    assert best.model.connector.gate.item() != 0.0


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(synthetic_manifest, tmp_path):
    overrides = tiny_overrides(synthetic_manifest, tmp_path / "nan", max_steps=40, save_every=1, warmup_steps=0)
    config = load_run_config(CONFIGS / "synthetic-tiny.yaml", overrides)
    # A recipe may not ask for these (tests/test_recipe_checks.py); set after the check, they overflow the loss.
    config.optim.lr_connector = config.optim.lr_lora = config.optim.grad_clip = 1e30
    with pytest.raises(TrainingStopped, match="training loss became") as err:
        run_training(config, show_progress=False)
    assert "latest" in str(err.value)
    saved = json.loads((tmp_path / "nan" / "latest" / "trainer_state.json").read_text())
    assert saved["step"] >= 1 and all(h.get("loss", 0) == h.get("loss", 0) for h in saved["history"])


@pytest.mark.parametrize("overrides, message", [
    (["optim.max_stepz=3"], "unknown key(s) ['max_stepz']"),
    (["optim.batch_size=0"], "optim.batch_size must be at least 1"),
    (["max_steps=3"], "must be run_dir or one of"),
    (["optim.max_steps"], "must look like section.key=value"),
])
def test_bad_recipe_values_are_named(overrides, message):
    with pytest.raises(UserError) as err:
        load_run_config(CONFIGS / "synthetic-tiny.yaml", overrides)
    assert message in str(err.value)


def test_cli_names_a_missing_config(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err


def test_gpu_recipe_builds_at_full_size_on_the_meta_device():
    from clip_vlm_core.model.full_size import full_size_parameter_counts

    config = load_run_config(CONFIGS / "nuinteract-front-back.yaml")
    assert config.captioner.qwen_model == "Qwen/Qwen2.5-VL-3B-Instruct" and config.optim.init == "base"
    counts = full_size_parameter_counts(config.captioner)
    total = counts["total"]
    assert 3.5e9 < total["trainable"] + total["frozen"] < 4.5e9
    assert total["trainable"] == counts["connector"]["trainable"] + counts["lora"]["trainable"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "clip_vlm_core", *args]


@pytest.mark.slow
def test_sigterm_saves_latest_and_exits(synthetic_manifest, tmp_path):
    overrides = tiny_overrides(synthetic_manifest, tmp_path / "term", max_steps=100000, save_every=100000)
    proc = subprocess.Popen(_cli("train", "--config", str(CONFIGS / "synthetic-tiny.yaml"), "--no-progress",
                                 *overrides), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # wait until training steps are being taken
            if "loss" in line and "step 2/" in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, rest
    saved = json.loads((tmp_path / "term" / "latest" / "trainer_state.json").read_text())
    assert saved["step"] >= 2
    # ... and `--resume latest` carries on from there.
    more = tiny_overrides(synthetic_manifest, tmp_path / "term", max_steps=saved["step"] + 2)
    assert main(["train", "--config", str(CONFIGS / "synthetic-tiny.yaml"), "--resume", "latest", "--no-progress",
                 *more]) == 0
    resumed = json.loads((tmp_path / "term" / "latest" / "trainer_state.json").read_text())
    assert resumed["step"] == saved["step"] + 2


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_trains_and_saves_once(synthetic_manifest, tmp_path):
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", env["MASTER_PORT"],
         "-m", "clip_vlm_core", "train", "--config", str(CONFIGS / "synthetic-tiny.yaml"), "--no-progress",
         *tiny_overrides(synthetic_manifest, run_dir, max_steps=4)],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = json.loads((run_dir / "latest" / "trainer_state.json").read_text())
    assert saved["step"] == 4 and (run_dir / "best" / "connector.safetensors").exists()
    # One process group, not two lone runs: only rank 0 logs and prints the summary.
    assert (result.stdout + result.stderr).count("step 4/4 loss") == 1
    assert result.stdout.count('"step": 4') == 1


def test_early_stopping_ends_the_run_when_validation_stops_improving(synthetic_manifest, tmp_path):
    overrides = tiny_overrides(synthetic_manifest, tmp_path / "early", max_steps=50, eval_every=1, patience=2)
    config = load_run_config(CONFIGS / "synthetic-tiny.yaml", overrides)
    # Learning rates of 0 (which a recipe may not ask for): validation can never improve on the first evaluation.
    config.optim.lr_connector = config.optim.lr_lora = 0.0
    summary = run_training(config, show_progress=False)
    assert summary["stopped_by"] == "early stopping" and summary["step"] == 3
    assert (tmp_path / "early" / "best" / "connector.safetensors").exists()
    assert json.loads((tmp_path / "early" / "latest" / "trainer_state.json").read_text())["step"] == 3
