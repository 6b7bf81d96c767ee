"""Fine-tune the captioner: connector + LoRA over frozen Qwen2.5-VL and OpenCLIP.

Loop mechanics come from accelerate (devices, DDP under `accelerate launch`/`torchrun`, mixed
precision, gradient accumulation); the schedule from transformers. What is ours: the parameter groups
(weight decay on weight matrices only), a resumable checkpoint without pickles that refuses a recipe
changing the model it holds, the memory plan said at the start, and stopping cleanly.

Run folder:
    config.yaml         the resolved recipe          run_info.json   git commit, seed, versions
    base/               tiny base models (init: tiny)  data/          synthetic data (if asked)
    latest/             everything needed to resume  best/          inference checkpoint (lowest val loss)
    tensorboard/        loss, learning rate, grad norm, samples/s

A fresh run refuses an existing non-empty run folder unless `overwrite` (then it is emptied first),
and never empties one that is or holds an input (recipe, manifests, dataroot, init checkpoint, base
models); `--resume latest` continues in it. Checkpoints are written through staging folders, so a full
disk or a read-only folder ends the run in one sentence with the earlier checkpoints intact.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from clip_vlm_core.atomic import (
    guard_output,
    remove_output,
    restore_interrupted,
    staged_dir,
    staging_area,
    write_marker,
    write_text,
)
from clip_vlm_core.errors import UserError
from clip_vlm_core.jsonin import read_json_object
from clip_vlm_core.jsonout import dumps
from clip_vlm_core.limits import MAX_SMALL_JSON_BYTES
from clip_vlm_core.model.vision_attention import enable_varlen_vision_attention
from clip_vlm_core.train_config import RunConfig, read_recipe

log = logging.getLogger(__name__)

WRITER = "clip-vlm train"


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


class TrainingStopped(UserError):
    """The run stopped early for a reason the user should read (non-finite loss)."""


def run_training(
    config: RunConfig,
    resume: str | None = None,
    show_progress: bool = True,
    stop_after: int | None = None,
    overwrite: bool = False,
    recipe: str | Path | None = None,
) -> dict[str, Any]:
    """Train per `config`; `resume` is a latest/ folder or "latest" (this run's). `stop_after` ends the
    session at that step as an interruption would (latest/ saved, schedule unchanged). `overwrite`
    empties an existing run folder first; `recipe` (the YAML read) is protected as an input. Returns a
    summary (best_val_loss None before any validation)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    run_dir = Path(config.run_dir)
    continuing = _continues_run(run_dir, resume)
    if not continuing:  # every process checks before any of them changes a thing
        guard_output(run_dir, WRITER, _inputs(config, recipe, resume), overwrite, flag="run_dir", reuse_own=False)
    o = config.optim
    mixed = o.mixed_precision if o.mixed_precision != "auto" else ("bf16" if torch.cuda.is_available() else "no")
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # makes torchrun on CPU use DDP over gloo instead of N lone runs
        gradient_accumulation_steps=o.grad_accum_steps,
        mixed_precision=mixed,
        log_with="tensorboard",
        project_dir=str(run_dir),
    )
    resume_dir = _resume_dir(run_dir, resume)
    # a recipe that changes the model is refused before anything is written or loaded
    changed = check_resume_recipe(config, resume_dir) if resume_dir is not None else {}
    set_seed(o.seed)
    if accelerator.is_main_process:
        if overwrite and not continuing and run_dir.exists():
            remove_output(run_dir)
        if resume_dir is None:
            _write_run_record(run_dir, config)
        else:  # a resumed run records itself once latest/ has been read whole; a folder it cannot write stops it now
            with staging_area(run_dir / "latest"):
                pass
    accelerator.wait_for_everyone()

    captioner = _build_captioner(config, run_dir, resume_dir, accelerator)
    # Qwen's frozen vision tower attends over all its windows in one flash call on a GPU (here and when
    # the encoder cache is built); elsewhere this changes nothing.
    if enable_varlen_vision_attention(captioner.model.base_qwen) is None:
        log.info("vision tower: packed (varlen) flash attention")
    train_set, val_set, collate = _datasets(config, run_dir, captioner, accelerator)
    val_set = validation_mix(val_set, config.data.qa_per_caption)
    model = captioner.model
    if _plan_memory(config, captioner, train_set, accelerator):
        model.base_qwen.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.base_qwen.enable_input_require_grads()
    optimizer = torch.optim.AdamW(parameter_groups(model, o), betas=(0.9, 0.999))
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, o.warmup_steps, o.max_steps)
    state = TrainerState()
    if resume_dir is not None:
        state = _load_latest(resume_dir, optimizer, scheduler)
        apply_recipe_rates(optimizer, scheduler, parameter_groups(model, o))
        if accelerator.is_main_process:
            _write_run_record(run_dir, config)
            if changed:  # said once the resumed run is under way
                log.info("resuming with changed settings: %s", _differences(changed))
        log.info("resuming from %s at step %d", resume_dir, state.step)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.init_trackers("tensorboard")

    stop = _StopRequest()
    progress = _progress(o.max_steps, state.step, accelerator, show_progress)
    trainable = [p for p in model.parameters() if p.requires_grad]
    start, samples_since, saved_step = time.perf_counter(), 0, state.step
    try:
        while state.step < o.max_steps and not stop.requested:
            loader = _epoch_loader(train_set, collate, config, state.epoch, accelerator)
            if state.batches_into_epoch:
                loader = accelerator.skip_first_batches(loader, state.batches_into_epoch)
            for batch in loader:
                model.train()
                with accelerator.accumulate(model):
                    out = model(**batch)
                    loss = out.loss if o.loss_weighting == "token" else sample_mean_loss(out.logits, batch["labels"])
                    if not torch.isfinite(loss):
                        raise TrainingStopped(
                            f"the training loss became {loss.item()} at step {state.step + 1}; stopped. The last good "
                            f"checkpoint is {run_dir / 'latest'} (step {_latest_step(run_dir)}); lower the learning rates"
                        )
                    accelerator.backward(loss)
                    grad_norm = accelerator.clip_grad_norm_(trainable, o.grad_clip) if accelerator.sync_gradients else None
                    optimizer.step()
                    optimizer.zero_grad()
                state.batches_into_epoch += 1
                samples_since += batch["input_ids"].shape[0] * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                state.step += 1
                progress.update(1)
                if state.step % o.log_every == 0 or state.step == o.max_steps:
                    elapsed = time.perf_counter() - start
                    metrics = {
                        "train/loss": accelerator.gather(loss.detach()).mean().item(),
                        "train/lr_connector": scheduler.get_last_lr()[0],
                        "train/lr_lora": scheduler.get_last_lr()[-1],
                        "train/grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
                        "train/samples_per_s": samples_since / max(elapsed, 1e-9),
                    }
                    accelerator.log(metrics, step=state.step)
                    state.history.append({"step": state.step, **{k.split("/")[1]: v for k, v in metrics.items()}})
                    progress.set_postfix(loss=f"{metrics['train/loss']:.4f}")
                    if progress.disable and accelerator.is_main_process:
                        log.info("step %d/%d loss %.4f lr %.2e grad-norm %.3f %.1f samples/s", state.step, o.max_steps,
                                 metrics["train/loss"], metrics["train/lr_connector"], metrics["train/grad_norm"],
                                 metrics["train/samples_per_s"])
                    start, samples_since = time.perf_counter(), 0
                if state.step % o.eval_every == 0 or state.step == o.max_steps:
                    if _evaluate_and_keep_best(model, val_set, collate, config, state, captioner, accelerator, run_dir):
                        stop.requested = stop.requested or "early stopping"
                if stop_after is not None and state.step >= stop_after:
                    stop.requested = stop.requested or "stop_after"
                if state.step % o.save_every == 0 or state.step == o.max_steps or stop.requested:
                    _save_latest(run_dir, captioner, optimizer, scheduler, state, accelerator)
                    saved_step = state.step
                if state.step >= o.max_steps or stop.requested:
                    break
            else:
                state.epoch += 1
                state.batches_into_epoch = 0
        if stop.requested and saved_step != state.step:
            _save_latest(run_dir, captioner, optimizer, scheduler, state, accelerator)
    finally:
        progress.close()
        stop.restore()
        accelerator.end_training()
    best = state.best_val_loss if math.isfinite(state.best_val_loss) else None
    return {"step": state.step, "best_val_loss": best, "stopped_by": stop.requested or None, "run_dir": str(run_dir)}


