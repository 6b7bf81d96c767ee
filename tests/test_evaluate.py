"""Evaluation: caption metrics, synthetic-fact accuracy, the report, and `clip-vlm eval` end to end."""

from __future__ import annotations

import shutil

import pytest

from clip_vlm_core.evaluation import METRIC_KEYS, CaptionScorer, caption_metrics
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
    assert result["fact_chance"] == dict.fromkeys(FACT_KEYS, 1.0)  # both references state the same values
    mixed = fact_accuracy([FACT_REFERENCE, wrong_back, wrong_back], [FACT_REFERENCE] * 3)
    assert mixed["fact_chance"]["back.vehicle_type"] == 2 / 3 and mixed["fact_chance"]["front.time"] == 1.0


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
def manifests(synthetic_manifest, manifest_of):
    """Manifests of the shared synthetic tree: both views (the shared one), and the front view alone."""
    return {"both": synthetic_manifest, "front": manifest_of(["CAM_FRONT"])}


@pytest.fixture(scope="module")
def split(manifests):
    """The validation split: the keyframes of the tree's second scene."""
    return manifests["both"] / "mini_val.jsonl"


@pytest.fixture(scope="module")
def finetuned_checkpoint(tiny_base):
    """A tiny checkpoint whose gate and LoRA weights are non-zero: it captions unlike its base model. It lies
    beside the session's tiny base models (whose folder it names relatively, ../base/...)."""
    import torch

    from clip_vlm_core.model import SceneCaptioner
    from clip_vlm_core.model.tiny import tiny_captioner_config

    root = tiny_base["qwen"].parent.parent
    captioner = SceneCaptioner.build(tiny_captioner_config(tiny_base), device="cpu", trainable=True)
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
    assert "already exists and was not written by clip-vlm eval" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_eval_writes_captions_and_metrics_in_range_for_every_sample(split, tmp_path):
    out = tmp_path / "eval"
    assert run_cli("--manifest", str(split), "--out", str(out), *SAMPLE_EVAL_FLAGS) == 0
    assert sorted(p.name for p in out.iterdir()) == [".clip-vlm-output", "captions.jsonl", "metrics.json",
                                                     "report.html"]
    rows = read_jsonl(out / "captions.jsonl")
    tokens = [json_row["sample_token"] for json_row in read_jsonl(split)]
    assert [r["sample_token"] for r in rows] == tokens
    assert all(set(r) == {"sample_token", "reference", "prediction"} for r in rows)
    metrics = read_json(out / "metrics.json")
    java = shutil.which("java") is not None  # with Java, METEOR and PTB tokens come from pycocoevalcap's jars
    assert (metrics["METEOR"] is not None) == java and ("METEOR_unavailable_reason" in metrics) != java
    for key in METRIC_KEYS:
        if metrics[key] is not None:
            assert metrics[key] >= 0 and (key == "CIDEr" or metrics[key] <= 1)
    assert metrics["samples"] == len(tokens) and metrics["seconds"] > 0
    assert set(metrics["facts"]) and 0 <= metrics["exact_match"] <= 1  # synthetic captions parse as facts
    assert not list(tmp_path.glob(".eval*")), "no temporary folder is left beside the output"


@pytest.mark.slow
def test_compare_writes_base_and_finetuned_blocks_and_a_report_of_every_sample(split, finetuned_checkpoint, tmp_path):
    out = tmp_path / "cmp"
    code = run_cli("--manifest", str(split), "--out", str(out), "--checkpoint", str(finetuned_checkpoint),
                   "--compare", *SAMPLE_EVAL_FLAGS)
    assert code == 0
    metrics = read_json(out / "metrics.json")
    assert set(METRIC_KEYS) <= set(metrics["base"]) and set(METRIC_KEYS) <= set(metrics["finetuned"])
    rows = read_jsonl(out / "captions.jsonl")
    assert all({"prediction_base", "prediction_finetuned"} <= set(r) for r in rows)
    assert any(r["prediction_base"] != r["prediction_finetuned"] for r in rows), "the gate and LoRA are open"
    html = (out / "report.html").read_text()
    assert all(r["sample_token"] in html for r in rows)
    assert html.count("data:image/jpeg;base64,") == 2 * len(rows)  # both views of every sample
    assert f"checkpoint: {finetuned_checkpoint.resolve()} · step not recorded" in html  # a folder outside a run
    assert metrics["finetuned"]["seconds"] > 0 and metrics["base"]["caption_seconds"] > 0


