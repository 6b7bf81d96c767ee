"""Fine-tune the captioner: connector + LoRA over frozen Qwen2.5-VL and OpenCLIP.

Loop mechanics come from accelerate (devices, DDP under `accelerate launch`/`torchrun`, mixed
precision, gradient accumulation); the schedule from transformers. What is ours: the parameter groups
(weight decay on weight matrices only), a resumable checkpoint without pickles that refuses a recipe
changing the model it holds, the memory plan said at the start, and stopping cleanly.

Run folder:
    config.yaml         the resolved recipe          run_info.json   git commit, seed, versions
    base/               tiny base models (init: tiny)  data/          synthetic data (if asked)
    latest/             everything needed to resume  best/          inference checkpoint (lowest val loss)
    tensorboard/        loss, learning rate, grad norm, samples/s; validation loss both ways, sample captions,
                        question accuracy, and the recipe as hparams (train_samples.py)

A fresh run refuses an existing non-empty run folder unless `overwrite` (then it is emptied first),
and never empties one that is or holds an input (recipe, manifests, dataroot, init checkpoint, base
models); `--resume latest` continues in it. Checkpoints are written through staging folders, so a full
disk or a read-only folder ends the run in one sentence with the earlier checkpoints intact.

Where the rest is: what a run is made of (captioner, data, parameter groups) in train_setup.py, validation
(the loss both ways) in train_validation.py, latest/ (save, resume, the recipe check) in train_state.py, the
loss in model/loss.py, the memory plan in train_memory.py.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clip_vlm_core.atomic import staging_area
from clip_vlm_core.errors import UserError
from clip_vlm_core.model.loss import sample_mean_loss
from clip_vlm_core.model.vision_attention import enable_varlen_vision_attention
from clip_vlm_core.output_guard import guard_output
from clip_vlm_core.train_config import RunConfig
from clip_vlm_core.train_samples import hparams, log_samples
from clip_vlm_core.train_setup import (
    WRITER,
    FreshStart,
    apply_recipe_rates,
    build_captioner,
    datasets,
    epoch_loader,
    learning_rates,
    make_optimizer,
    parameter_groups,
    release_frozen_encoders,
    run_inputs,
    validation_mix,
    write_run_record,
)
from clip_vlm_core.train_state import (
    TrainerState,
    check_resume_recipe,
    continues_run,
    differences,
    latest_step,
    load_latest,
    resume_dir,
    save_latest,
)
from clip_vlm_core.train_threads import set_torch_threads
from clip_vlm_core.train_validation import WEIGHTINGS, validation_losses

log = logging.getLogger(__name__)


class TrainingStopped(UserError):
    """The run stopped early for a reason the user should read (non-finite loss)."""


@dataclass
class _Run:
    """What the loop works on, made once by `_set_up`."""

    config: RunConfig
    run_dir: Path
    accelerator: Any
    captioner: Any
    model: Any  # the captioner's model, as accelerate prepared it
    optimizer: Any
    scheduler: Any
    train_set: Any
    val_set: Any
    collate: Any
    state: TrainerState
    trainable: list[torch.Tensor] = field(default_factory=list)


def run_training(
    config: RunConfig,
    resume: str | None = None,
    show_progress: bool = True,
    stop_after: int | None = None,
    overwrite: bool = False,
    recipe: str | Path | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train per `config`; `resume` is a latest/ folder or "latest" (this run's). `stop_after` ends the
    session at that step as an interruption would (latest/ saved, schedule unchanged). `overwrite`
    empties an existing run folder first; `recipe` (the YAML read) is protected as an input; `threads` sets
    torch's threads (default: chosen by clip_vlm_core.train_threads). Returns a
    summary (best_val_loss None before any validation)."""
    threads_before = torch.get_num_threads()  # put back after the run (a caller's process goes on)
    try:
        return _run(config, resume, show_progress, stop_after, overwrite, recipe, threads)
    finally:
        torch.set_num_threads(threads_before)


