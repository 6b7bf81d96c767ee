"""The embedded default model: the tiny architecture trained on synthetic scenes, shipped in the package.

Rebuild it from its recipe and seed (about 35 minutes on a 2-core CPU: the recipe, then a short second
stage from its best checkpoint with the overrides the Makefile's POLISH lists), then install it:

    clip-vlm train --config training/configs/synthetic-tiny.yaml
    clip-vlm train --config training/configs/synthetic-tiny.yaml run_dir=runs/synthetic-tiny-polish \
        optim.init=runs/synthetic-tiny/best optim.max_steps=1500 optim.loss_weighting=token ...
    python -m clip_vlm_core.model.embedded runs/synthetic-tiny-polish

The base models are those the checkpoint names (the first stage's base/).

`make embedded-model` does both, and builds the second embedded model, `embedded:surround` (six cameras
with a 3-frame history, training/configs/synthetic-tiny-surround.yaml), installed with `--name surround`
into `surround_model/`. Both share `tiny_base/`: a surround run must have been trained on the installed
base models (the same seed builds the same ones; checked file by file), and installing a default model on
other base models is refused while a surround model that needs the old ones is installed.

Installing replaces the assets' `tiny_base/` and the model's folder only when an earlier install wrote them
(their marker file) or with --overwrite, and never when they are or hold the run being installed; each
folder is swapped in whole, through a staging folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from clip_vlm_core.atomic import staged_dir
from clip_vlm_core.errors import UserError
from clip_vlm_core.jsonin import read_json_object
from clip_vlm_core.limits import MAX_SMALL_JSON_BYTES
from clip_vlm_core.model.checkpoint import CONFIG_FILE, default_model_path
from clip_vlm_core.model.model_refs import EMBEDDED_MODELS
from clip_vlm_core.output_guard import guard_output

ASSETS = default_model_path().parent
WRITER = "clip-vlm embedded-model install"


def install_embedded_model(run_dir: str | Path, assets: Path = ASSETS, overwrite: bool = False,
                           name: str = "default") -> Path:
    """Copy a run's best/ checkpoint into the package assets as the embedded model `name` (EMBEDDED_MODELS),
    and for the default model its base models too (atomically per folder)."""
    if name not in EMBEDDED_MODELS:
        raise UserError(f"--name {name!r}: the embedded models are {', '.join(EMBEDDED_MODELS)}")
    run_dir = Path(run_dir)
    best = run_dir / "best"
    if not (best / CONFIG_FILE).exists():
        raise UserError(f"{best / CONFIG_FILE} is missing: is {run_dir} a finished run of a tiny recipe?")
    base = _base_of(best)
    for needed in (base / "qwen" / "config.json", base / "clip" / "open_clip_config.json"):
        if not needed.exists():
            raise UserError(f"{needed} is missing: is {run_dir} a finished run of a tiny recipe (optim.init: tiny, "
                            f"or a checkpoint of one)?")
    inputs = {"run's best checkpoint": best, "run's base models": base}
    model_folder = EMBEDDED_MODELS[name]
    shared_base = assets / "tiny_base"
    if name != "default":  # trained on the installed base models, or it could not load them
        if not _same_files(base, shared_base):
            raise UserError(f"{run_dir}'s base models ({base}) are not the installed {shared_base}: train it with "
                            f"the default model's seed (optim.seed), or install that run's default model first")
    else:
        others = [other for other in EMBEDDED_MODELS.values()
                  if other != model_folder and (assets / other / CONFIG_FILE).exists()]
        if others and shared_base.exists() and not _same_files(base, shared_base):
            raise UserError(f"{run_dir}'s base models differ from the installed {shared_base}, which "
                            f"{', '.join(others)} needs: retrain and install it too, or train with the same seed")
    for folder in ("tiny_base", model_folder) if name == "default" else (model_folder,):  # all checked first
        guard_output(assets / folder, WRITER, inputs, overwrite, flag="asset folder")
    if name == "default":
        with staged_dir(shared_base, WRITER) as staged:
            _copy_readable(base, staged)
    with staged_dir(assets / model_folder, WRITER) as staged:
        _copy_readable(best, staged)
        config = read_json_object(staged / CONFIG_FILE, "config", MAX_SMALL_JSON_BYTES)
        config.update(qwen_model="../tiny_base/qwen", clip_model="../tiny_base/clip")
        (staged / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        _forget_training_paths(staged / "adapter")
    return assets / model_folder


def _same_files(a: Path, b: Path) -> bool:
    """Whether two folders hold the same base models: the same files with the same bytes (hidden ones, like
    markers, aside), a JSON config's `transformers_version` (which transformers saved it) aside."""
    def digest(path: Path) -> bytes:
        data = path.read_bytes()
        if path.suffix == ".json":
            config = read_json_object(path, "base model file", MAX_SMALL_JSON_BYTES)
            config.pop("transformers_version", None)
            data = json.dumps(config, sort_keys=True).encode()
        return hashlib.sha256(data).digest()

    def listing(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): digest(p)
                for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}
    return b.is_dir() and listing(a) == listing(b)


def _base_of(best: Path) -> Path:
    """The folder holding the tiny base models `best` was trained on: the run's own base/ (optim.init: tiny),
    or the one of the run it started from (optim.init: that run's checkpoint), as its config names them."""
    config = read_json_object(best / CONFIG_FILE, "config", MAX_SMALL_JSON_BYTES)
    qwen, clip = ((best / str(config.get(key, ""))).resolve() for key in ("qwen_model", "clip_model"))
    if qwen.parent != clip.parent or (qwen.name, clip.name) != ("qwen", "clip"):
        raise UserError(f"{best / CONFIG_FILE} names base models {config.get('qwen_model')!r} and "
                        f"{config.get('clip_model')!r}, not the qwen/ and clip/ folders of one tiny base")
    return qwen.parent


def _forget_training_paths(adapter: Path) -> None:
    """PEFT records where the base came from (adapter_config.json, and its model card README.md): point both
    at the shipped base, so no path of the machine that trained the model ships in the package."""
    adapter_config = adapter / "adapter_config.json"
    if not adapter_config.exists():
        return
    data = read_json_object(adapter_config, "LoRA adapter config", MAX_SMALL_JSON_BYTES)
    trained_from = data.get("base_model_name_or_path")
    data["base_model_name_or_path"] = "../tiny_base/qwen"
    adapter_config.write_text(json.dumps(data, indent=2) + "\n")
    card = adapter / "README.md"
    if trained_from and card.exists():
        card.write_text(card.read_text().replace(trained_from, "../tiny_base/qwen"))


def _copy_readable(src: Path, dst: Path) -> None:
    """Copy a folder's contents into `dst`, every file world-readable (the assets ship in the package)."""
    shutil.copytree(src, dst, dirs_exist_ok=True)
    for file in dst.rglob("*"):
        if file.is_file():
            file.chmod(0o644)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install a trained tiny run as an embedded model.")
    parser.add_argument("run_dir", type=Path, help="run folder of training/configs/synthetic-tiny.yaml (default) or "
                        "synthetic-tiny-surround.yaml (surround)")
    parser.add_argument("--name", choices=sorted(EMBEDDED_MODELS), default="default",
                        help="which embedded model: default (the default model), surround (embedded:surround)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace asset folders that an earlier install did not write")
    args = parser.parse_args(argv)
    try:
        print(f"installed {install_embedded_model(args.run_dir, overwrite=args.overwrite, name=args.name)}")
    except UserError as exc:
        print(f"clip_vlm_core.model.embedded: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
