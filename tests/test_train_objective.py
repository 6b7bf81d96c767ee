"""Training and validation curves measure the same thing (issue 28, item 3): validation is scored with the
training objective (optim.loss_weighting), the other weighting is logged beside it, best/ and early stopping
follow the objective, and train/loss is the mean since the last log, not the last micro-batch."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import CONFIGS, tiny_overrides, train_losses

from clip_vlm_core.train import run_training
from clip_vlm_core.train_config import load_run_config

RECIPE = CONFIGS / "synthetic-tiny.yaml"


def _history(run_dir) -> list[dict]:
    return json.loads((run_dir / "latest" / "trainer_state.json").read_text())["history"]


@pytest.mark.parametrize("weighting", ["sample", "token"])
def test_validation_follows_the_training_objective_and_logs_the_other(weighting, synthetic_manifest, tmp_path):
    run_dir = tmp_path / weighting
    config = load_run_config(RECIPE, tiny_overrides(synthetic_manifest, run_dir, max_steps=3, eval_every=1,
                                                    loss_weighting=weighting))
    summary = run_training(config, show_progress=False)
    evals = [h for h in _history(run_dir) if "val_loss" in h]
    assert [h["step"] for h in evals] == [1, 2, 3]
    for h in evals:
        assert h["val_loss"] == h[f"val_loss_{weighting}"]
        # Captions of different lengths: the two weightings give different numbers.
        assert h["val_loss_sample"] != pytest.approx(h["val_loss_token"], rel=1e-4)
    assert summary["best_val_loss"] == min(h[f"val_loss_{weighting}"] for h in evals)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run_dir / "tensorboard").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"val/loss", "val/loss_sample", "val/loss_token"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("val/loss")] == pytest.approx([h["val_loss"] for h in evals])


def test_validation_losses_are_the_per_item_and_per_token_means(synthetic_manifest, tmp_path):
    """Scored batch by batch across batches of mixed lengths, they equal the means over items one at a time."""
    from accelerate import Accelerator

    from clip_vlm_core.model.loss import sample_mean_loss, target_tokens
    from clip_vlm_core.train_setup import build_captioner, datasets
    from clip_vlm_core.train_validation import validation_losses

    config = load_run_config(RECIPE, tiny_overrides(synthetic_manifest, tmp_path / "v", batch_size=3))
    accelerator = Accelerator(cpu=True)
    captioner = build_captioner(config, tmp_path / "v", None, accelerator)
    _, val_set, collate = datasets(config, tmp_path / "v", captioner, accelerator)
    assert len(val_set) > 3  # more than one batch, the last one short
    got = validation_losses(captioner.model, val_set, collate, config, accelerator)
    captioner.model.eval()
    per_item, tokens = [], []
    with torch.no_grad():
        for i in range(len(val_set)):
            batch = collate([val_set[i]])
            per_item.append(sample_mean_loss(captioner.model(**batch).logits, batch["labels"]).item())
            tokens.append(target_tokens(batch["labels"]).item())
    assert got["sample"] == pytest.approx(sum(per_item) / len(per_item), rel=1e-5)
    assert got["token"] == pytest.approx(sum(p * t for p, t in zip(per_item, tokens, strict=True)) / sum(tokens), rel=1e-5)


def test_train_loss_is_the_mean_since_the_last_log(synthetic_manifest, tmp_path):
    every = load_run_config(RECIPE, tiny_overrides(synthetic_manifest, tmp_path / "every", max_steps=6, eval_every=6))
    run_training(every, show_progress=False)
    per_step = train_losses(_history(tmp_path / "every"))
    assert len(per_step) == 6
    third = load_run_config(RECIPE, tiny_overrides(synthetic_manifest, tmp_path / "third", max_steps=6, eval_every=6,
                                                   log_every=3))
    run_training(third, show_progress=False)
    logged = train_losses(_history(tmp_path / "third"))
    assert logged == pytest.approx([sum(per_step[:3]) / 3, sum(per_step[3:]) / 3], rel=1e-5)
    assert logged[0] != pytest.approx(per_step[2], rel=1e-4)  # not the last micro-batch's
