"""Torch threads on a shared CPU (issue 28, item 4): the cores divided among this machine's training processes,
no more than other work leaves idle; --threads or OMP_NUM_THREADS overrides. Timings are measured by hand
(README, "Threads"), never asserted here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from cpu_load import cpu_bound_processes
from test_train import CONFIGS, tiny_overrides

from clip_vlm_core.cli import main
from clip_vlm_core.train import run_training
from clip_vlm_core.train_config import load_run_config
from clip_vlm_core.train_threads import choose_threads, cores_busy_elsewhere, usable_cores


@pytest.mark.parametrize("cores, processes, busy, expected", [
    (2, 1, 0.0, 2), (2, 1, 0.4, 2), (2, 1, 1.0, 1), (2, 1, 2.0, 1), (2, 1, 7.5, 1),  # this machine, idle to crowded
    (2, 2, 0.0, 1),  # DDP: two processes share the two cores
    (16, 2, 0.0, 8), (16, 4, 0.0, 4), (16, 1, 2.0, 14), (16, 2, 10.0, 6), (16, 3, 0.0, 5), (3, 4, 0.0, 1),
])
def test_threads_are_the_share_of_cores_that_is_idle(monkeypatch, cores, processes, busy, expected):
    monkeypatch.setattr("clip_vlm_core.train_threads.usable_cores", lambda: cores)
    choice = choose_threads(None, processes, env={}, busy=busy)
    assert choice.threads == expected
    assert f"{cores} core(s) for {processes} training process(es)" in choice.why


def test_a_flag_or_omp_num_threads_overrides_the_choice():
    assert choose_threads(3, 1, env={"OMP_NUM_THREADS": "5"}, busy=99).threads == 3
    assert choose_threads(None, 1, env={"OMP_NUM_THREADS": "5"}, busy=99).threads == 5
    assert choose_threads(None, 1, env={"OMP_NUM_THREADS": "5"}).why == "OMP_NUM_THREADS"
    assert choose_threads(None, 1, env={"OMP_NUM_THREADS": "zero"}, busy=0).threads == usable_cores()


def test_cores_busy_elsewhere_sees_cpu_bound_processes():
    with cpu_bound_processes(2):
        busy = cores_busy_elsewhere(1.0)
    assert 0.5 <= busy <= usable_cores() + 0.5


def test_the_cli_refuses_a_thread_count_below_one(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", str(CONFIGS / "synthetic-tiny.yaml"), "--threads", "0"])
    assert exit_.value.code == 2
    assert "--threads: must be a whole number of threads, at least 1, got '0'" in capsys.readouterr().err


def test_a_run_uses_the_threads_asked_for_and_puts_the_callers_back(synthetic_manifest, tmp_path, caplog):
    before = torch.get_num_threads()
    config = load_run_config(CONFIGS / "synthetic-tiny.yaml", tiny_overrides(synthetic_manifest, tmp_path / "t",
                                                                             max_steps=1))
    with caplog.at_level("INFO", logger="clip_vlm_core"):
        run_training(config, show_progress=False, threads=1)
    assert "torch threads: 1 per process (--threads)" in caplog.text
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_the_default_is_logged_with_its_reasons(synthetic_manifest, tmp_path):
    env_without_omp = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run([sys.executable, "-m", "clip_vlm_core", "train", "--config",
                             str(CONFIGS / "synthetic-tiny.yaml"), "--no-progress",
                             *tiny_overrides(synthetic_manifest, tmp_path / "d", max_steps=1)],
                            capture_output=True, text=True, env=env_without_omp, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "core(s) for 1 training process(es) on this machine" in result.stderr
