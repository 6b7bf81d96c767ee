"""What a training run is made of, before its first step: the run folder's record, the captioner (fresh,
tiny, from a checkpoint or resumed), the datasets (raw or through the frozen-encoder cache), the optimizer's
parameter groups and each epoch's loader. clip_vlm_core.train runs the loop over them.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import torch
import yaml

from clip_vlm_core.atomic import set_aside, write_text
from clip_vlm_core.errors import UserError
from clip_vlm_core.jsonout import dumps
from clip_vlm_core.output_guard import remove_output, write_marker
from clip_vlm_core.train_config import RunConfig

log = logging.getLogger(__name__)

WRITER = "clip-vlm train"
NO_DECAY = " (no decay)"  # the suffix of a part's group of parameters that are not decayed


def run_inputs(config: RunConfig, recipe: str | Path | None, resume: str | None) -> dict[str, Any]:
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


class FreshStart:
    """A fresh run's folder until its first step: a start that fails before then (a recipe or data error
    found while loading, Ctrl-C while caching) leaves the folder as it found it, so that the same command
    can be retried without --overwrite. `begin` (main process, once the guard has allowed the folder) notes
    what was there and, for --overwrite, sets the previous run aside instead of deleting it; `undo` removes
    what this start wrote and puts that back; `done` (after the first step) deletes the previous run."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.armed = False
        self.existed = False  # an empty folder the user made: left as an empty folder
        self.aside: Path | None = None  # the run --overwrite replaces, until the first step

    def begin(self, overwrite: bool) -> None:
        self.existed = self.run_dir.is_dir()
        if overwrite and self.existed and any(self.run_dir.iterdir()):
            try:
                self.aside = set_aside(self.run_dir)
            except OSError as exc:
                raise UserError(f"cannot replace run_dir {self.run_dir}: {exc.strerror or exc}") from None
            self.existed = False
        self.armed = True

    def done(self) -> None:
        if self.armed and self.aside is not None:
            remove_output(self.aside)
        self.armed = False

    def undo(self) -> None:
        if not self.armed:
            return
        self.armed = False
        try:
            if self.existed:
                for entry in list(self.run_dir.iterdir()):
                    remove_output(entry)
            else:
                remove_output(self.run_dir)
            if self.aside is not None:
                self.aside.rename(self.run_dir)
        except (OSError, UserError) as exc:  # the start's own error is the one to read
            log.warning("could not remove what the failed start wrote in %s: %s", self.run_dir, exc)
            return
        log.info("the start failed before the first step: %s is as it was before", self.run_dir)


def write_run_record(run_dir: Path, config: RunConfig) -> None:
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


def build_captioner(config: RunConfig, run_dir: Path, resume_dir: Path | None, accelerator):
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
    captioner = SceneCaptioner.build(captioner_config, device=device, dtype=dtype, trainable=True)
    if config.optim.init_weights:
        taken = load_fitting_weights(captioner, config.optim.init_weights)
        if accelerator.is_main_process:
            log.info("optim.init_weights %s: %s", config.optim.init_weights, taken)
    return captioner


