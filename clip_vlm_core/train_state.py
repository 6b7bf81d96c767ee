"""A training run's latest/ folder: everything needed to resume, written atomically and read back checked.

    latest/checkpoint/      the captioner checkpoint (model/checkpoint.py)
    latest/optimizer.pt     AdamW's state (torch.save of tensors and numbers: read weights_only)
    latest/scheduler.json   the learning-rate schedule's state
    latest/rng.safetensors  torch's (and each GPU's) random-number state
    latest/trainer_state.json  step, epoch, position in the epoch, best validation loss, history, Python's and
                            numpy's random state
    latest/recipe.yaml      the recipe this state was trained by

Like nanoGPT's checkpoint dict, it holds what a resumed run needs to continue as if never stopped (the same
batches, the same dropout masks). A resumed run's recipe may change steps, schedule, logging and data, but
not the model its checkpoint holds (`check_resume_recipe`). Every file is checked before it is read or
applied: the optimizer file's storages against the parameters they belong to (8-bit state allowed), the
scheduler's and trainer's state as bounded JSON of the expected fields.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from clip_vlm_core.atomic import restore_interrupted, staged_dir
from clip_vlm_core.errors import UserError
from clip_vlm_core.jsonin import read_json_object
from clip_vlm_core.jsonout import dumps
from clip_vlm_core.limits import MAX_SMALL_JSON_BYTES
from clip_vlm_core.model.tensor_files import (
    OPTIMIZER_STATE,
    TensorSpec,
    check_finite,
    check_torch_zip,
    dtype_name,
    load_checked,
    read_safetensors_header,
    shape_text,
)
from clip_vlm_core.train_config import RunConfig, read_recipe

log = logging.getLogger(__name__)

_FP32 = 4  # bytes a float32 state element takes: no optimizer state is held wider
_SLACK = 1 << 20  # per-file metadata beyond the tensors


@dataclass
class TrainerState:
    """Progress that a resumed run continues from (saved as JSON in latest/)."""

    step: int = 0
    epoch: int = 0
    batches_into_epoch: int = 0
    best_val_loss: float = math.inf
    evals_without_improvement: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.best_val_loss is None:  # saved as null: JSON has no Infinity
            self.best_val_loss = math.inf



# Recipe settings that make the model a checkpoint holds: a resumed run keeps them (its checkpoint carries
# them), so a recipe that changes one is refused rather than silently ignored.
MODEL_SETTINGS = ("captioner.", "optim.init", "optim.optimizer")  # the optimizer: its saved state's form
SHAPE_SETTINGS = ("qwen_model", "clip_model", "clip_pretrained", "clip_tokens", "views", "context_views",
                  "history_frames", "connector_layers", "connector_heads", "lora_r", "lora_alpha", "lora_targets",
                  "init")


def check_resume_recipe(config: RunConfig, resume_dir: Path) -> dict[str, tuple[Any, Any]]:
    """Refuse a recipe that changes the model being resumed, naming each difference; return the others
    (steps, schedule, logging, data: {field: (saved, now)}), which the resumed run applies."""
    saved_path = next((p for p in (resume_dir / "recipe.yaml", resume_dir.parent / "config.yaml") if p.is_file()), None)
    if saved_path is None:
        log.warning("cannot compare the recipe with %s's (no recipe.yaml beside it): resuming as given", resume_dir)
        return {}
    saved = read_recipe(saved_path, "saved recipe") or {}
    if not isinstance(saved, dict):
        raise UserError(f"cannot resume {resume_dir}: its recipe {saved_path} is not a mapping of sections")
    saved = _flatten(saved)
    current = _flatten(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    # A setting added since the run was saved (captioner.quantize, optim.optimizer, ...) had its default then.
    defaults = _flatten(yaml.safe_load(yaml.safe_dump(RunConfig().to_dict())))
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    changed = {k: (saved.get(k), current.get(k)) for k in sorted(set(saved) | set(current))
               if k != "run_dir" and saved.get(k) != current.get(k)}
    refused = {k: v for k, v in changed.items() if k.startswith(MODEL_SETTINGS)}
    if refused:
        shape = any(k.rsplit(".", 1)[-1] in SHAPE_SETTINGS for k in refused)
        what = "the model's shape" if shape else "settings its checkpoint was trained with"
        raise UserError(
            f"cannot resume {resume_dir}: the recipe changes {what} ({differences(refused)}); resume with the "
            f"run's own settings for these, or start a new run (another run_dir)"
        )
    return changed


def _flatten(recipe: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for key, value in recipe.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def differences(changed: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())


def resume_dir(run_dir: Path, resume: str | None) -> Path | None:
    """The latest/ folder to resume from. A run killed between the two renames of a folder replace left
    it (or best/) set aside as `.latest.old-*`: it is put back first (clip_vlm_core.atomic)."""
    if resume is None:
        return None
    path = run_dir / "latest" if resume == "latest" else Path(resume)
    restore_interrupted(path)
    if continues_run(run_dir, resume):
        restore_interrupted(run_dir / "best")
    if not (path / "trainer_state.json").is_file():
        raise UserError(f"cannot resume: {path} is not a latest/ checkpoint (no trainer_state.json)")
    return path


def continues_run(run_dir: Path, resume: str | None) -> bool:
    """Resuming this run's own latest/ (or a checkpoint inside the run folder) writes on in the folder."""
    if resume is None:
        return False
    return resume == "latest" or Path(resume).resolve().is_relative_to(run_dir.resolve())



