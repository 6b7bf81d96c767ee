"""Training run configuration: YAML recipe -> dataclasses, with `section.key=value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clip_vlm_core.config import CaptionerConfig, from_dict
from clip_vlm_core.errors import UserError
from clip_vlm_core.limits import (
    MAX_BATCH_SIZE,
    MAX_RECIPE_BYTES,
    MAX_RECIPE_VALUES,
    Bound,
    bounded,
    check_fields,
    check_number,
    one_of,
    size_text,
)

_SEED = "a seed numpy accepts"
_TYPE_WEIGHT = Bound(0.0, 1000.0, why="times as often as its share of the questions")
_STEPS = "a count of optimizer steps"


@dataclass
class DataConfig:
    train_manifest: str = ""  # JSONL split file from `clip-vlm data build`
    val_manifest: str = ""
    # Where the manifests' images are now, when the data moved since `data build` ("" = the dataroot
    # recorded in manifest.json).
    dataroot: str = ""
    # When > 0, a synthetic nuScenes of this many scenes is generated into <run_dir>/data and its
    # mini_train / mini_val manifests are used (the self-contained tiny recipe).
    synthetic_scenes: int = bounded(0, 0, 10, why="the devkit's ten mini scene names, data.synthetic.SCENE_NAMES")
    synthetic_samples_per_scene: int = bounded(40, 1, 400, why="a 20 s nuScenes scene has ~40 keyframes")
    synthetic_seed: int = bounded(0, 0, 2**32 - 1, why=_SEED)
    # Question-answer items (manifest rows' `qa` pairs) drawn per caption in each epoch: 1.0 trains on as
    # many answers as captions, 0 on captions only. Synthetic data gets its qa.jsonl when this is > 0.
    qa_per_caption: float = bounded(1.0, 0.0, 1000.0, why="answers drawn per caption in an epoch")
    # How often each question type is drawn relative to its share of the questions, {type: weight}: 3 draws
    # a type three times as often, 0 never; types not named weigh 1 (data.mixing.CaptionQAMix). A type named
    # that no training question has is named in a warning.
    qa_type_weights: dict[str, float] = field(default_factory=dict)
    cache_encoders: bool = True  # compute the frozen encoders once per sample
    num_workers: int = bounded(0, 0, 64, why="data-loading processes, each a copy of the dataset")


@dataclass
class OptimConfig:
    # "base": start from captioner.qwen_model / clip_model with a fresh connector and LoRA;
    # "tiny": tiny random base models built from `seed` (tests, demo); or a clip-vlm checkpoint folder.
    init: str = "base"
    # A clip-vlm checkpoint whose trained weights start this run where they fit ("" = none): its LoRA adapters,
    # and its connector's tensors of the same shape, with the view embedding's rows of the views both models
    # have (and the recipe's model otherwise as `init` builds it). So a model that sees more (context views, a
    # history) starts from one that learnt its full views; both on the same base models.
    init_weights: str = ""
    seed: int = bounded(0, 0, 2**32 - 1, why=_SEED)
    batch_size: int = bounded(8, 1, MAX_BATCH_SIZE, why="samples per step on each device")
    # An effective batch of 256 x 1,024 samples is ten times nuScenes' 28,130 training keyframes.
    grad_accum_steps: int = bounded(1, 1, 1024, why="micro-batches per optimizer step")
    max_steps: int = bounded(1000, 1, why=_STEPS)
    lr_connector: float = bounded(1e-3, 0.0, 1.0, low_open=True, why="AdamW learning rates are small and positive")
    lr_lora: float = bounded(2e-4, 0.0, 1.0, low_open=True, why="AdamW learning rates are small and positive")
    # AdamW's decoupled decay per step is lr x weight_decay; never applied to norms, biases, embeddings, gate
    weight_decay: float = bounded(0.01, 0.0, 1.0, why="a fraction of each weight")
    warmup_steps: int = bounded(50, 0, why=_STEPS)
    # the gradient norm is clipped to this; 0 would zero every update
    grad_clip: float = bounded(1.0, 0.0, 1e6, low_open=True, why="a gradient norm")
    eval_every: int = bounded(100, 1, why=_STEPS)  # steps between validation (and best/ checkpoints)
    save_every: int = bounded(100, 1, why=_STEPS)  # steps between latest/ checkpoints
    # stop after this many evaluations without improvement; 0 = never
    patience: int = bounded(0, 0, why="a count of evaluations")
    log_every: int = bounded(10, 1, why=_STEPS)
    # None (auto): on when training on a GPU, where activations outgrow memory (the estimate is logged)
    gradient_checkpointing: bool | None = None
    # auto = bf16 on GPU, none on CPU
    mixed_precision: str = one_of("auto", ("auto", "no", "bf16", "fp16"))
    # "token": the loss averages over target tokens, so a 40-token caption outweighs a 2-token answer
    # twenty times; "sample": each item's mean token loss, averaged over the batch's items.
    loss_weighting: str = one_of("token", ("token", "sample"))
    # "adamw8bit": bitsandbytes' 8-bit AdamW, 2 bytes of state per trainable parameter instead of 8.
    optimizer: str = one_of("adamw", ("adamw", "adamw8bit"))


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
        raw = read_recipe(path, "training config") or {}
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
        raw.setdefault(parts[0], {})[parts[1]] = parse_recipe_text(value, f"override {key}")
    unknown = sorted(set(raw) - {"run_dir", *SECTIONS})
    if unknown:
        raise UserError(f"training config has unknown section(s) {unknown}; known: run_dir, {sorted(SECTIONS)}")
    sections = {name: from_dict(cls, raw.get(name) or {}, where=f"section {name!r}") for name, cls in SECTIONS.items()}
    config = RunConfig(run_dir=str(raw.get("run_dir", RunConfig.run_dir)), **sections)
    _validate(config)
    return config


def read_recipe(path: Path, what: str) -> Any:
    """A YAML recipe (a run's config.yaml, latest/recipe.yaml too), bounded: at most MAX_RECIPE_BYTES, and
    at most MAX_RECIPE_VALUES values once its aliases are followed (a few lines of YAML can repeat a list
    a billion times)."""
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise UserError(f"{what} {path} is {size_text(size)}, more than the {size_text(MAX_RECIPE_BYTES)} a recipe may be")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start:,})") from None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({exc.strerror})") from None
    return parse_recipe_text(text, f"{what} {path}")


def parse_recipe_text(text: str, what: str) -> Any:
    """YAML text parsed safely and bounded (see read_recipe); one sentence when it cannot be."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{what} is not valid YAML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise UserError(f"{what} nests too deeply to be a recipe") from None
    stack, count = [value], 0
    while stack:  # every value as a reader would see it, aliases followed; stops at the bound
        item = stack.pop()
        count += 1
        if count > MAX_RECIPE_VALUES:
            raise UserError(f"{what} holds more than {MAX_RECIPE_VALUES:,} values (counting what its aliases "
                            f"repeat); a recipe holds a few dozen")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


def check_base_models_available(config: RunConfig) -> None:
    """The base models a fresh run starts from exist (local folders) or can be had (hub ids: cached, or
    downloadable now), said before anything is written or imported (clip_vlm_core.model.model_refs)."""
    from clip_vlm_core.model.model_refs import QWEN_HUB_FILES, classify_ref, hub_snapshot

    if config.optim.init != "base":
        return
    ref = classify_ref(config.captioner.qwen_model, "captioner.qwen_model")
    if ref.kind == "hub":
        hub_snapshot(ref.value, "Qwen2.5-VL base model", False, QWEN_HUB_FILES)
    classify_ref(config.captioner.clip_model, "captioner.clip_model", open_clip_names=True)


def _check_type_weights(weights: Any) -> None:
    if not isinstance(weights, dict):
        raise UserError(f"data.qa_type_weights must map question types to weights, e.g. {{both.where: 3}}, got {weights!r}")
    for kind, weight in weights.items():
        if not isinstance(kind, str) or not kind.strip():
            raise UserError(f"data.qa_type_weights has a key that is not a question type name: {kind!r}")
        check_number(f"data.qa_type_weights[{kind}]", weight, _TYPE_WEIGHT)


def _validate(config: RunConfig) -> None:
    """Every field of every section within its declared bounds (clip_vlm_core.limits), then the few rules
    that relate fields. A new field is validated by declaring it with `bounded(...)` or `one_of(...)`."""
    for name in SECTIONS:
        check_fields(getattr(config, name), f"{name}.")
    o, d = config.optim, config.data
    _check_type_weights(d.qa_type_weights)
    if not d.synthetic_scenes and not d.train_manifest:
        raise UserError("give data.train_manifest (from `clip-vlm data build`) or data.synthetic_scenes > 0")
    if o.init not in ("base", "tiny"):
        from clip_vlm_core.model.model_refs import classify_ref

        rule = f"optim.init must be 'base', 'tiny' or a clip-vlm checkpoint folder, got {o.init!r}"
        try:
            ref = classify_ref(o.init, "optim.init")  # the one rule: a local path must exist
        except UserError:
            raise UserError(f"{rule}, which does not exist") from None
        if ref.kind != "folder" or not (ref.path / "clip_vlm_config.json").is_file():
            raise UserError(rule)
    if o.init_weights:
        from clip_vlm_core.model.model_refs import local_checkpoint

        local_checkpoint(o.init_weights, "optim.init_weights")  # embedded:NAME or a checkpoint folder here
