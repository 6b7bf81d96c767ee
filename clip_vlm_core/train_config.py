"""Training run configuration: YAML recipe -> dataclasses, with `section.key=value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clip_vlm_core.config import CaptionerConfig, from_dict
from clip_vlm_core.errors import UserError


@dataclass
class DataConfig:
    train_manifest: str = ""  # JSONL split file from `clip-vlm data build`
    val_manifest: str = ""
    # Where the manifests' images are now, when the data moved since `data build` ("" = the dataroot
    # recorded in manifest.json).
    dataroot: str = ""
    # When > 0, a synthetic nuScenes of this many scenes is generated into <run_dir>/data and its
    # mini_train / mini_val manifests are used (the self-contained tiny recipe).
    synthetic_scenes: int = 0
    synthetic_samples_per_scene: int = 40
    synthetic_seed: int = 0
    cache_encoders: bool = True  # compute the frozen encoders once per sample
    num_workers: int = 0


@dataclass
class OptimConfig:
    # "base": start from captioner.qwen_model / clip_model with a fresh connector and LoRA;
    # "tiny": tiny random base models built from `seed` (tests, demo); or a clip-vlm checkpoint folder.
    init: str = "base"
    seed: int = 0
    batch_size: int = 8
    grad_accum_steps: int = 1
    max_steps: int = 1000
    lr_connector: float = 1e-3
    lr_lora: float = 2e-4
    weight_decay: float = 0.01  # never applied to the gate
    warmup_steps: int = 50
    grad_clip: float = 1.0
    eval_every: int = 100  # steps between validation (and best/ checkpoints)
    save_every: int = 100  # steps between latest/ checkpoints
    patience: int = 0  # stop after this many evaluations without improvement; 0 = never
    log_every: int = 10
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"  # auto = bf16 on GPU, none on CPU; or "no", "bf16", "fp16"


@dataclass
class RunConfig:
    run_dir: str = "runs/default"
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["captioner"]["views"] = list(self.captioner.views)
        return data


SECTIONS = {"captioner": CaptionerConfig, "data": DataConfig, "optim": OptimConfig}


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML recipe, apply `section.key=value` overrides (values parsed as YAML), validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"training config {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"training config {path} is not valid YAML ({exc})") from None
        if not isinstance(raw, dict):
            raise UserError(f"training config {path} must be a mapping of sections")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} must look like section.key=value, e.g. optim.max_steps=100")
        parts = key.split(".")
        if len(parts) == 1 and parts[0] == "run_dir":
            raw["run_dir"] = value
            continue
        if len(parts) != 2 or parts[0] not in SECTIONS:
            raise UserError(f"override {key!r} must be run_dir or one of {sorted(SECTIONS)} followed by .key")
        raw.setdefault(parts[0], {})[parts[1]] = yaml.safe_load(value)
    unknown = sorted(set(raw) - {"run_dir", *SECTIONS})
    if unknown:
        raise UserError(f"training config has unknown section(s) {unknown}; known: run_dir, {sorted(SECTIONS)}")
    sections = {name: from_dict(cls, raw.get(name) or {}, where=f"section {name!r}") for name, cls in SECTIONS.items()}
    config = RunConfig(run_dir=str(raw.get("run_dir", RunConfig.run_dir)), **sections)
    _validate(config)
    return config


def _validate(config: RunConfig) -> None:
    o, d = config.optim, config.data
    for name in ("batch_size", "grad_accum_steps", "max_steps", "eval_every", "save_every", "log_every"):
        if getattr(o, name) < 1:
            raise UserError(f"optim.{name} must be at least 1, got {getattr(o, name)}")
    if o.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise UserError(f"optim.mixed_precision must be auto, no, bf16 or fp16, got {o.mixed_precision!r}")
    if not d.synthetic_scenes and not d.train_manifest:
        raise UserError("give data.train_manifest (from `clip-vlm data build`) or data.synthetic_scenes > 0")
