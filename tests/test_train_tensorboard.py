"""TensorBoard shows more than curves (issue 28, item 7): sample captions (made from the cached encoder outputs,
the encoders unloaded, or from raw images), validation question accuracy when the validation data has
questions, and the recipe as hyperparameters. Read back from the event files with EventAccumulator."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_train import CONFIGS, tiny_overrides

from clip_vlm_core.train import run_training
from clip_vlm_core.train_config import load_run_config


@pytest.fixture(scope="module")
def qa_manifest(manifest_of) -> Path:
    """The synthetic manifest with its questions (qa.jsonl)."""
    from clip_vlm_core.data.synthetic import QA_FILE

    return manifest_of(qa_file=QA_FILE)


def _events(run_dir: Path):
    """(the run's scalars and texts, the hparams event file's accumulator)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    accumulators = []
    for file in files:
        events = EventAccumulator(str(file), size_guidance={"tensors": 0, "scalars": 0})
        events.Reload()
        accumulators.append(events)
    main = next(e for e in accumulators if e.Tags()["scalars"])
    hparams = next(e for e in accumulators if "_hparams_/session_start_info" in e.summary_metadata)
    return main, hparams


def _text(events, tag: str) -> str:
    return events.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


@pytest.mark.parametrize("cache", [True, False])
def test_tensorboard_has_captions_question_accuracy_and_hparams(cache, qa_manifest, tmp_path):
    run_dir = tmp_path / "tb"
    config = load_run_config(CONFIGS / "synthetic-tiny.yaml", [
        *tiny_overrides(qa_manifest, run_dir, max_steps=2, eval_every=2), "data.qa_per_caption=2.0",
        f"data.cache_encoders={str(cache).lower()}"])
    run_training(config, show_progress=False)
    events, hparams = _events(run_dir)

    captions = _text(events, "samples/captions")
    references = [yaml.safe_load(line)["caption"] for line in (qa_manifest / "mini_val.jsonl").read_text().splitlines()
                  if line.strip()]
    assert captions.count("**reference:**") == min(4, len(references)) and captions.count("**model:**") >= 1
    assert any(ref in captions for ref in references)

    accuracy = events.Scalars("val/question_accuracy")
    assert [e.step for e in accuracy] == [2] and 0.0 <= accuracy[0].value <= 1.0
    assert any(tag.startswith("val/question_accuracy/") for tag in events.Tags()["scalars"])
    answers = _text(events, "samples/answers")
    assert "reference:" in answers and "?" in answers  # the question itself, not the chat template's role

    from tensorboard.plugins.hparams import plugin_data_pb2

    start = hparams.summary_metadata["_hparams_/session_start_info"].plugin_data.content
    recorded = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert recorded["optim.batch_size"].number_value == 2
    assert recorded["optim.loss_weighting"].string_value == "sample"
    flag = recorded["data.cache_encoders"]  # a boolean, which add_hparams records as a number
    assert bool(flag.bool_value or flag.number_value) is cache


def test_without_questions_there_is_no_question_accuracy(synthetic_manifest, tmp_path):
    run_dir = tmp_path / "noqa"
    run_training(load_run_config(CONFIGS / "synthetic-tiny.yaml",
                                 tiny_overrides(synthetic_manifest, run_dir, max_steps=1, eval_every=1)),
                 show_progress=False)
    events, _ = _events(run_dir)
    assert "val/question_accuracy" not in events.Tags()["scalars"]
    assert "samples/captions/text_summary" in events.Tags()["tensors"]
