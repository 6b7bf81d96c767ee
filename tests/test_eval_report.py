"""report.html: self-contained, a chart per fact and per question type (base vs fine-tuned, chance marked),
the checkpoint's path and step, answers coloured right or wrong with failures first."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from clip_vlm_core.evaluation.checkpoint_info import checkpoint_line, describe_checkpoint
from clip_vlm_core.evaluation.report import BAR_WIDTH, LABEL_WIDTH, render_report

FACTS = {"front.vehicle_type": (0.25, 1.0, 0.5), "back.lane": (0.0, 0.75, 0.6)}  # base, fine-tuned, chance
TYPES = {"front.light": (0.5, 1.0, 0.5), "back.follows": (0.0, 0.5, 0.75), "both.where": (0.2, 0.4, 0.3)}
IMAGE = "data:image/jpeg;base64,AAAA"


def block(which: int) -> dict:
    return {
        "BLEU-4": 0.5, "samples": 2, "caption_seconds": 1.0, "answer_seconds": 2.0, "seconds": 3.0,
        "facts": {fact: values[which] for fact, values in FACTS.items()},
        "fact_chance": {fact: values[2] for fact, values in FACTS.items()}, "exact_match": 0.5,
        "qa": {"accuracy": 0.5, "questions": 4, "per_type": {
            kind: {"accuracy": values[which], "chance": values[2], "questions": 2} for kind, values in TYPES.items()}},
    }


def summary(checkpoint: dict | None = None) -> dict:
    return {"base": block(0), "finetuned": block(1), "manifest": "m.jsonl", "model": "best",
            "checkpoint": checkpoint, "decoding": {"max_new_tokens": 64}, "max_answer_tokens": 16, "run_seconds": 9.5}


CAPTION = "It is night. A red car is ahead in our lane. The traffic light is green. Behind, a blue bus follows in the left lane."
WRONG_CAPTION = CAPTION.replace("red car", "white truck")
ROWS = [
    {"sample_token": "clean", "reference": CAPTION, "prediction_base": "noise", "prediction_finetuned": CAPTION},
    {"sample_token": "failing", "reference": CAPTION, "prediction_base": "noise", "prediction_finetuned": WRONG_CAPTION},
]
ANSWERS = [
    {"sample_token": "clean", "type": "front.light", "question": "Q-clean", "reference": "green",
     "prediction_base": "red", "prediction_finetuned": "Green."},
    {"sample_token": "failing", "type": "front.light", "question": "Q-right", "reference": "green",
     "prediction_base": "green", "prediction_finetuned": "green"},
    {"sample_token": "failing", "type": "back.follows", "question": "Q-wrong", "reference": "yes",
     "prediction_base": "yes", "prediction_finetuned": "no"},
]


def page(checkpoint: dict | None = None) -> str:
    return render_report(summary(checkpoint), ROWS, [{"CAM_FRONT": IMAGE}] * 2, ANSWERS)


def test_the_page_needs_no_network_and_runs_no_script():
    html = page()
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert re.findall(r"https?://[^\s\"'<>]+", html) == ["http://www.w3.org/2000/svg"] * html.count("<svg")
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', html))


def test_a_chart_per_fact_and_per_question_type_with_both_models_and_chance_marked():
    html = page()
    charts = re.findall(r'<figure class="chart"><figcaption>([^<]*)', html)
    assert [c.strip() for c in charts] == [*sorted(FACTS), "all facts right", *TYPES, "all questions"]
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(svgs) == len(charts)
    for svg, name in zip(svgs, [*sorted(FACTS), "all facts right", *TYPES, "all questions"], strict=True):
        assert svg.count('class="bar-base"') == 1 and svg.count('class="bar-tuned"') == 1, name
        values = {**FACTS, **TYPES}.get(name)
        if values is None:
            assert "chance-line" not in svg  # the overall figures have no single chance level
            continue
        base, tuned, chance = values
        widths = [float(w) for w in re.findall(r'class="bar-(?:base|tuned)" x="\d+" y="\d+" width="([\d.]+)"', svg)]
        assert widths == [pytest.approx(BAR_WIDTH * base, abs=0.1), pytest.approx(BAR_WIDTH * tuned, abs=0.1)]
        x = float(re.search(r'class="chance-line" x1="([\d.]+)"', svg).group(1))
        assert x == pytest.approx(LABEL_WIDTH + BAR_WIDTH * chance, abs=0.1), name
        assert f"chance {100 * chance:.0f}%" in svg


def test_answers_are_coloured_and_failures_come_first():
    html = page()
    # The sample the fine-tuned model gets wrong comes before the clean one, although it is second in the file.
    assert html.index(">failing") < html.index(">clean")
    # Within it, the question the fine-tuned model got wrong comes first.
    assert html.index("Q-wrong") < html.index("Q-right")
    wrong_row = re.search(r"<tr><td>Q-wrong</td>.*?</tr>", html).group(0)
    assert re.findall(r'class="answer (right|wrong)"', wrong_row) == ["right", "wrong"]  # base, fine-tuned
    clean_row = re.search(r"<tr><td>Q-clean</td>.*?</tr>", html).group(0)
    assert re.findall(r'class="answer (right|wrong)"', clean_row) == ["wrong", "right"]  # "Green." matches
    assert '<div class="wrong"><span class="label">fine-tuned</span>' in html  # its caption misses two facts
    assert "wrong: front.vehicle_colour, front.vehicle_type" in html


def write_run(root: Path, history: list[dict], best: float, step: int) -> Path:
    (root / "best").mkdir(parents=True)
    (root / "latest" / "checkpoint").mkdir(parents=True)
    (root / "latest" / "trainer_state.json").write_text(json.dumps(
        {"step": step, "best_val_loss": best, "history": history, "epoch": 1}))
    return root


def test_the_checkpoint_is_named_by_its_path_and_training_step(tmp_path):
    run = write_run(tmp_path / "run", [{"step": 100, "val_loss": 2.0}, {"step": 200, "val_loss": 1.5},
                                       {"step": 300, "val_loss": 1.7}], best=1.5, step=340)
    best = describe_checkpoint(run / "best")
    assert best["path"] == str((run / "best").resolve()) and best["step"] == 200
    assert describe_checkpoint(run / "latest" / "checkpoint")["step"] == 340
    html = page(best)
    assert f"checkpoint: {(run / 'best').resolve()} · step 200 (the lowest validation loss" in html


@pytest.mark.parametrize("case", ["copied out of its run", "state corrupt", "hub id", "embedded"])
def test_a_checkpoint_whose_step_is_unknown_says_so(tmp_path, case):
    if case == "copied out of its run":
        (tmp_path / "best").mkdir()
        target = tmp_path / "best"
    elif case == "state corrupt":
        run = write_run(tmp_path / "run", [], best=1.0, step=5)
        (run / "latest" / "trainer_state.json").write_text("{not json")
        target = run / "best"
    elif case == "hub id":
        target = "someone/clip-vlm-checkpoint"
    else:
        target = None
    info = describe_checkpoint(target)
    assert info["step"] is None and info["path"]
    assert checkpoint_line(info).endswith("step not recorded")