@pytest.mark.slow  # 20-40 s on 2 shared cores
def test_base_mode_of_the_compare_run_captions_like_the_plain_base_model(split, finetuned_checkpoint, tmp_path):
    """The base column is the frozen base model: the same captions as an untrained connector without LoRA."""
    from clip_vlm_core.config import CaptionerConfig, DecodingConfig, load_json
    from clip_vlm_core.evaluate import evaluate_manifest
    from clip_vlm_core.model import SceneCaptioner

    decoding = DecodingConfig(max_new_tokens=12)
    finetuned = SceneCaptioner.from_pretrained(finetuned_checkpoint, device="cpu")
    config = load_json(CaptionerConfig, finetuned_checkpoint / "clip_vlm_config.json")
    base_dir = finetuned_checkpoint.resolve()
    plain = SceneCaptioner.build(config, device="cpu", base_dir=base_dir)
    scorer = CaptionScorer(java=None)  # METEOR is not what this test is about
    compared = evaluate_manifest(split, finetuned, tmp_path / "cmp", compare=True, limit=2, decoding=decoding,
                                 scorer=scorer)
    alone = evaluate_manifest(split, plain, tmp_path / "plain", limit=2, decoding=decoding, scorer=scorer)
    base_rows = [r["prediction_base"] for r in read_jsonl(tmp_path / "cmp" / "captions.jsonl")]
    assert base_rows == [r["prediction"] for r in read_jsonl(tmp_path / "plain" / "captions.jsonl")]
    assert compared["base"]["BLEU-1"] == alone["BLEU-1"]


@pytest.mark.slow  # 20-40 s on 2 shared cores
def test_blank_view_is_recorded_and_changes_what_the_finetuned_model_says(split, finetuned_checkpoint, tmp_path):
    from clip_vlm_core.config import DecodingConfig
    from clip_vlm_core.evaluate import evaluate_manifest
    from clip_vlm_core.model import SceneCaptioner

    captioner = SceneCaptioner.from_pretrained(finetuned_checkpoint, device="cpu")
    options = {"decoding": DecodingConfig(max_new_tokens=24), "scorer": CaptionScorer(java=None)}
    evaluate_manifest(split, captioner, tmp_path / "full", **options)
    evaluate_manifest(split, captioner, tmp_path / "blank", blank_views=("CAM_BACK",), **options)
    assert read_json(tmp_path / "blank" / "metrics.json")["blank_views"] == ["CAM_BACK"]
    assert read_json(tmp_path / "full" / "metrics.json")["blank_views"] == []
    full = [r["prediction"] for r in read_jsonl(tmp_path / "full" / "captions.jsonl")]
    blank = [r["prediction"] for r in read_jsonl(tmp_path / "blank" / "captions.jsonl")]
    assert full != blank


def test_manifest_row_whose_image_is_missing_is_one_error_naming_the_file(manifests, tmp_path, capsys):
    copy = tmp_path / "manifest"
    shutil.copytree(manifests["both"], copy)
    rows = (copy / "mini_val.jsonl").read_text().splitlines()
    rows[1] = rows[1].replace("CAM_BACK/", "CAM_BACK/gone-", 1)
    (copy / "mini_val.jsonl").write_text("\n".join(rows) + "\n")
    assert run_cli("--manifest", str(copy / "mini_val.jsonl"), "--out", str(tmp_path / "out"), "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "gone-" in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_model_views_missing_from_the_manifest_are_one_clear_error(manifests, tmp_path, capsys):
    front_only = manifests["front"] / "mini_val.jsonl"
    assert run_cli("--manifest", str(front_only), "--out", str(tmp_path / "out"), "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "['CAM_FRONT', 'CAM_BACK']" in err and "no ['CAM_BACK']" in err


def test_blanking_a_view_the_model_does_not_read_is_refused(split, tmp_path, capsys):
    code = run_cli("--manifest", str(split), "--out", str(tmp_path / "out"), "--blank-view", "CAM_LEFT",
                   "--device", "cpu")
    assert code == 2
    assert "cannot blank view(s) ['CAM_LEFT']" in capsys.readouterr().err
