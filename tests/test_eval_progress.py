"""Long work shows its progress in a log as on a terminal (clip_vlm_core.progress), `eval` answers questions
to their own token limit (--max-answer-tokens), and its time figures cover the questions."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clip_vlm_core.cli import main
from clip_vlm_core.progress import INTERVAL_ENV, log_interval_s, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- the shared mechanism ---------------------------------------------------------------------------------
def test_in_a_log_every_update_is_a_whole_line_when_the_interval_is_zero(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    log = io.StringIO()
    with progress_bar(total=5, desc="work", unit="items", file=log) as bar:
        for _ in range(5):
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text  # no redrawn bar in a log
    lines = text.splitlines()
    assert lines[0] == "work: 0/5 items (0%), 0 s elapsed"
    assert [re.match(r"work: (\d)/5 items", line).group(1) for line in lines] == list("012345")
    assert "items/s" in lines[-1] and "s left" in lines[-1]


def test_in_a_log_quick_work_writes_nothing_and_long_work_a_line_per_interval(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    log = io.StringIO()
    with progress_bar(total=1000, desc="eval", unit="outputs", file=log) as bar:
        for _ in range(1000):
            bar.update(1)
    assert log.getvalue() == ""  # done within the first 10 s: no line to read
    monkeypatch.setenv(INTERVAL_ENV, "0.2")
    log = io.StringIO()
    with progress_bar(total=10, desc="eval", unit="outputs", file=log) as bar:
        for _ in range(10):
            time.sleep(0.05)
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert 2 <= len(lines) < 10 and lines[-1].startswith("eval: 10/10 outputs (100%)")
    assert not lines[0].startswith("eval: 0/")  # the first line waits for the interval


def test_an_error_within_the_first_interval_leaves_no_progress_line(monkeypatch):
    """A refused input stays one sentence on stderr: the bar a loop had started says nothing."""
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    log = io.StringIO()
    with pytest.raises(ValueError):
        for n in progress_bar(range(8), desc="hashing keyframes", unit="sample", file=log):
            if n == 3:
                raise ValueError("bad keyframe")
    assert log.getvalue() == ""


def test_the_phase_shows_in_the_next_line_and_an_unknown_total_is_a_count(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    log = io.StringIO()
    bar = progress_bar(total=4, desc="eval", unit="outputs", file=log)
    bar.set_phase("base: questions")
    bar.update(2)
    bar.set_phase("finetuned: captions")
    bar.update(2)
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[1].startswith("eval [base: questions]: 2/4") and lines[2].startswith("eval [finetuned: captions]: 4/4")
    log = io.StringIO()
    with progress_bar(desc="play", unit="msg", file=log) as bar:
        bar.update(7)
    assert log.getvalue().splitlines()[-1].startswith("play: 7 msg, ")


def test_on_a_terminal_it_is_a_bar_and_disabled_it_is_silent(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    terminal = Terminal()
    with progress_bar(total=3, desc="work", unit="items", file=terminal) as bar:
        bar.update(3)
    assert "\r" in terminal.getvalue() and "|" in terminal.getvalue()  # tqdm's bar, redrawn in place
    quiet = io.StringIO()
    with progress_bar(total=3, desc="work", file=quiet, enabled=False) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("value, seconds", [("", 10.0), ("5", 5.0), ("0", 0.0), ("-3", 0.0), ("soon", 10.0),
                                            ("nan", 10.0)])
def test_the_interval_is_read_from_the_environment_and_a_bad_value_is_the_default(monkeypatch, value, seconds):
    monkeypatch.setenv(INTERVAL_ENV, value)
    assert log_interval_s() == seconds


@pytest.mark.parametrize("value", ["0", "-1", "4097"])
def test_a_bad_answer_token_limit_is_one_sentence_before_the_model_loads(tmp_path, capsys, value):
    code = main(["eval", "--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "out"),
                 "--max-answer-tokens", value])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--max-answer-tokens" in err and "Traceback" not in err


# -- eval end to end --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qa_split(manifest_of) -> Path:
    return manifest_of(qa_file="qa_heldout.jsonl") / "mini_val.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # ~15-30 s on 2 shared cores: the embedded model captions and answers twice
def test_eval_with_stderr_captured_logs_progress_lines_through_the_questions(qa_split, tmp_path):
    out = tmp_path / "e"
    env = {**__import__("os").environ, INTERVAL_ENV: "0"}
    result = subprocess.run(
        [sys.executable, "-m", "clip_vlm_core", "eval", "--manifest", str(qa_split), "--out", str(out), "--compare",
         "--limit", "2", "--max-new-tokens", "8", "--max-answer-tokens", "4", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    questions = len(read_jsonl(out / "answers.jsonl"))
    total = 2 * (2 + questions)  # two models, each: 2 captions and every question
    lines = [line for line in result.stderr.splitlines() if re.match(r"eval( \[[^]]*\])?: \d+/", line)]
    assert f"eval: 0/{total} outputs (0%), 0 s elapsed" == lines[0]
    assert lines[-1].startswith(f"eval [finetuned: questions]: {total}/{total} outputs (100%)")
    assert any(line.startswith("eval [base: questions]:") for line in lines)
    assert len(lines) >= 6 and "\r" not in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["max_answer_tokens"] == 4 and metrics["questions"] == questions


@pytest.mark.slow  # ~20-40 s on 2 shared cores
def test_answers_stop_at_their_own_limit_and_the_time_row_covers_the_questions(qa_split, tmp_path):
    from clip_vlm_core.config import DecodingConfig
    from clip_vlm_core.evaluate import evaluate_manifest
    from clip_vlm_core.evaluation import CaptionScorer
    from clip_vlm_core.model import SceneCaptioner

    captioner = SceneCaptioner.from_pretrained(None, device="cpu")  # the embedded model; its base rambles
    options = {"compare": True, "limit": 2, "decoding": DecodingConfig(max_new_tokens=12),
               "scorer": CaptionScorer(java=None)}
    short = evaluate_manifest(qa_split, captioner, tmp_path / "short", max_answer_tokens=3, **options)
    long = evaluate_manifest(qa_split, captioner, tmp_path / "long", max_answer_tokens=16, **options)
    cut, full = read_jsonl(tmp_path / "short" / "answers.jsonl"), read_jsonl(tmp_path / "long" / "answers.jsonl")
    # Greedy decoding: an answer cut at 3 tokens is the start of the same answer given 16.
    for a, b in zip(cut, full, strict=True):
        assert b["prediction_base"].startswith(a["prediction_base"].rstrip("\ufffd")), (a, b)
    assert sum(len(a["prediction_base"]) < len(b["prediction_base"]) for a, b in zip(cut, full, strict=True)) > len(cut) / 2
    assert [a["prediction_finetuned"] for a in cut] == [b["prediction_finetuned"] for b in full]  # short answers
    captions = [read_jsonl(tmp_path / name / "captions.jsonl") for name in ("short", "long")]
    assert captions[0] == captions[1]  # captions keep max_new_tokens
    for model in ("base", "finetuned"):
        block = long[model]
        assert block["answer_seconds"] > 0 and block["caption_seconds"] > 0
        assert block["seconds"] == pytest.approx(block["caption_seconds"] + block["answer_seconds"], abs=0.002)
    assert long["run_seconds"] >= long["base"]["seconds"] + long["finetuned"]["seconds"]
    html = (tmp_path / "long" / "report.html").read_text()
    assert "seconds: questions" in html and "seconds: captions + questions" in html
    assert short["max_answer_tokens"] == 3
