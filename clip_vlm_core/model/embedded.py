"""The embedded default model: the tiny architecture trained on synthetic scenes, shipped in the package.

Rebuild it from its recipe and seed (about 35 minutes on a 2-core CPU: the recipe, then a short second
stage from its best checkpoint with the overrides the Makefile's POLISH lists), then install it:

    clip-vlm train --config training/configs/synthetic-tiny.yaml
    clip-vlm train --config training/configs/synthetic-tiny.yaml run_dir=runs/synthetic-tiny-polish \
        optim.init=runs/synthetic-tiny/best optim.max_steps=1500 optim.loss_weighting=token ...
    python -m clip_vlm_core.model.embedded runs/synthetic-tiny-polish

The base models are those the checkpoint names (the first stage's base/).

`make embedded-model` does both. Installing replaces the assets' `tiny_base/` and `default_model/`
only when an earlier install wrote them (their marker file) or with --overwrite, and never when they
are or hold the run being installed; each folder is swapped in whole, through a staging folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from clip_vlm_core.atomic import staged_dir
from clip_vlm_core.errors import UserError
from clip_vlm_core.jsonin import read_json_object
from clip_vlm_core.limits import MAX_SMALL_JSON_BYTES
from clip_vlm_core.model.checkpoint import CONFIG_FILE, default_model_path
from clip_vlm_core.output_guard import guard_output

ASSETS = default_model_path().parent
WRITER = "clip-vlm embedded-model install"


def install_embedded_model(run_dir: str | Path, assets: Path = ASSETS, overwrite: bool = False) -> Path:
    """Copy a run's base models and best/ checkpoint into the package assets (atomically per folder)."""
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
    for name in ("tiny_base", "default_model"):  # both checked before either is replaced
        guard_output(assets / name, WRITER, inputs, overwrite, flag="asset folder")
    with staged_dir(assets / "tiny_base", WRITER) as staged:
        _copy_readable(base, staged)
    with staged_dir(assets / "default_model", WRITER) as staged:
        _copy_readable(best, staged)
        config = read_json_object(staged / CONFIG_FILE, "config", MAX_SMALL_JSON_BYTES)
        config.update(qwen_model="../tiny_base/qwen", clip_model="../tiny_base/clip")
        (staged / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        _forget_training_paths(staged / "adapter")
    return assets / "default_model"


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
    parser = argparse.ArgumentParser(description="Install a trained tiny run as the embedded default model.")
    parser.add_argument("run_dir", type=Path, help="run folder of training/configs/synthetic-tiny.yaml")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace asset folders that an earlier install did not write")
    args = parser.parse_args(argv)
    try:
        print(f"installed {install_embedded_model(args.run_dir, overwrite=args.overwrite)}")
    except UserError as exc:
        print(f"clip_vlm_core.model.embedded: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
