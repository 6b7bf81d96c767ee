"""`clip-vlm train`: fine-tune connector + LoRA from a YAML recipe."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

EPILOG = """examples:
  clip-vlm train --config training/configs/synthetic-tiny.yaml
  clip-vlm train --config training/configs/synthetic-tiny.yaml optim.max_steps=50 run_dir=runs/try
  clip-vlm train --config training/configs/synthetic-tiny.yaml --resume latest
  accelerate launch --num_processes 2 -m clip_vlm_core train --config training/configs/nuinteract-front-back.yaml
  torchrun --nproc_per_node 8 -m clip_vlm_core train --config training/configs/nuinteract-front-back.yaml
  (several machines: accelerate's --num_machines/--machine_rank/--main_process_ip, or torchrun's --nnodes
  and --rdzv_endpoint; README, "Several processes and machines")

Overrides are section.key=value with sections captioner, data, optim (values parsed as YAML), or run_dir=DIR.
The run folder gets config.yaml, run_info.json, latest/ (resumable), best/ (loadable by --checkpoint),
and tensorboard/ (tensorboard --logdir RUN_DIR). SIGTERM or Ctrl-C saves latest/ before exiting.

A fresh run refuses an existing non-empty run folder (--resume latest continues it; --overwrite empties
it first, never when it is or holds the recipe, a manifest, the dataroot or a checkpoint read).
A manifest's images are found under the dataroot recorded in its manifest.json; when the data moved,
--dataroot DIR (or data.dataroot=DIR) says where it is now. The summary line is JSON: best_val_loss is
null before any validation (scored by the training objective, optim.loss_weighting). A start that fails
before its first step leaves the run folder as it was: run the same command again."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="fine-tune the connector and LoRA adapters", epilog=EPILOG,
                                   description="Train the fusion connector and LoRA adapters over frozen Qwen2.5-VL "
                                   "and OpenCLIP.")
    parser.add_argument("--config", type=Path, required=True, help="YAML recipe, e.g. training/configs/synthetic-tiny.yaml")
    parser.add_argument("--resume", default=None, metavar="DIR|latest",
                        help="continue from a latest/ checkpoint folder, or 'latest' for this run's")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("--overwrite", action="store_true",
                        help="empty an existing run folder first and start afresh (never one holding an input)")
    parser.add_argument("--dataroot", default=None, metavar="DIR",
                        help="where the manifests' images are now, if they moved (same as data.dataroot=DIR)")
    parser.add_argument("--threads", type=_positive, default=None, metavar="N",
                        help="torch threads per process (default: this machine's cores divided by the training "
                        "processes on it, no more than other work leaves idle; OMP_NUM_THREADS=N also sets it)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides")
    parser.set_defaults(func=run)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of threads, at least 1, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from clip_vlm_core.jsonout import dumps
    from clip_vlm_core.train_config import check_base_models_available, load_run_config

    config = load_run_config(args.config, args.overrides)
    if args.dataroot:
        config.data.dataroot = args.dataroot
    if args.resume is None:
        check_base_models_available(config)  # a hub id that cannot be had: said at once
    from clip_vlm_core.train_launch import relaunch_if_accelerate_lost_processes

    relaunch_if_accelerate_lost_processes()  # accelerate launch --num_processes N means N processes
    from clip_vlm_core.train import run_training

    summary = run_training(config, resume=args.resume, show_progress=not args.no_progress, overwrite=args.overwrite,
                           recipe=args.config, threads=args.threads)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary per run, not per DDP process
        print(dumps(summary))
    return 130 if summary["stopped_by"] in ("SIGINT", "SIGTERM") else 0
