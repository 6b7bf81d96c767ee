"""The training memory estimate against memory measured on this CPU (`clip-vlm bench memory`): the peak
resident memory of a child process over its baseline after imports, during real training steps."""

from __future__ import annotations

import json

import pytest

from clip_vlm_core.bench.memory import MemoryRun, measure
from clip_vlm_core.cli import main


@pytest.mark.slow  # ~15 s each; the command's test below holds the tiny case at batch 2 in `make test`
@pytest.mark.parametrize("batch, checkpointing", [(8, False), (4, True)])
def test_tiny_estimate_is_within_20_percent_of_the_measured_peak(batch, checkpointing):
    result = measure(MemoryRun(size="tiny", batch=batch, checkpointing=checkpointing, steps=2))
    measured, estimated = result["measured_bytes"], result["estimate_bytes"]
    assert measured > 20 * 2**20, "the run must allocate its weights, state and activations"
    assert estimated == pytest.approx(measured, rel=0.2), result


@pytest.mark.slow  # ~40 s: a model of 1.9 GB of fp32 weights, trained for two steps
def test_1gb_estimate_is_within_20_percent_of_the_measured_peak():
    result = measure(MemoryRun(size="1gb", batch=2, steps=2))
    assert result["estimate"]["weights"]["fp32"] >= 2**30
    assert result["estimate_bytes"] == pytest.approx(result["measured_bytes"], rel=0.2), result


def test_bench_memory_prints_both_and_the_tiny_estimate_is_within_20_percent(tmp_path, capsys):
    out = tmp_path / "memory.json"
    assert main(["bench", "memory", "--sizes", "tiny", "--batch", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "estimate MiB" in text and "measured MiB" in text and "cores" in text
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["run"]["size"] == "tiny" and row["measured_bytes"] > 20 * 2**20
    assert row["estimate_bytes"] == pytest.approx(row["measured_bytes"], rel=0.2), row


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "--batch must be 1 to"),
    (["--caption-tokens", "0"], "--caption-tokens must be 1 to 4096"),
])
def test_bench_memory_refuses_bad_sizes_in_one_sentence(args, message, capsys):
    assert main(["bench", "memory", "--sizes", "tiny", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clip-vlm bench: error: ") and message in err and len(err.splitlines()) == 1