def _run(config: RunConfig, resume: str | None, show_progress: bool, stop_after: int | None, overwrite: bool,
         recipe: str | Path | None, threads: int | None) -> dict[str, Any]:
    run_dir = Path(config.run_dir)
    # A fresh start that fails before its first step takes back what it wrote (FreshStart).
    start = FreshStart(run_dir) if not continues_run(run_dir, resume) else None
    try:
        run = _set_up(config, resume, overwrite, recipe, start, threads)
    except BaseException:
        if start is not None:
            start.undo()
        raise
    o, state, accelerator = config.optim, run.state, run.accelerator
    stop = _StopRequest()
    progress = _progress(o.max_steps, state.step, accelerator, show_progress)
    meter, losses = _Throughput(), _LossWindow()
    saved_step = state.step
    try:
        while state.step < o.max_steps and not stop.requested:
            # One epoch: a fresh shuffle from (seed, epoch); a resumed run skips the batches it already took.
            loader = epoch_loader(run.train_set, run.collate, config, state.epoch, accelerator)
            if state.batches_into_epoch:
                loader = accelerator.skip_first_batches(loader, state.batches_into_epoch)
            for batch in loader:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("process %d/%d step %d trains on rows %s", accelerator.process_index + 1,
                              accelerator.num_processes, state.step + 1, " ".join(_row_digests(batch)))
                loss, grad_norm = _train_step(run, batch)
                losses.add(loss)
                state.batches_into_epoch += 1
                meter.samples += batch["input_ids"].shape[0] * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue  # accumulating: the optimizer step comes with the last micro-batch
                run.scheduler.step()
                state.step += 1
                if start is not None:
                    start.done()  # under way: the run folder is this run's now
                progress.update(1)
                # After the step: log, validate (keeping best/), save latest/, in that order.
                if state.step % o.log_every == 0 or state.step == o.max_steps:
                    _log_step(run, losses.mean(), grad_norm, meter, progress)
                if state.step % o.eval_every == 0 or state.step == o.max_steps:
                    if _evaluate_and_keep_best(run):
                        stop.requested = stop.requested or "early stopping"
                if stop_after is not None and state.step >= stop_after:
                    stop.requested = stop.requested or "stop_after"
                if state.step % o.save_every == 0 or state.step == o.max_steps or stop.requested:
                    save_latest(run.run_dir, run.captioner, run.optimizer, run.scheduler, state, accelerator)
                    saved_step = state.step
                if state.step >= o.max_steps or stop.requested:
                    break
            else:  # the epoch ran out before the steps did
                state.epoch += 1
                state.batches_into_epoch = 0
        if stop.requested and saved_step != state.step:
            save_latest(run.run_dir, run.captioner, run.optimizer, run.scheduler, state, accelerator)
    except BaseException:
        if start is not None:
            start.undo()  # nothing happens once the first step is done
        raise
    finally:
        progress.close()
        stop.restore()
        accelerator.end_training()
    best = state.best_val_loss if math.isfinite(state.best_val_loss) else None
    return {"step": state.step, "best_val_loss": best, "stopped_by": stop.requested or None, "run_dir": str(run.run_dir)}


# -- setup ----------------------------------------------------------------------------------------

