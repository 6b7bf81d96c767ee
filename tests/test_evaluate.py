"""Evaluation: caption metrics, synthetic-fact accuracy, the report, and `clip-vlm eval` end to end."""

from __future__ import annotations

import shutil

import pytest

from clip_vlm_core.evaluation import METRIC_KEYS, caption_metrics
from clip_vlm_core.evaluation.report import render_report

REFERENCES = [
    "Two cars are ahead and a truck follows behind.",
    "The road ahead is empty; a bus is behind the car.",
    "A pedestrian crosses in front while nothing is behind.",
]


def test_identical_captions_score_bleu4_one_and_positive_cider():
    metrics = caption_metrics(REFERENCES, REFERENCES, java=None)
    assert metrics["BLEU-4"] == pytest.approx(1.0)
    assert metrics["ROUGE-L"] == pytest.approx(1.0)
    assert metrics["CIDEr"] > 0


def test_scores_lie_in_unit_range_except_cider():
    predictions = ["Two cars are ahead.", "", "A bus is behind and a pedestrian crosses."]
    metrics = caption_metrics(REFERENCES, predictions, java=None)
    for key in METRIC_KEYS:
        if key == "METEOR":
            continue
        assert metrics[key] >= 0
        assert key == "CIDEr" or metrics[key] <= 1


def test_without_java_meteor_is_null_with_a_reason_and_the_rest_is_scored():
    metrics = caption_metrics(REFERENCES, REFERENCES[::-1], java=None)
    assert metrics["METEOR"] is None
    assert "Java" in metrics["METEOR_unavailable_reason"]
    assert all(isinstance(metrics[k], float) for k in METRIC_KEYS if k != "METEOR")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer need Java")
def test_with_java_meteor_is_scored_on_ptb_tokens():
    metrics = caption_metrics(REFERENCES, REFERENCES)
    assert metrics["METEOR"] == pytest.approx(1.0)
    assert "METEOR_unavailable_reason" not in metrics
    assert metrics["BLEU-4"] == pytest.approx(1.0)


def test_report_escapes_captions_and_shows_both_models():
    block = {**caption_metrics(REFERENCES[:2], REFERENCES[:2], java=None), "samples": 2, "seconds": 0.1}
    summary = {"base": block, "finetuned": block, "manifest": "m.jsonl", "model": "m", "blank_views": []}
    rows = [
        {"sample_token": "tok<1>", "reference": REFERENCES[0], "prediction_base": "<script>x</script>",
         "prediction_finetuned": "a & b"},
        {"sample_token": "tok2", "reference": REFERENCES[1], "prediction_base": "", "prediction_finetuned": ""},
    ]
    html = render_report(summary, rows, [{"CAM_FRONT": "data:image/jpeg;base64,AAAA"}] * 2)
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "a &amp; b" in html and "tok&lt;1&gt;" in html
    assert "base" in html and "fine-tuned" in html


@pytest.mark.parametrize("java", [None, pytest.param(shutil.which("java"), marks=pytest.mark.skipif(
    shutil.which("java") is None, reason="needs Java"))])
def test_line_breaks_inside_a_caption_do_not_shift_later_samples(java):
    from clip_vlm_core.evaluation import CaptionScorer

    tokens = CaptionScorer(java).tokenize(["a car\rahead", "one\u2028two\x0bthree", "last one"])
    assert tokens == ["a car ahead", "one two three", "last one"]