# -- setup ----------------------------------------------------------------------------------------

# Recipe settings that make the model a checkpoint holds: a resumed run keeps them (its checkpoint carries
# them), so a recipe that changes one is refused rather than silently ignored.
MODEL_SETTINGS = ("captioner.", "optim.init")
SHAPE_SETTINGS = ("qwen_model", "clip_model", "clip_pretrained", "clip_tokens", "views", "connector_layers",
                  "connector_heads", "lora_r", "lora_alpha", "lora_targets", "init")


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
    changed = {k: (saved.get(k), current.get(k)) for k in sorted(set(saved) | set(current))
               if k != "run_dir" and saved.get(k) != current.get(k)}
    refused = {k: v for k, v in changed.items() if k.startswith(MODEL_SETTINGS)}
    if refused:
        shape = any(k.rsplit(".", 1)[-1] in SHAPE_SETTINGS for k in refused)
        what = "the model's shape" if shape else "settings its checkpoint was trained with"
        raise UserError(
            f"cannot resume {resume_dir}: the recipe changes {what} ({_differences(refused)}); resume with the "
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


def _differences(changed: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())


def _resume_dir(run_dir: Path, resume: str | None) -> Path | None:
    """The latest/ folder to resume from. A run killed between the two renames of a folder replace left
    it (or best/) set aside as `.latest.old-*`: it is put back first (clip_vlm_core.atomic)."""
    if resume is None:
        return None
    path = run_dir / "latest" if resume == "latest" else Path(resume)
    restore_interrupted(path)
    if _continues_run(run_dir, resume):
        restore_interrupted(run_dir / "best")
    if not (path / "trainer_state.json").is_file():
        raise UserError(f"cannot resume: {path} is not a latest/ checkpoint (no trainer_state.json)")
    return path


def _continues_run(run_dir: Path, resume: str | None) -> bool:
    """Resuming this run's own latest/ (or a checkpoint inside the run folder) writes on in the folder."""
    if resume is None:
        return False
    return resume == "latest" or Path(resume).resolve().is_relative_to(run_dir.resolve())


def _inputs(config: RunConfig, recipe: str | Path | None, resume: str | None) -> dict[str, Any]:
    """Everything a run reads, by role: a run folder that is or holds one of them is never emptied."""
    from clip_vlm_core.data.manifest import manifest_dataroot, manifest_dir

    d, c = config.data, config.captioner
    inputs: dict[str, Any] = {"training recipe": recipe, "resumed checkpoint": resume,
                              "initial checkpoint": config.optim.init if config.optim.init not in ("base", "tiny") else None,
                              "Qwen2.5-VL base model": c.qwen_model, "OpenCLIP model": c.clip_model}
    for role, manifest in (("training manifest", d.train_manifest), ("validation manifest", d.val_manifest)):
        if manifest and Path(manifest).exists():
            inputs[role] = manifest
            inputs[f"{role} folder"] = manifest_dir(manifest)
            try:
                inputs[f"{role}'s dataroot"] = manifest_dataroot(manifest, d.dataroot or None)
            except UserError:
                pass  # told in its own words when the data is loaded
    return inputs


def _write_run_record(run_dir: Path, config: RunConfig) -> None:
    import peft
    import transformers

    from clip_vlm_core import __version__

    write_marker(run_dir, WRITER)  # the first write: a read-only or full run folder stops here, in one sentence
    write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    info = {"git_commit": commit, "seed": config.optim.seed, "clip_vlm": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}
    write_text(run_dir / "run_info.json", dumps(info, indent=2) + "\n")


def _build_captioner(config: RunConfig, run_dir: Path, resume_dir: Path | None, accelerator):
    import dataclasses

    from clip_vlm_core.model import SceneCaptioner
    from clip_vlm_core.model.tiny import save_tiny_base_models

    device = accelerator.device
    if resume_dir is not None:
        # latest/checkpoint names the run's base models as ../../base: the run folder is their root.
        return SceneCaptioner.from_pretrained(resume_dir / "checkpoint", device=device, dtype=torch.float32,
                                              trainable=True, base_models_root=resume_dir.parent)
    init, captioner_config = config.optim.init, config.captioner
    if init == "tiny":
        base = run_dir / "base"
        if accelerator.is_main_process and not (base / "qwen" / "config.json").exists():
            save_tiny_base_models(base, seed=config.optim.seed)
        accelerator.wait_for_everyone()
        captioner_config = dataclasses.replace(captioner_config, qwen_model=str(base / "qwen"),
                                               clip_model=str(base / "clip"), clip_pretrained="")
    elif init != "base":
        if not (Path(init) / "clip_vlm_config.json").is_file():
            raise UserError(f"optim.init must be 'base', 'tiny' or a clip-vlm checkpoint folder, got {init!r}")
        return SceneCaptioner.from_pretrained(init, device=device, trainable=True)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(config.optim.seed)
    return SceneCaptioner.build(captioner_config, device=device, dtype=dtype, trainable=True)


def _datasets(config: RunConfig, run_dir: Path, captioner, accelerator):
    from functools import partial

    from clip_vlm_core.data.dataset import CachedEncoderDataset, CaptionDataset, RawCollator, collate_cached
    from clip_vlm_core.data.manifest import load_manifest, manifest_dataroot

    train_path, val_path = _manifests(config, run_dir, accelerator)
    datasets = []
    for path in (train_path, val_path):
        if path is None:
            datasets.append(None)
            continue
        dataroot = manifest_dataroot(path, config.data.dataroot or None)  # data.dataroot: the data moved
        datasets.append(CaptionDataset(load_manifest(path), dataroot, captioner.views,
                                       questions=config.data.qa_per_caption > 0))
    if not len(datasets[0]):
        raise UserError(f"the training manifest {train_path} has no samples")
    if not config.data.cache_encoders:
        return datasets[0], datasets[1], RawCollator(captioner)
    cache = run_dir / "encoder_cache"
    cached = []
    for ds in datasets:  # the main process fills the cache; the others then read it
        if ds is not None and accelerator.is_main_process:
            CachedEncoderDataset(ds, captioner, cache)
        accelerator.wait_for_everyone()
        cached.append(CachedEncoderDataset(ds, captioner, cache, show_progress=False) if ds is not None else None)
    return cached[0], cached[1], partial(collate_cached, pad_token_id=captioner.processor.tokenizer.pad_token_id)


def _manifests(config: RunConfig, run_dir: Path, accelerator) -> tuple[str, str | None]:
    d = config.data
    if not d.synthetic_scenes:
        return d.train_manifest, d.val_manifest or None
    from clip_vlm_core.data.manifest import build_manifest
    from clip_vlm_core.data.synthetic import QA_FILE, generate_synthetic_nuscenes

    data = run_dir / "data"
    manifests = data / "manifest"
    if accelerator.is_main_process and not (manifests / "manifest.json").exists():
        tree = data / "nuscenes"
        if not (tree / "v1.0-mini").exists():
            generate_synthetic_nuscenes(tree, scenes=d.synthetic_scenes,
                                        samples_per_scene=d.synthetic_samples_per_scene, seed=d.synthetic_seed)
        build_manifest(dataroot=tree, version="v1.0-mini", captions=tree / "nuinteract",
                       cameras=list(config.captioner.views), out=manifests,
                       qa=[tree / QA_FILE] if d.qa_per_caption > 0 else [])
    accelerator.wait_for_everyone()
    return str(manifests / "mini_train.jsonl"), str(manifests / "mini_val.jsonl")


def decays(name: str, param: torch.Tensor) -> bool:
    """Weight decay shrinks weight matrices only. Norm scales and biases (1-D) set offsets and scales
    that decay would drag towards 0; embeddings (the per-view embedding, any LoRA embedding) are learnt
    positions, not weights; and the gate would be pulled back towards 'off'."""
    return param.ndim >= 2 and "embed" not in name and name.rsplit(".", 1)[-1] != "gate"


def parameter_groups(model, o) -> list[dict[str, Any]]:
    """Connector and LoRA learn at their own rates; within each, only `decays` parameters are decayed."""
    groups = []
    parts = (("connector", model.connector.named_parameters(), o.lr_connector),
             ("lora", ((n, p) for n, p in model.qwen.named_parameters() if p.requires_grad), o.lr_lora))
    for part, named, lr in parts:
        named = list(named)
        for decayed in (True, False):
            params = [p for n, p in named if decays(n, p) == decayed]
            if params:
                groups.append({"name": f"{part}{'' if decayed else ' (no decay)'}", "params": params, "lr": lr,
                               "weight_decay": o.weight_decay if decayed else 0.0})
    return groups


def apply_recipe_rates(optimizer, scheduler, groups: list[dict[str, Any]]) -> None:
    """A loaded optimizer and scheduler bring back the saved learning rates and weight decay: the
    recipe's (unchanged, or changed on resume) take their place, at the schedule's current step."""
    for group, fresh in zip(optimizer.param_groups, groups, strict=True):
        group["initial_lr"], group["weight_decay"] = fresh["lr"], fresh["weight_decay"]
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _plan_memory(config: RunConfig, captioner, train_set, accelerator) -> bool:
    """Say the pixel budget, the tokens per view and sample it gives, and the activation estimate; return
    whether gradient checkpointing is on (the recipe's choice, or auto: on a GPU)."""
    from clip_vlm_core.train_memory import (
        activation_bytes,
        checkpointing_line,
        pixel_budget_line,
        sample_shape,
    )

    o = config.optim
    item = train_set[0]
    if "input_ids" not in item:  # raw items: the processor makes the tokens, as the collator will
        item = captioner.prepare([item["images"]], targets=[item["target"]], instructions=[item["instruction"]])
    qwen = captioner.model.base_qwen
    vision, text = qwen.config.vision_config, qwen.config.text_config
    shape = sample_shape(int(item["input_ids"].shape[-1]), item["image_grid_thw"], captioner.views,
                         vision.patch_size, vision.spatial_merge_size)
    element = next(qwen.parameters()).element_size()
    estimate = activation_bytes(shape.tokens, o.batch_size, text.num_hidden_layers, text.hidden_size, element)
    on = o.gradient_checkpointing
    if on is None:
        on, why = accelerator.device.type == "cuda", "auto: on a GPU" if accelerator.device.type == "cuda" else "auto: no GPU"
    else:
        why = "optim.gradient_checkpointing"
    if accelerator.is_main_process:
        size = captioner.processor.image_processor.size
        log.info(pixel_budget_line(size.get("shortest_edge"), size.get("longest_edge"), shape))
        log.info(checkpointing_line(estimate, o.batch_size, shape.tokens, on, why))
    return on


def _epoch_loader(dataset, collate, config: RunConfig, epoch: int, accelerator):
    """A fresh shuffle per epoch from (seed, epoch), so a resumed run sees the same order."""
    from torch.utils.data import DataLoader

    from clip_vlm_core.data.mixing import CaptionQAMix

    # The loader's own generator also seeds its workers, so making an iterator never draws from the
    # global RNG that dropout uses: a resumed run then sees the same dropout masks.
    generator = torch.Generator().manual_seed(config.optim.seed * 1_000_003 + epoch)
    sampler = CaptionQAMix(dataset.caption_indices, dataset.qa_indices, config.data.qa_per_caption, generator,
                           qa_item_weights(dataset.qa_types, config.data.qa_type_weights))
    loader = DataLoader(dataset, batch_size=config.optim.batch_size, sampler=sampler,
                        collate_fn=collate, num_workers=config.data.num_workers, drop_last=False, generator=generator)
    return accelerator.prepare_data_loader(loader, device_placement=True)


def qa_item_weights(types: list[str], type_weights: dict[str, float]) -> list[float] | None:
    """One draw weight per question item from the recipe's `data.qa_type_weights` (None when it is empty or
    there are no questions). A type it names that no training question has is logged as a warning, with the
    types there are: a misspelt type must not weigh nothing unseen, and one recipe serves several data sets."""
    if not type_weights or not types:
        return None
    present = set(types)
    missing = sorted(set(type_weights) - present)
    if missing:
        log.warning("data.qa_type_weights names question type(s) %s that no training question has; the training "
                    "questions' types are %s", missing, sorted(present))
    weights = [float(type_weights.get(kind, 1.0)) for kind in types]
    if not any(weights):
        raise UserError("data.qa_type_weights gives every training question weight 0; use data.qa_per_caption=0 "
                        "to train on captions only")
    return weights


def sample_mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's mean loss over its target tokens, averaged over rows with targets: a short answer weighs
    as much as a long caption. `logits` are the model's trailing positions (it computes them only from
    just before the first labelled column on), so they line up with the end of `labels`."""
    first = labels.shape[1] - logits.shape[1] + 1
    target = labels[:, first:]
    token_loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), target,
                                                   ignore_index=-100, reduction="none")
    mask = target != -100
    rows = mask.any(dim=1)
    return ((token_loss * mask).sum(dim=1)[rows] / mask.sum(dim=1)[rows]).mean()


# -- evaluation and checkpoints -------------------------------------------------------------------

def validation_mix(dataset, qa_per_caption: float):
    """The validation items: every caption and `qa_per_caption` answers per caption, as an epoch of
    training draws them, fixed once (seed 0) so that every evaluation scores the same items. Scoring every
    answer instead made validation cost more than training when a keyframe has forty questions."""
    from torch.utils.data import Subset

    from clip_vlm_core.data.mixing import CaptionQAMix

    if dataset is None or not getattr(dataset, "qa_indices", None):
        return dataset
    mix = CaptionQAMix(dataset.caption_indices, dataset.qa_indices, qa_per_caption, torch.Generator().manual_seed(0))
    return Subset(dataset, sorted(mix))


@torch.no_grad()
def validation_loss(model, dataset, collate, config: RunConfig, accelerator) -> float:
    from torch.utils.data import DataLoader

    loader = accelerator.prepare_data_loader(
        DataLoader(dataset, batch_size=config.optim.batch_size, collate_fn=collate, shuffle=False,
                   generator=torch.Generator().manual_seed(0))  # leaves the global RNG (dropout) alone
    )
    model.eval()
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    for batch in loader:
        tokens = (batch["labels"][:, 1:] != -100).sum()
        total += model(**batch).loss.float() * tokens
        count += tokens
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    return (total / count.clamp(min=1)).item()


def _evaluate_and_keep_best(model, val_set, collate, config, state, captioner, accelerator, run_dir) -> bool:
    """Validate, keep best/, and say whether patience ran out."""
    if val_set is None or not len(val_set):
        return False
    val = validation_loss(model, val_set, collate, config, accelerator)
    accelerator.log({"val/loss": val}, step=state.step)
    if accelerator.is_main_process:
        log.info("step %d validation loss %.4f (best %.4f)", state.step, val, min(val, state.best_val_loss))
    state.history.append({"step": state.step, "val_loss": val})
    if val < state.best_val_loss:
        state.best_val_loss, state.evals_without_improvement = val, 0
        if accelerator.is_main_process:
            captioner.save_pretrained(run_dir / "best", base_models_relative_to=run_dir / "best")
    else:
        state.evals_without_improvement += 1
    accelerator.wait_for_everyone()
    return bool(config.optim.patience) and state.evals_without_improvement >= config.optim.patience


def _save_latest(run_dir, captioner, optimizer, scheduler, state, accelerator) -> None:
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


def _load_latest(resume_dir: Path, optimizer, scheduler) -> TrainerState:
    """Optimizer, scheduler, RNG and trainer state of latest/, each checked before it is read or applied:
    the optimizer file's storages against the parameters they belong to (8-bit state allowed), the
    scheduler's and trainer's state as bounded JSON of the expected fields."""
    from clip_vlm_core.model.checkpoint_limits import (
        check_optimizer_file,
        check_optimizer_state,
        load_rng_state,
    )

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


def _latest_step(run_dir: Path) -> int | str:
    try:
        return read_json_object(run_dir / "latest" / "trainer_state.json", "trainer state", MAX_SMALL_JSON_BYTES)["step"]
    except (UserError, KeyError):
        return "none saved yet"


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, tuple | list) else value


def _tupled(value):
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


class _StopRequest:
    """SIGTERM and Ctrl-C ask the loop to stop at the next step boundary and save latest/."""

    def __init__(self) -> None:
        self.requested: str | bool = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        log.warning("%s received: saving latest/ and stopping after this step", self.requested)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _progress(total: int, done: int, accelerator, show: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="training", unit="step",
                disable=not (show and accelerator.is_local_main_process))
