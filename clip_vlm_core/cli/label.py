"""`clip-vlm label`: caption every camera pair of a fleet's bags into LABELS (Ray Data); `clip-vlm search`."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from clip_vlm_core.cli.caption import (
    add_decoding_arguments,
    add_model_arguments,
    check_model_available,
    decoding_from_args,
)
from clip_vlm_core.errors import UserError

LABEL_EPILOG = """examples:
  clip-vlm label bags/scene-0061 --out labels/                  # one bag, on this machine
  clip-vlm label /archive/fleet/ --out labels/ --every 1.0      # a folder of bags, a pair a second
  clip-vlm label bags.txt --out labels/ --question "Is anything following us?" --question "Is it night?"
  clip-vlm label /archive/fleet/ --out labels/ --write-bags labelled/   # and each bag with its labels in it
  clip-vlm label /nfs/fleet/ --out labels/ --address 10.0.0.1:6379 --workers 8 --checkpoint /nfs/runs/best
  clip-vlm search labels/ "truck behind night"

INPUT is a bag (a folder with metadata.yaml, or a .mcap / .db3 file, as 'bag play' reads them), a
folder of bags (searched to any depth), or a manifest (a text file, one bag or folder a line, relative
to it). Each view's frames are paired by stamp with the caption node's own code (same --max-skew-ms,
the model's views, topics /<VIEW>/image_raw/compressed or /<VIEW>/image_raw), and every pair is
captioned, or the first of every --every seconds of the bag.

LABELS is a folder of Parquet files, one row per pair: the bag (path and content identity), each view's
stamp, the pair's offset in the bag, the caption, the answers, the model and the decoding settings in
effect. A row's key is (bag identity, view stamps, model, prompt, decoding settings, questions): a run
adds only rows whose key LABELS lacks, so a run stopped part-way (Ctrl-C, kill -9, a lost node) and
started again labels only what is missing, and a second run over the same bags adds nothing.

It runs on Ray Data: local by default, a cluster with --address or RAY_ADDRESS (every node needs
clip-vlm, the bags and the checkpoint at the same paths). Each worker loads the model once; with GPUs
each worker gets one. A bag that cannot be read is reported and skipped (--strict: exit 2 instead)."""

SEARCH_EPILOG = """examples:
  clip-vlm search labels/ truck night
  clip-vlm search labels/ "red bus" --limit 5
  clip-vlm search labels/ truck --json | jq .caption

A row matches when its caption or one of its answers holds every word, as a whole word, whatever the case.
Each match is printed as the bag, the pair's time in it (seconds from the bag's start) and the caption:
'ros2 bag play BAG --start-offset SECONDS' (or 'clip-vlm bag play') replays it from there."""


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_label(subparsers)
    _register_search(subparsers)


def _register_label(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "label",
        help="caption every camera pair of many bags into a Parquet dataset (Ray Data)",
        description="Label a fleet's drive logs: pair each bag's frames by stamp as the node does, caption them, "
        "answer questions about them, and write one row per pair to LABELS, exactly once.",
        epilog=LABEL_EPILOG,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="bags, folders of bags, or manifest files")
    p.add_argument("--out", type=Path, required=True, metavar="LABELS",
                   help="the Parquet dataset folder; a run adds to its own earlier LABELS")
    what = p.add_argument_group("what to label")
    what.add_argument("--every", type=float, default=0.0, metavar="SECONDS",
                      help="caption the first pair of every SECONDS of each bag (default: every pair)")
    what.add_argument("--question", action="append", default=[], metavar="TEXT",
                      help="also ask this of every pair (repeat for several); answers go beside the caption")
    what.add_argument("--prompt", default=None, help="caption instruction (default: the checkpoint's)")
    what.add_argument("--batch-size", type=int, default=4, help="pairs captioned in one model call (default %(default)s, "
                      "the node's)")
    what.add_argument("--max-skew-ms", type=float, default=None,
                      help="frames of the views pair when their stamps differ by at most this (default: the node's, 50)")
    what.add_argument("--topic-template", default="/{view}/image_raw",
                      help="each view's image topic, '/compressed' added for compressed frames (default %(default)s)")
    what.add_argument("--image-transport", choices=("auto", "compressed", "raw"), default="auto",
                      help="auto: compressed frames where a bag has them, else raw (default %(default)s)")
    where = p.add_argument_group("where it runs (Ray)")
    where.add_argument("--address", default=None,
                       help="a running Ray cluster, e.g. 10.0.0.1:6379 (default: $RAY_ADDRESS, else Ray on this machine)")
    where.add_argument("--workers", type=int, default=None,
                       help="model replicas, each loading the model once (default: one per GPU, or 1 without GPUs)")
    where.add_argument("--cpus-per-worker", type=float, default=None,
                       help="CPUs each worker takes (default: 1 with GPUs, else the cluster's CPUs shared out)")
    where.add_argument("--gpus-per-worker", type=float, default=None,
                       help="GPUs each worker takes, e.g. 0.5 for two replicas a GPU (default: 1 if the cluster has GPUs)")
    where.add_argument("--no-fast-inference", action="store_true",
                       help="on GPUs, use transformers' generate() as is (the node's fast_inference false)")
    out = p.add_argument_group("output")
    out.add_argument("--write-bags", type=Path, default=None, metavar="DIR",
                     help="also write each input bag with /scene_caption and its marker into DIR/NAME")
    out.add_argument("--overwrite", action="store_true", help="empty LABELS first (never an input)")
    out.add_argument("--strict", action="store_true", help="a bag that cannot be labelled ends the run with exit 2")
    out.add_argument("--rows-per-part", type=int, default=5000, help="rows per Parquet part (default %(default)s)")
    out.add_argument("--part-seconds", type=float, default=30.0,
                     help="write buffered rows as a part at least this often (default %(default)s)")
    add_model_arguments(p)
    add_decoding_arguments(p)
    p.set_defaults(func=run_label)


def _register_search(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search",
        help="find labelled pairs whose caption or answers hold every word (DuckDB)",
        description="Search LABELS (written by 'clip-vlm label') for pairs whose caption or answers hold every word.",
        epilog=SEARCH_EPILOG,
    )
    p.add_argument("labels", type=Path, metavar="LABELS", help="the folder 'clip-vlm label --out' wrote")
    p.add_argument("words", nargs="+", metavar="WORDS", help="words that must all appear (quote several or not)")
    p.add_argument("--limit", type=int, default=50, help="print at most this many matches (default %(default)s; 0: all)")
    p.add_argument("--json", action="store_true", help="one JSON object per match (every column but the key)")
    p.set_defaults(func=run_search)


def _check_numbers(args: argparse.Namespace) -> None:
    from clip_vlm_core.limits import check_batch, check_prompt, check_question
    from clip_vlm_core.stream.config import SPECS

    check_batch(args.batch_size, args.num_beams, "--batch-size")
    if not math.isfinite(args.every) or args.every < 0:
        raise UserError(f"--every must be a number of seconds, 0 or more, got {args.every}")
    skew = SPECS["max_skew_ms"]
    if args.max_skew_ms is not None and not skew.low <= args.max_skew_ms <= skew.high:
        raise UserError(f"--max-skew-ms must be from {skew.low:g} to {skew.high:g} (the node's range), got {args.max_skew_ms}")
    if "{view}" not in args.topic_template or not args.topic_template.startswith("/"):
        raise UserError(f"--topic-template {args.topic_template!r} must start with / and hold {{view}}, e.g. /{{view}}/image_raw")
    try:
        args.topic_template.format(view="CAM_FRONT")
    except (KeyError, IndexError, ValueError):
        raise UserError(f"--topic-template {args.topic_template!r} may hold no placeholder but {{view}}") from None
    if args.rows_per_part < 1 or not args.part_seconds > 0:
        raise UserError("--rows-per-part must be at least 1 and --part-seconds above 0")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.cpus_per_worker is not None and not (math.isfinite(args.cpus_per_worker) and args.cpus_per_worker > 0):
        raise UserError(f"--cpus-per-worker must be a number above 0, got {args.cpus_per_worker}")
    if args.gpus_per_worker is not None and not (math.isfinite(args.gpus_per_worker) and args.gpus_per_worker >= 0):
        raise UserError(f"--gpus-per-worker must be a number, 0 or more, got {args.gpus_per_worker}")
    if args.prompt is not None:
        args.prompt = check_prompt(args.prompt, "--prompt")
    args.question = list(dict.fromkeys(check_question(q, f"--question {q[:40]!r}") for q in args.question))


def run_label(args: argparse.Namespace) -> int:
    import dataclasses

    from clip_vlm_core.label import run
    from clip_vlm_core.label.labeller import LabelSettings
    from clip_vlm_core.stream.config import SPECS

    _check_numbers(args)
    decoding = decoding_from_args(args)
    check_model_available(args)
    settings = LabelSettings(
        checkpoint=_absolute(args.checkpoint), base_models_root=_absolute(args.base_models_root), device=args.device,
        dtype=args.dtype, local_files_only=args.local_files_only, prompt=args.prompt, decoding=decoding,
        questions=tuple(args.question), batch_size=args.batch_size, every_s=args.every,
        max_skew_ms=args.max_skew_ms if args.max_skew_ms is not None else SPECS["max_skew_ms"].default,
        topic_template=args.topic_template, transport=args.image_transport, fast_inference=not args.no_fast_inference,
    )
    result = run.label(
        args.inputs, args.out, settings, write_bags=args.write_bags, address=args.address, workers=args.workers,
        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker, overwrite=args.overwrite,
        strict=args.strict, rows_per_part=args.rows_per_part, part_seconds=args.part_seconds,
        say=lambda text: print(text, file=sys.stderr, flush=True),
    )
    print(run.summary(result, args.out, dataclasses.replace(settings)))
    return 130 if result.report.interrupted else 0


def _absolute(value: str | None) -> str | None:
    """A local path made absolute for the workers (their current folder is not ours); other values as they are."""
    if not value:
        return value
    from clip_vlm_core.model.model_refs import classify_ref

    try:
        ref = classify_ref(value, "--checkpoint")
    except UserError:
        return value
    return str(Path(value).expanduser().absolute()) if ref.kind == "folder" else value


def run_search(args: argparse.Namespace) -> int:
    from clip_vlm_core.label.search import format_hits, search

    if args.limit < 0:
        raise UserError(f"--limit must be 0 or more, got {args.limit}")
    hits = search(args.labels, args.words, limit=args.limit or None)
    text = format_hits(hits, as_json=args.json, cwd=Path(os.getcwd()))
    if text:
        print(text)
    if not hits:
        print(f"no labelled pair in {args.labels} holds every word of {' '.join(args.words)!r}", file=sys.stderr)
        return 1
    return 0