def _set_up(config: RunConfig, resume: str | None, overwrite: bool, recipe: str | Path | None,
            start: FreshStart | None, threads: int | None = None) -> _Run:
    """Everything before the first step, in the order that keeps the user's files safe: refusals first,
    then the run folder, the model, the data, the optimizer, and what a resumed run brings back."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    run_dir = Path(config.run_dir)
    continuing = continues_run(run_dir, resume)
    if not continuing:  # every process checks before any of them changes a thing
        guard_output(run_dir, WRITER, run_inputs(config, recipe, resume), overwrite, flag="run_dir", reuse_own=False)
    o = config.optim
    mixed = o.mixed_precision if o.mixed_precision != "auto" else ("bf16" if torch.cuda.is_available() else "no")
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # makes torchrun on CPU use DDP over gloo instead of N lone runs
        gradient_accumulation_steps=o.grad_accum_steps,
        mixed_precision=mixed,
        log_with="tensorboard",
        project_dir=str(run_dir),
    )
    latest = resume_dir(run_dir, resume)
    # A recipe that changes the model is refused before anything is written or loaded.
    changed = check_resume_recipe(config, latest) if latest is not None else {}
    set_seed(o.seed)
    if accelerator.is_main_process:
        if start is not None:  # from here until the first step, a failure takes back what was written
            start.begin(overwrite)
        if latest is None:
            write_run_record(run_dir, config)
        else:  # a resumed run records itself once latest/ has been read whole; a folder it cannot write stops it now
            with staging_area(run_dir / "latest"):
                pass
    accelerator.wait_for_everyone()

    set_torch_threads(threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if accelerator.is_main_process:
        log.info("%d process(es) on %s (%s); global batch %d samples per step = %d per process x %d "
                 "accumulation step(s) x %d process(es)", accelerator.num_processes, accelerator.device.type,
                 accelerator.distributed_type.value, o.batch_size * o.grad_accum_steps * accelerator.num_processes,
                 o.batch_size, o.grad_accum_steps, accelerator.num_processes)
    captioner = build_captioner(config, run_dir, latest, accelerator)
    # Qwen's frozen vision tower attends over all its windows in one flash call on a GPU (here and when
    # the encoder cache is built); elsewhere this changes nothing.
    if enable_varlen_vision_attention(captioner.model.base_qwen) is None:
        log.info("vision tower: packed (varlen) flash attention")
    train_set, val_set, collate = datasets(config, run_dir, captioner, accelerator)
    val_set = validation_mix(val_set, config.data.qa_per_caption)
    model = captioner.model
    from clip_vlm_core.train_memory import plan_memory

    if plan_memory(config, captioner, train_set, accelerator):
        model.base_qwen.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.base_qwen.enable_input_require_grads()
    optimizer = make_optimizer(parameter_groups(model, o), o)
    scheduler = get_cosine_schedule_with_warmup(optimizer, o.warmup_steps, o.max_steps)
    state = TrainerState()
    if latest is not None:
        state = load_latest(latest, optimizer, scheduler)
        apply_recipe_rates(optimizer, scheduler, parameter_groups(model, o))
        if accelerator.is_main_process:
            write_run_record(run_dir, config)
            if changed:  # said once the resumed run is under way
                log.info("resuming with changed settings: %s", differences(changed))
        log.info("resuming from %s at step %d", latest, state.step)
    model, optimizer = accelerator.prepare(model, optimizer)
    if config.data.cache_encoders:  # every step reads the cache: the frozen encoders need not stay loaded
        freed = release_frozen_encoders(captioner.model)
        if accelerator.is_main_process:
            log.info("encoder cache complete: vision tower and OpenCLIP released (%.1f MiB)", freed / 2**20)
    accelerator.init_trackers("tensorboard", config=hparams(config))  # the recipe, as TensorBoard's hparams
    return _Run(config, run_dir, accelerator, captioner, model, optimizer, scheduler, train_set, val_set, collate,
                state, [p for p in model.parameters() if p.requires_grad])


def _row_digests(batch: dict[str, Any]) -> list[str]:
    """A short digest of each row's tokens (padding left out): which items a process trains on, for -v."""
    import hashlib

    rows = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
        rows.append(hashlib.sha1(ids[mask.bool()].cpu().numpy().tobytes()).hexdigest()[:8])
    return rows


# -- one step ---------------------------------------------------------------------------------------