def save_latest(run_dir, captioner, optimizer, scheduler, state, accelerator) -> None:
    """latest/ = checkpoint + optimizer + scheduler + RNG + trainer state, swapped in atomically."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    target = run_dir / "latest"
    with staged_dir(target) as tmp:
        _write_latest(tmp, target, captioner, optimizer, scheduler, state)


def _write_latest(tmp: Path, target: Path, captioner, optimizer, scheduler, state: TrainerState) -> None:
    from safetensors.torch import save_file

    captioner.save_pretrained(tmp / "checkpoint", base_models_relative_to=target / "checkpoint")
    if (target.parent / "config.yaml").is_file():  # the recipe this state was trained by, for resuming
        shutil.copyfile(target.parent / "config.yaml", tmp / "recipe.yaml")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")  # tensors and numbers only: loads weights_only
    (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, tmp / "rng.safetensors")
    np_state = np.random.get_state()
    record = {**state.__dict__, "python_rng": _jsonable(random.getstate()),
              "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    (tmp / "trainer_state.json").write_text(dumps(record))  # an infinite best loss as null


def load_latest(resume_dir: Path, optimizer, scheduler) -> TrainerState:
    """Optimizer, scheduler, RNG and trainer state of latest/, each checked before it is read or applied:
    the optimizer file's storages against the parameters they belong to (8-bit state allowed), the
    scheduler's and trainer's state as bounded JSON of the expected fields."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer_file = resume_dir / "optimizer.pt"
    check_optimizer_file(optimizer_file, params)
    try:
        state = torch.load(optimizer_file, weights_only=True)  # tensors and numbers only, no code
    except Exception as exc:  # noqa: BLE001 - torch reports a damaged file in many types; all mean the same
        raise UserError(f"optimizer state {optimizer_file} is damaged ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    check_optimizer_state(state, params, optimizer_file)
    try:
        optimizer.load_state_dict(state)
    except ValueError as exc:  # another parameter-group layout: an older clip-vlm wrote it
        raise UserError(f"cannot resume {resume_dir}: its optimizer state does not fit this version's parameter "
                        f"groups ({exc}); start a new run with optim.init={resume_dir / 'checkpoint'}") from None
    scheduler.load_state_dict(_checked_scheduler_state(resume_dir / "scheduler.json", scheduler))
    rng = load_rng_state(resume_dir / "rng.safetensors")
    record = read_json_object(resume_dir / "trainer_state.json", "trainer state", MAX_SMALL_JSON_BYTES)
    return _restore_trainer_state(record, rng, resume_dir / "trainer_state.json")


def _checked_scheduler_state(path: Path, scheduler) -> dict[str, Any]:
    """scheduler.json: the keys the scheduler's own state has, each of the same kind (LambdaLR's
    load_state_dict sets whatever keys it is given as attributes)."""
    saved = read_json_object(path, "scheduler state", MAX_SMALL_JSON_BYTES)
    fresh = scheduler.state_dict()
    for key, value in saved.items():
        if key not in fresh:
            raise UserError(f"scheduler state {path} holds {key!r}, which the schedule does not have")
        ours = fresh[key]
        same_kind = (isinstance(value, list) and isinstance(ours, list) and len(value) == len(ours)) or \
            (isinstance(value, int | float) and isinstance(ours, int | float)) or value is None or \
            type(value) is type(ours)
        if not same_kind:
            raise UserError(f"scheduler state {path}: {key} is {value!r}, not what the schedule keeps there")
    return saved


def _restore_trainer_state(record: dict[str, Any], rng: dict[str, torch.Tensor], path: Path) -> TrainerState:
    """Set the RNGs and return the TrainerState that trainer_state.json holds, or say it is damaged."""
    known = {f.name for f in dataclasses.fields(TrainerState)} | {"python_rng", "numpy_rng"}
    unknown = sorted(set(record) - known)
    if unknown:
        raise UserError(f"trainer state {path} holds unknown key(s) {unknown}")
    try:
        state = TrainerState(**{k: v for k, v in record.items() if k not in ("python_rng", "numpy_rng")})
        for name in ("step", "epoch", "batches_into_epoch", "evals_without_improvement"):
            value = getattr(state, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} is {value!r}, not a count")
        if not isinstance(state.best_val_loss, int | float) or not isinstance(state.history, list):
            raise ValueError("best_val_loss or history is of the wrong kind")
        python_rng, np_state = record["python_rng"], record["numpy_rng"]
        random.setstate(_tupled(python_rng))
        np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all([rng[k] for k in sorted(k for k in rng if k.startswith("cuda_"))])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, OverflowError) as exc:
        raise UserError(f"trainer state {path} is damaged ({type(exc).__name__}: {exc})") from None
    return state


