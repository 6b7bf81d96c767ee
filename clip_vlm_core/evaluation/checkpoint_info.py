"""Which checkpoint an evaluation read: its full path and the training step it holds, not just "best".

A training run folder holds best/ (the lowest validation loss so far) and latest/ (checkpoint/ and
trainer_state.json). The step is found, in this order, from:
- a `step` the checkpoint folder records itself (step.json / training_step.json, or `step` in
  clip_vlm_config.json), for checkpoints written that way;
- latest/checkpoint/: the step in latest/trainer_state.json;
- best/: the first validation in latest/trainer_state.json's history at the best validation loss.
When none says (a folder copied out of its run, a hub id, the embedded model), the step is None and the
report says it was not recorded. Reading the run's state never fails an evaluation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from clip_vlm_core.errors import UserError

MAX_STATE_BYTES = 64 * 2**20  # trainer_state.json holds RNG states and the validation history


def _read(path: Path) -> dict[str, Any] | None:
    from clip_vlm_core.jsonin import read_json_object

    if not path.is_file():
        return None
    try:
        return read_json_object(path, str(path), MAX_STATE_BYTES)
    except (UserError, OSError):
        return None


def _step(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _own_step(folder: Path) -> tuple[int | None, str]:
    for name in ("step.json", "training_step.json", "clip_vlm_config.json"):
        record = _read(folder / name)
        if record is not None and _step(record.get("step")) is not None:
            return record["step"], f"recorded in {name}"
    return None, ""


def _step_from_run(folder: Path) -> tuple[int | None, str]:
    if folder.name == "checkpoint" and folder.parent.name == "latest":
        state = _read(folder.parent / "trainer_state.json")
        if state is not None and _step(state.get("step")) is not None:
            return state["step"], "latest/trainer_state.json"
        return None, ""
    state = _read(folder.parent / "latest" / "trainer_state.json")
    if folder.name != "best" or state is None:
        return None, ""
    best, history = state.get("best_val_loss"), state.get("history")
    if not isinstance(best, int | float) or not isinstance(history, list):
        return None, ""
    for entry in history:
        if not isinstance(entry, dict):
            continue
        loss, step = entry.get("val_loss"), _step(entry.get("step"))
        if step is not None and isinstance(loss, int | float) and math.isclose(loss, best, rel_tol=1e-9, abs_tol=1e-12):
            return step, f"the lowest validation loss ({best:.4g}) in latest/trainer_state.json"
    return None, ""


def describe_checkpoint(checkpoint: str | Path | None, model_name: str = "") -> dict[str, Any]:
    """{"path": where the weights came from (absolute for a folder), "step": int or None, "step_from": how
    the step was found ("" when it was not)}."""
    from clip_vlm_core.model.model_refs import EMBEDDED_MODELS, embedded_model_path, embedded_name

    embedded = embedded_name(checkpoint)
    if checkpoint is None and model_name.removeprefix("embedded-") in EMBEDDED_MODELS:
        embedded = model_name.removeprefix("embedded-")  # a captioner loaded from the embedded model it names
    if embedded is not None:
        return {"path": str(embedded_model_path(embedded)), "step": None, "step_from": "",
                "name": model_name or f"embedded-{embedded}"}
    folder = Path(checkpoint)
    if not folder.is_dir():  # a hub id
        return {"path": str(checkpoint), "step": None, "step_from": "", "name": model_name or str(checkpoint)}
    folder = folder.resolve()
    step, step_from = _own_step(folder)
    if step is None:
        step, step_from = _step_from_run(folder)
    return {"path": str(folder), "step": step, "step_from": step_from, "name": model_name or folder.name}


def checkpoint_line(info: dict[str, Any] | None, model_name: str = "") -> str:
    """What the report says of the checkpoint: its path and step, or that the step was not recorded."""
    if not info:
        return f"model: {model_name}" if model_name else "model: not recorded"
    step = f"step {info['step']:,} ({info['step_from']})" if info.get("step") is not None else "step not recorded"
    return f"checkpoint: {info['path']} · {step}"