def _train_step(run: _Run, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward, backward, clip, optimizer step (accelerate holds the step back while accumulating).
    Returns the loss and, on a step that updates the weights, the gradient norm before clipping."""
    o, accelerator = run.config.optim, run.accelerator
    run.model.train()
    with accelerator.accumulate(run.model):
        out = run.model(**batch)
        # "token": transformers' mean over target tokens; "sample": each item's mean, then the batch's.
        loss = out.loss if o.loss_weighting == "token" else sample_mean_loss(out.logits, batch["labels"])
        if not torch.isfinite(loss):
            raise TrainingStopped(
                f"the training loss became {loss.item()} at step {run.state.step + 1}; stopped. The last good "
                f"checkpoint is {run.run_dir / 'latest'} (step {latest_step(run.run_dir)}); lower the learning rates"
            )
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(run.trainable, o.grad_clip) if accelerator.sync_gradients else None
        run.optimizer.step()
        run.optimizer.zero_grad()
    return loss, grad_norm


# -- after a step ---------------------------------------------------------------------------------

@dataclass
class _Throughput:
    samples: int = 0
    since: float = field(default_factory=time.perf_counter)

    def per_second(self) -> float:
        rate = self.samples / max(time.perf_counter() - self.since, 1e-9)
        self.samples, self.since = 0, time.perf_counter()
        return rate


@dataclass
class _LossWindow:
    """The training loss of every micro-batch since the last log line: train/loss is their mean, not the
    last one's (which swings with what that batch held)."""

    total: torch.Tensor | None = None
    count: int = 0

    def add(self, loss: torch.Tensor) -> None:
        loss = loss.detach().double()
        self.total = loss if self.total is None else self.total + loss
        self.count += 1

    def mean(self) -> torch.Tensor:
        """The mean since the last call (the same count on every process, so a gather's mean is the mean)."""
        mean, self.total, self.count = self.total / max(self.count, 1), None, 0
        return mean


def _log_step(run: _Run, loss: torch.Tensor, grad_norm: torch.Tensor | None, meter: _Throughput, progress) -> None:
    """The step's figures to tensorboard, the history and the progress bar (or the log, without one); `loss` is
    this process's mean training loss since the last log."""
    accelerator, state = run.accelerator, run.state
    rates = learning_rates(run.optimizer)
    metrics = {
        "train/loss": accelerator.gather(loss.detach()).mean().item(),
        "train/lr_connector": rates["connector"],
        "train/lr_lora": rates.get("lora", 0.0),
        "train/grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
        "train/samples_per_s": meter.per_second(),
    }
    accelerator.log(metrics, step=state.step)
    state.history.append({"step": state.step, **{k.split("/")[1]: v for k, v in metrics.items()}})
    progress.set_postfix(loss=f"{metrics['train/loss']:.4f}")
    if progress.disable and accelerator.is_main_process:
        log.info("step %d/%d loss %.4f lr %.2e grad-norm %.3f %.1f samples/s", state.step, run.config.optim.max_steps,
                 metrics["train/loss"], metrics["train/lr_connector"], metrics["train/grad_norm"],
                 metrics["train/samples_per_s"])


def _evaluate_and_keep_best(run: _Run) -> bool:
    """Validate, keep best/ (by the training objective), and say whether patience ran out."""
    if run.val_set is None or not len(run.val_set):
        return False
    accelerator, state = run.accelerator, run.state
    objective = run.config.optim.loss_weighting
    losses = validation_losses(run.model, run.val_set, run.collate, run.config, accelerator)
    val = losses[objective]
    accelerator.log({"val/loss": val, **{f"val/loss_{w}": losses[w] for w in WEIGHTINGS}}, step=state.step)
    if accelerator.is_main_process:
        other = next(w for w in WEIGHTINGS if w != objective)
        log.info("step %d validation loss %.4f (per %s, the training objective; best %.4f); per %s %.4f",
                 state.step, val, objective, min(val, state.best_val_loss), other, losses[other])
    state.history.append({"step": state.step, "val_loss": val, **{f"val_loss_{w}": losses[w] for w in WEIGHTINGS}})
    log_samples(run, state.step)  # captions and question accuracy, to TensorBoard
    if val < state.best_val_loss:
        state.best_val_loss, state.evals_without_improvement = val, 0
        if accelerator.is_main_process:
            run.captioner.save_pretrained(run.run_dir / "best", base_models_relative_to=run.run_dir / "best")
    else:
        state.evals_without_improvement += 1
    accelerator.wait_for_everyone()
    return bool(run.config.optim.patience) and state.evals_without_improvement >= run.config.optim.patience


# -- stopping -------------------------------------------------------------------------------------

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
