"""The embedded default model: the tiny architecture trained on synthetic scenes, shipped in the package.

Rebuild it from its recipe and seed (about 10 minutes on a 2-core CPU), then install it:

    clip-vlm train --config training/configs/synthetic-tiny.yaml
    python -m clip_vlm_core.model.embedded runs/synthetic-tiny

`make embedded-model` does both.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from clip_vlm_core.atomic import replace_dir
from clip_vlm_core.errors import UserError
from clip_vlm_core.model.captioner import CONFIG_FILE, default_model_path

ASSETS = default_model_path().parent


def install_embedded_model(run_dir: str | Path, assets: Path = ASSETS) -> Path:
    """Copy a run's base models and best/ checkpoint into the package assets (atomically per folder)."""
    run_dir = Path(run_dir)
    best, base = run_dir / "best", run_dir / "base"
    for needed in (best / CONFIG_FILE, base / "qwen" / "config.json", base / "clip" / "open_clip_config.json"):
        if not needed.exists():
            raise UserError(f"{needed} is missing: is {run_dir} a finished run of a tiny recipe (optim.init: tiny)?")
    _replace_dir(base, assets / "tiny_base")
    staging = assets / ".default_model.new"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(best, staging)
    config = json.loads((staging / CONFIG_FILE).read_text())
    config.update(qwen_model="../tiny_base/qwen", clip_model="../tiny_base/clip")
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    adapter_config = staging / "adapter" / "adapter_config.json"
    if adapter_config.exists():  # PEFT records where the base came from; keep no path of the training machine
        data = json.loads(adapter_config.read_text())
        data["base_model_name_or_path"] = "../tiny_base/qwen"
        adapter_config.write_text(json.dumps(data, indent=2) + "\n")
    _replace_dir(staging, assets / "default_model", move=True)
    return assets / "default_model"


def _replace_dir(src: Path, dst: Path, move: bool = False) -> None:
    tmp = dst.parent / f".{dst.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if move:
        src.rename(tmp)
    else:
        shutil.copytree(src, tmp)
    for file in tmp.rglob("*"):
        if file.is_file():
            file.chmod(0o644)
    replace_dir(tmp, dst)


def main() -> None:
    parser = argparse.ArgumentParser(description="Install a trained tiny run as the embedded default model.")
    parser.add_argument("run_dir", type=Path, help="run folder of training/configs/synthetic-tiny.yaml")
    args = parser.parse_args()
    print(f"installed {install_embedded_model(args.run_dir)}")


if __name__ == "__main__":
    main()