def latest_step(run_dir: Path) -> int | str:
    try:
        return read_json_object(run_dir / "latest" / "trainer_state.json", "trainer state", MAX_SMALL_JSON_BYTES)["step"]
    except (UserError, KeyError):
        return "none saved yet"


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, tuple | list) else value


def _tupled(value):
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value




# -- checks of what latest/ holds ------------------------------------------------------------------------

def check_optimizer_file(path: Path, params: list[torch.Tensor]) -> None:
    """optimizer.pt (torch.save, read weights-only) before it is read: no storage larger than the largest
    trainable parameter's state in fp32, no more than two fp32 states per parameter in all (8-bit state
    takes less)."""
    largest = max((p.numel() for p in params), default=0) * _FP32 + 4096
    total = sum(p.numel() for p in params) * 2 * _FP32 + len(params) * 4096 + _SLACK
    check_torch_zip(path, "optimizer state", largest, total)


def check_optimizer_state(state: Any, params: list[torch.Tensor], where: Path) -> None:
    """An optimizer state dict (AdamW's, or an 8-bit optimizer's) fits the parameters it is for: each
    state tensor of an allowed dtype, AdamW's moments of the parameter's shape, floats finite."""
    shown = f"optimizer state {where}"
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) or \
            not isinstance(state.get("param_groups"), list):
        raise UserError(f"{shown} is not an optimizer state (no state and param_groups)")
    for index, entry in state["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise UserError(f"{shown} holds state for parameter {index!r}, which this model does not have")
        param = params[index]
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                continue
            name = dtype_name(value.dtype)
            if name not in OPTIMIZER_STATE:
                raise UserError(f"{shown}: {key} of parameter {index} is {name}; optimizer state must be one of "
                                f"{', '.join(sorted(OPTIMIZER_STATE))}")
            if key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "state1", "state2") and \
                    tuple(value.shape) != tuple(param.shape):
                raise UserError(f"{shown}: {key} of parameter {index} has shape {shape_text(tuple(value.shape))}, "
                                f"the parameter {shape_text(tuple(param.shape))}")
            if value.numel() > max(param.numel(), 4096):
                raise UserError(f"{shown}: {key} of parameter {index} has {value.numel():,} elements, more than its "
                                f"parameter")
        check_finite({f"{k} of parameter {index}": v for k, v in entry.items() if isinstance(v, torch.Tensor)},
                     shown)


def rng_specs(header: Mapping[str, Any]) -> dict[str, TensorSpec]:
    """rng.safetensors of latest/: torch's CPU generator state, and one small state per CUDA device."""
    specs = {"torch": TensorSpec(tuple(torch.get_rng_state().shape), frozenset({"U8"}))}
    for name in header:
        if re.fullmatch(r"cuda_\d{1,3}", name) and header[name].numel <= 64:
            specs[name] = TensorSpec(header[name].shape, frozenset({"U8"}))
    return specs


def load_rng_state(path: Path) -> dict[str, torch.Tensor]:
    header = read_safetensors_header(path, "random-number state")
    return load_checked(path, rng_specs(header), "random-number state", finite=False,
                        declared="the generators' state of this machine")