def load_fitting_weights(captioner, checkpoint: str) -> str:
    """Copy a checkpoint's trained weights into `captioner` where they fit (see OptimConfig.init_weights): its
    LoRA tensors, its connector's tensors of the same shape, and the view embedding's rows of the views both
    have. One sentence when nothing of it fits (another architecture or LoRA setting)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    from clip_vlm_core.config import CaptionerConfig, load_json
    from clip_vlm_core.model.checkpoint import ADAPTER_DIR, CONFIG_FILE, CONNECTOR_FILE
    from clip_vlm_core.model.model_refs import local_checkpoint

    folder = local_checkpoint(checkpoint, "optim.init_weights")
    theirs = load_json(CaptionerConfig, folder / CONFIG_FILE)  # the checkpoint config reader, bounds checked
    their_views = [*theirs.views, *theirs.context_views]
    config = captioner.config
    our_views = [*config.views, *config.context_views]
    connector = captioner.model.connector
    own = connector.state_dict()
    copied = 0
    with torch.no_grad():
        for name, tensor in load_file(folder / CONNECTOR_FILE).items():
            if name == "view_embedding":
                for row, view in enumerate(their_views):
                    if view in our_views and row < tensor.shape[0]:
                        own[name][our_views.index(view)].copy_(tensor[row])
                copied += 1
            elif name in own and own[name].shape == tensor.shape:
                own[name].copy_(tensor)
                copied += 1
    adapter = folder / ADAPTER_DIR / "adapter_model.safetensors"
    lora = 0
    if adapter.is_file():
        shapes = {name: tensor.shape for name, tensor in get_peft_model_state_dict(captioner.model.qwen).items()}
        fitting = {name: tensor for name, tensor in load_file(adapter).items() if shapes.get(name) == tensor.shape}
        if fitting:
            set_peft_model_state_dict(captioner.model.qwen, fitting)
        lora = len(fitting)
    if copied == 0 and lora == 0:
        raise UserError(f"optim.init_weights {checkpoint}: none of its weights fit this recipe's model")
    return (f"{copied} of {len(own)} connector tensors and {lora} LoRA tensors taken (views "
            f"{', '.join(v for v in our_views if v in their_views)})")


def datasets(config: RunConfig, run_dir: Path, captioner, accelerator):
    from functools import partial

    from clip_vlm_core.data.dataset import CachedEncoderDataset, CaptionDataset, RawCollator, collate_cached
    from clip_vlm_core.data.history import check_manifest_history
    from clip_vlm_core.data.manifest import load_manifest, manifest_dataroot, read_manifest_meta

    train_path, val_path = _manifests(config, run_dir, accelerator)
    datasets = []
    for path in (train_path, val_path):
        if path is None:
            datasets.append(None)
            continue
        dataroot = manifest_dataroot(path, config.data.dataroot or None)  # data.dataroot: the data moved
        if captioner.config.history_frames:  # past frames the model can use: enough, at its stride
            check_manifest_history(read_manifest_meta(path), path, captioner.config.history_frames,
                                   captioner.config.history_stride_s)
        datasets.append(CaptionDataset(load_manifest(path), dataroot, captioner.views,
                                       questions=config.data.qa_per_caption > 0,
                                       context_views=captioner.config.context_views,
                                       history_frames=captioner.config.history_frames))
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
    c = config.captioner
    # A model with context views or a history learns the six-camera drive (motion needs one), its manifest
    # holding every view it reads and their past frames at its stride.
    surround = bool(c.context_views or c.history_frames)
    if accelerator.is_main_process and not (manifests / "manifest.json").exists():
        tree = data / "nuscenes"
        if not (tree / "v1.0-mini").exists():
            generate_synthetic_nuscenes(tree, scenes=d.synthetic_scenes, samples_per_scene=d.synthetic_samples_per_scene,
                                        seed=d.synthetic_seed, sweeps=None, cameras="all" if surround else "front-back")
        build_manifest(dataroot=tree, version="v1.0-mini", captions=tree / "nuinteract",
                       cameras=[*c.views, *c.context_views], out=manifests,
                       qa=[tree / QA_FILE] if d.qa_per_caption > 0 else [], history=c.history_frames,
                       history_stride_s=c.history_stride_s)
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
                groups.append({"name": part if decayed else part + NO_DECAY, "params": params, "lr": lr,
                               "weight_decay": o.weight_decay if decayed else 0.0})
    return groups


def make_optimizer(groups: list[dict[str, Any]], o) -> torch.optim.Optimizer:
    """AdamW over the parameter groups: torch's (fp32 moments, 8 bytes per trainable parameter), or with
    `optim.optimizer: adamw8bit` bitsandbytes' AdamW8bit (block-wise 8-bit moments, 2 bytes; tensors under
    4,096 elements keep fp32 moments, as bitsandbytes does)."""
    if o.optimizer == "adamw8bit":
        from clip_vlm_core.model.quantize import import_bitsandbytes

        return import_bitsandbytes().optim.AdamW8bit(groups, betas=(0.9, 0.999))
    return torch.optim.AdamW(groups, betas=(0.9, 0.999))


def release_frozen_encoders(model) -> int:
    """Once the encoder cache holds every sample, training steps read the frozen encoders' outputs from it:
    Qwen's vision tower and OpenCLIP are dropped from memory (their parameters become meta tensors, which
    hold no storage; buffers, a few kB, stay for data-parallel's buffer sync). Returns the bytes freed.
    Sample captions for TensorBoard come from the cache too (train_samples); a later caption of raw images
    on this model would fail loudly on the meta tensors, never run silently."""
    freed = 0
    for encoder in (model.base_qwen.model.visual, model.clip):
        for module in encoder.modules():
            for name, param in list(module._parameters.items()):
                if param is None or param.device.type == "meta":
                    continue
                freed += param.numel() * param.element_size()
                module._parameters[name] = torch.nn.Parameter(torch.empty_like(param, device="meta"),
                                                              requires_grad=False)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return freed


def apply_recipe_rates(optimizer, scheduler, groups: list[dict[str, Any]]) -> None:
    """A loaded optimizer and scheduler bring back the saved learning rates and weight decay: the
    recipe's (unchanged, or changed on resume) take their place, at the schedule's current step. Groups
    are matched by name (parameter_groups'), never by position."""
    fresh = {group["name"]: group for group in groups}
    saved = [group.get("name") for group in optimizer.param_groups]
    if sorted(map(str, saved)) != sorted(fresh):
        raise UserError(f"the optimizer state holds parameter groups {saved}, this version makes {list(fresh)}; "
                        f"start a new run from its checkpoint (optim.init=.../checkpoint)")
    for group in optimizer.param_groups:
        group["initial_lr"], group["weight_decay"] = fresh[group["name"]]["lr"], fresh[group["name"]]["weight_decay"]
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def learning_rates(optimizer) -> dict[str, float]:
    """The current learning rate of each part ("connector", "lora"), found by group name."""
    return {group["name"].removesuffix(NO_DECAY): group["lr"] for group in optimizer.param_groups}


def epoch_loader(dataset, collate, config: RunConfig, epoch: int, accelerator):
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
