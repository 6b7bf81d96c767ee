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



FACT_REFERENCE = ("It is night. A red car is ahead in our lane. The traffic light is green. "
                  "Behind, a blue bus follows in the left lane.")


def test_fact_accuracy_scores_each_fact_and_exact_match_on_hand_written_captions():
    from clip_vlm_core.data.synthetic import FACT_KEYS
    from clip_vlm_core.evaluation import fact_accuracy

    wrong_back = ("It is night. A red car is ahead in our lane. The traffic light is green. "
                  "Behind, a blue truck follows in the right lane.")
    result = fact_accuracy([FACT_REFERENCE, FACT_REFERENCE], [FACT_REFERENCE, wrong_back])
    assert set(result["facts"]) == set(FACT_KEYS)
    assert result["facts"]["front.vehicle_type"] == 1.0
    assert result["facts"]["back.vehicle_colour"] == 1.0
    assert result["facts"]["back.vehicle_type"] == 0.5 and result["facts"]["back.lane"] == 0.5
    assert result["exact_match"] == 0.5
    assert result["samples"] == 2


def test_fact_accuracy_counts_unparseable_predictions_as_wrong():
    from clip_vlm_core.evaluation import fact_accuracy

    result = fact_accuracy([FACT_REFERENCE], ["blah blah"])
    assert all(accuracy == 0.0 for accuracy in result["facts"].values())
    assert result["exact_match"] == 0.0


def test_fact_accuracy_is_empty_for_captions_that_are_not_synthetic():
    from clip_vlm_core.evaluation import fact_accuracy

    assert fact_accuracy(REFERENCES, REFERENCES) == {}


# -- end to end on a synthetic nuScenes tree ---------------------------------------------------------

SAMPLE_EVAL_FLAGS = ["--max-new-tokens", "24", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def manifests(synthetic_nuscenes, tmp_path_factory):
    """Manifests of the shared synthetic tree: both views, and the front view alone."""
    from clip_vlm_core.data.manifest import build_manifest

    root = tmp_path_factory.mktemp("manifests")
    out = {}
    for name, cameras in (("both", ["CAM_FRONT", "CAM_BACK"]), ("front", ["CAM_FRONT"])):
        build_manifest(dataroot=synthetic_nuscenes, version="v1.0-mini", captions=synthetic_nuscenes / "nuinteract",
                       cameras=cameras, out=root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def split(manifests):
    """The split file with the most samples (the evaluation input)."""
    return max(manifests["both"].glob("*.jsonl"), key=lambda p: len(p.read_text().splitlines()))


@pytest.fixture(scope="module")
def finetuned_checkpoint(tmp_path_factory):
    """A tiny checkpoint whose gate and LoRA weights are non-zero: it captions unlike its base model."""
    import torch

    from clip_vlm_core.model import SceneCaptioner
    from clip_vlm_core.model.tiny import save_tiny_base_models, tiny_captioner_config

    root = tmp_path_factory.mktemp("models")
    base = save_tiny_base_models(root / "base", seed=0)
    captioner = SceneCaptioner.build(tiny_captioner_config(base), device="cpu", trainable=True)
    torch.manual_seed(1)
    with torch.no_grad():
        captioner.model.connector.gate.fill_(0.7)
        for name, param in captioner.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return captioner.save_pretrained(root / "ckpt", base_models_relative_to=root / "ckpt")


def read_jsonl(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def read_json(path):
    import json

    return json.loads(path.read_text())


def run_cli(*argv: str) -> int:
    from clip_vlm_core.cli import main

    return main(["eval", *argv])


def test_missing_manifest_is_one_clear_error(tmp_path, capsys):
    assert run_cli("--manifest", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "manifest" in err and "nope.jsonl does not exist" in err and "Traceback" not in err


def test_existing_output_folder_is_refused_without_overwrite(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert run_cli("--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "out")) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
