"""Every user-set number that allocates has an upper bound a real use never needs,
checked once (clip_vlm_core.limits, DecodingConfig) for the CLI, the node, eval, the benchmark and the
recipes, and refused before any work with one sentence naming the setting and the bound."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from clip_vlm_core.cli import main
from clip_vlm_core.config import DecodingConfig
from clip_vlm_core.errors import UserError
from clip_vlm_core.limits import MAX_BATCH_SIZE, MAX_NEW_TOKENS, MAX_NUM_BEAMS, bound_of
from clip_vlm_core.stream import PARAMETERS, validate_parameters
from clip_vlm_core.stream.config import MAX_QUEUE_SIZE, replace_parameter

REPO = Path(__file__).resolve().parents[1]

# (flags, words the refusal must contain: the setting and its bound)
DECODING_CASES = [
    (["--num-beams", "100000"], ["num_beams", "at most 16", "100,000"]),
    (["--max-new-tokens", "100000"], ["max_new_tokens", "at most 4,096", "100,000"]),
    (["--max-new-tokens", "0"], ["max_new_tokens", "at least 1"]),
    (["--temperature", "inf", "--sample"], ["temperature", "at most 10", "got inf"]),
    (["--temperature", "nan", "--sample"], ["temperature", "at least 0.01", "got nan"]),
    (["--repetition-penalty", "inf"], ["repetition_penalty", "at most 2", "got inf"]),
    (["--repetition-penalty", "nan"], ["repetition_penalty", "got nan"]),
    (["--top-k", "151936", "--sample"], ["top_k", "at most 1,000"]),
    (["--top-p", "0", "--sample"], ["top_p", "greater than 0"]),
    (["--eos-token-ids", "-1"], ["eos_token_ids", "whole numbers >= 0"]),
    (["--sample", "--num-beams", "4"], ["do_sample", "num_beams 4"]),
]


def refusal(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("flags", "words"), DECODING_CASES, ids=[" ".join(c[0]) for c in DECODING_CASES])
def test_caption_cli_refuses_decoding_out_of_bounds_before_anything_runs(flags, words, capsys, tmp_path):
    log = tmp_path / "log.jsonl"
    # The images do not exist: had anything been read or loaded first, the error would name them.
    err = refusal(capsys, ["caption", "--view", "CAM_FRONT=missing.jpg", "--view", "CAM_BACK=missing.jpg",
                           "--log", str(log), *flags])
    assert err.startswith("clip-vlm caption: error: ") and err.count("\n") == 1
    assert all(w in err for w in words), err
    assert "missing.jpg" not in err and not log.exists()


@pytest.mark.parametrize(("flags", "words"), [
    (["--batch-size", "100000"], ["--batch-size", "at most 256", "100,000"]),
    (["--batch-size", "0"], ["--batch-size", "at least 1"]),
    (["--batch-size", "32", "--num-beams", "16"], ["32 x 16 beams", "512 sequences", "more than 256"]),
    (["--num-beams", "100000"], ["num_beams", "at most 16"]),
    (["--max-new-tokens", "100000"], ["max_new_tokens", "at most 4,096"]),
])
def test_eval_cli_refuses_batches_and_decoding_out_of_bounds_before_loading(flags, words, capsys, tmp_path):
    out = tmp_path / "eval"
    err = refusal(capsys, ["eval", "--manifest", str(tmp_path / "missing.jsonl"), "--out", str(out), *flags])
    assert all(w in err for w in words), err
    assert "missing.jsonl" not in err and not out.exists()


@pytest.mark.parametrize(("flags", "words"), [
    (["--batch-sizes", "1", "100000"], ["--batch-sizes value", "at most 256", "100,000"]),
    (["--batch-sizes", "0"], ["--batch-sizes value", "at least 1"]),
    (["--max-new-tokens", "100000"], ["--max-new-tokens", "at most 4,096"]),
])
def test_bench_cli_refuses_batch_sizes_and_lengths_out_of_bounds(flags, words, capsys, tmp_path):
    out = tmp_path / "bench.json"
    err = refusal(capsys, ["bench", "caption", "--tiny", "--out", str(out), *flags])
    assert all(w in err for w in words), err
    assert not out.exists()


@pytest.mark.parametrize(("override", "words"), [
    ("optim.batch_size=100000", ["optim.batch_size", "at most 256"]),
    ("optim.grad_accum_steps=100000", ["optim.grad_accum_steps", "at most 1,024"]),
    ("data.num_workers=1000", ["data.num_workers", "at most 64"]),
    ("data.synthetic_samples_per_scene=100000", ["data.synthetic_samples_per_scene", "at most 400"]),
])
def test_train_cli_refuses_batches_out_of_bounds_before_making_the_run(override, words, capsys, tmp_path):
    run_dir = tmp_path / "run"
    err = refusal(capsys, ["train", "--config", str(REPO / "training/configs/synthetic-tiny.yaml"),
                           f"run_dir={run_dir}", override])
    assert all(w in err for w in words), err
    assert not run_dir.exists()


@pytest.mark.parametrize(("values", "words"), [
    ({"num_beams": 100000}, ["num_beams=100000", "[1, 16]"]),
    ({"max_new_tokens": 100000}, ["max_new_tokens=100000", "[1, 4096]"]),
    ({"temperature": math.inf}, ["temperature=inf", "10.0]"]),
    ({"repetition_penalty": math.inf}, ["repetition_penalty=inf", "2.0]"]),
    ({"repetition_penalty": math.nan}, ["repetition_penalty=nan", "out of range [0.0, 2.0]"]),
    ({"repetition_penalty": 0.2}, ["parameter repetition_penalty", "at least 0.5"]),
    ({"top_p": 0.0}, ["parameter top_p", "greater than 0"]),
    ({"batch_size": 100000}, ["batch_size=100000", "[1, 256]"]),
    ({"queue_size": 100000}, ["queue_size=100000", "[1, 256]"]),
    ({"qos_depth": 100000}, ["qos_depth=100000", "[1, 100]"]),
    ({"batch_size": 64, "num_beams": 16}, ["parameter batch_size 64 x 16 beams", "more than 256"]),
    ({"rate_hz": math.nan}, ["rate_hz=nan", "out of range"]),
])
def test_node_parameters_are_refused_beyond_their_bounds(values, words):
    with pytest.raises(UserError) as err:
        validate_parameters(values)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_node_refuses_a_live_change_beyond_the_bounds():
    config = validate_parameters({})
    with pytest.raises(UserError, match=r"num_beams=1000 is out of range \[1, 16\]"):
        replace_parameter(config, "num_beams", 1000)
    assert replace_parameter(config, "repetition_penalty", 1.2).decoding().repetition_penalty == 1.2


def test_node_parameter_table_takes_its_decoding_bounds_from_decoding_config():
    specs = {spec.name: spec for spec in PARAMETERS}
    for name in ("max_new_tokens", "num_beams", "temperature", "top_p", "top_k", "repetition_penalty"):
        assert specs[name].high == bound_of(DecodingConfig, name).high, name
    assert (specs["num_beams"].high, specs["max_new_tokens"].high) == (MAX_NUM_BEAMS, MAX_NEW_TOKENS)
    assert (specs["batch_size"].high, specs["queue_size"].high) == (MAX_BATCH_SIZE, MAX_QUEUE_SIZE)
    assert validate_parameters({}).decoding().repetition_penalty is None  # 0.0: the model's own


@pytest.fixture
def captioner(embedded_captioner):
    return embedded_captioner  # loaded once for the session (conftest.py)


@pytest.mark.parametrize(("settings", "words"), [
    ({"num_beams": 100000}, ["num_beams", "at most 16"]),
    ({"max_new_tokens": 100000}, ["max_new_tokens", "at most 4,096"]),
    ({"temperature": math.inf, "do_sample": True}, ["temperature", "got inf"]),
    ({"repetition_penalty": math.inf}, ["repetition_penalty", "got inf"]),
    ({"eos_token_ids": (10**9,)}, ["eos_token_ids", "outside the model's vocabulary"]),
    ({"beam_width": 3}, ["unknown decoding setting", "beam_width"]),
])
def test_captioner_refuses_decoding_out_of_bounds(captioner, settings, words):
    pair = {view: np.zeros((28, 28, 3), np.uint8) for view in captioner.views}
    with pytest.raises(UserError) as err:
        captioner.caption([pair], **settings)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_captioner_refuses_more_sequences_than_the_bound(captioner):
    pair = {view: np.zeros((28, 28, 3), np.uint8) for view in captioner.views}
    with pytest.raises(UserError, match="batch size must be at least 1 and at most 256 .*got 300"):
        captioner.caption([pair] * 300)
    with pytest.raises(UserError, match="20 x 16 beams is 320 sequences"):
        captioner.caption([pair] * 20, num_beams=16)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"batch_size": 100000}, ["eval batch size", "at most 256"]),
    ({"batch_size": 0}, ["eval batch size", "at least 1"]),
    ({"batch_size": 32, "decoding": DecodingConfig(num_beams=16)}, ["32 x 16 beams"]),
])
def test_evaluate_refuses_batches_out_of_bounds_and_writes_nothing(captioner, synthetic_manifest, tmp_path, kwargs,
                                                                   words):
    from clip_vlm_core.evaluate import evaluate_manifest

    out = tmp_path / "eval"
    with pytest.raises(UserError) as err:
        evaluate_manifest(synthetic_manifest / "mini_val.jsonl", captioner, out, **kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert not out.exists()
