"""`accelerate launch --num_processes N -m clip_vlm_core train ...` (the README's command) trains in N processes,
each on its own shard of the data, also where accelerate's launcher would start one (no GPUs, no config)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from test_train import CONFIGS, tiny_overrides

from clip_vlm_core.errors import UserError
from clip_vlm_core.train_launch import read_launch_request, torchrun_command

ACCELERATE = str(Path(sys.executable).parent / "accelerate")


@pytest.mark.parametrize("command, expected", [
    ([sys.executable, ACCELERATE, "launch", "--num_processes", "2", "-m", "clip_vlm_core", "train"],
     ["--nproc_per_node", "2", "--nnodes", "1", "--node_rank", "0"]),
    ([sys.executable, ACCELERATE, "launch", "--num_processes=4", "--num_machines", "2", "--machine_rank", "1",
      "--main_process_ip", "10.0.0.1", "--main_process_port", "29911", "-m", "clip_vlm_core", "train"],
     ["--nproc_per_node", "2", "--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1",
      "--master_port", "29911"]),
    ([sys.executable, "/usr/bin/accelerate-launch", "--cpu", "--num_processes", "3", "-m", "clip_vlm_core", "train"],
     ["--nproc_per_node", "3"]),
])
def test_an_accelerate_command_line_becomes_torchrun_with_its_processes(command, expected):
    request = read_launch_request(command)
    run = torchrun_command(request, ["/x/clip_vlm_core/__main__.py", "train", "--config", "r.yaml"])
    assert run[:3] == [sys.executable, "-m", "torch.distributed.run"]
    flags = run[3:run.index("-m", 3)]
    for i in range(0, len(expected), 2):
        assert flags[flags.index(expected[i]) + 1] == expected[i + 1]
    assert run[run.index("-m", 3):] == ["-m", "clip_vlm_core", "train", "--config", "r.yaml"]


def test_not_an_accelerate_command_line_is_none():
    assert read_launch_request([sys.executable, "-m", "pytest"]) is None
    assert read_launch_request([]) is None


def test_processes_that_machines_cannot_share_equally_are_one_sentence():
    request = read_launch_request([ACCELERATE, "launch", "--num_processes", "3", "--num_machines", "2", "x.py"])
    with pytest.raises(UserError, match="--num_processes 3 over --num_machines 2"):
        torchrun_command(request, ["x.py"])


@pytest.mark.slow  # ~30-60 s on 2 shared cores
def test_accelerate_launch_as_the_readme_says_trains_two_processes_on_different_shards(synthetic_manifest, tmp_path):
    run_dir = tmp_path / "acc"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK", "ACCELERATE_USE_CPU"):
        env.pop(name, None)
    port = str(29500 + os.getpid() % 1000)
    result = subprocess.run(
        [ACCELERATE, "launch", "--num_processes", "2", "--main_process_port", port, "-m", "clip_vlm_core", "-v",
         "train", "--config", str(CONFIGS / "synthetic-tiny.yaml"), "--no-progress",
         *tiny_overrides(synthetic_manifest, run_dir, max_steps=2, eval_every=2)],
        capture_output=True, text=True, env=env, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "2 process(es) on cpu" in out and "global batch 4 samples per step" in out
    rows = defaultdict(dict)  # step -> process -> the digests of the rows it trained on
    for process, step, digests in re.findall(r"process (\d)/2 step (\d+) trains on rows ([0-9a-f ]+)", out):
        rows[int(step)][int(process)] = digests.split()
    assert sorted(rows) == [1, 2] and all(sorted(by_process) == [1, 2] for by_process in rows.values())
    train_items = sum(1 for line in (synthetic_manifest / "mini_train.jsonl").read_text().splitlines() if line.strip())
    for step, by_process in rows.items():
        first, second = by_process[1], by_process[2]
        assert len(first) == len(second) == 2
        assert not set(first) & set(second), f"step {step}: both processes trained on the same rows"
        assert len(set(first) | set(second)) == min(4, train_items)
    assert result.stdout.count('"step": 2') == 1  # one summary: one run of two processes, not two runs
