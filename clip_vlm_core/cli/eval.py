"""`clip-vlm eval`: caption a manifest split and answer its questions, score both, optionally base vs
fine-tuned side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from clip_vlm_core.cli.caption import (
    add_decoding_arguments,
    add_model_arguments,
    add_quantize_argument,
    decoding_from_args,
    load_captioner,
)
from clip_vlm_core.evaluation.qa import DEFAULT_MAX_ANSWER_TOKENS, check_answer_tokens
from clip_vlm_core.limits import MAX_BATCH_SIZE, check_batch

EPILOG = """examples:
  clip-vlm eval --manifest data/manifest/mini_val.jsonl --checkpoint runs/tiny/best --out eval/tiny
  clip-vlm eval --manifest data/manifest/mini_val.jsonl --checkpoint runs/tiny/best --compare --out eval/cmp
  clip-vlm eval --manifest data/manifest/mini_val.jsonl --checkpoint runs/tiny/best --blank-view CAM_BACK \\
      --out eval/no-back --max-new-tokens 32

The output folder holds captions.jsonl (sample_token, reference, prediction), metrics.json (BLEU-1..4,
METEOR, ROUGE-L, CIDEr; per-fact accuracy on synthetic captions) and report.html (open it in a browser).
When the manifest's rows carry question-answer pairs (`clip-vlm data build --qa`), every question is asked
too, each answer at most --max-answer-tokens long: answers.jsonl holds each answer, and metrics.json's "qa"
the exact-match accuracy (after lowercasing and dropping punctuation and articles) overall and per question
type, beside each type's chance level (its commonest answer). --blank-view applies to the questions as well:
the types only that view shows should fall to chance. It takes any view the model reads, context views (e.g.
CAM_FRONT_LEFT of a surround model) too, and blanks its past frames with it; --blank-history blanks every
view's past frames (a model with captioner.history_frames; the manifest built with --history).
With --compare the same samples are captioned by the base model (fusion bypassed, LoRA off) and by the
fine-tuned one; metrics.json then holds {"base": {...}, "finetuned": {...}}.
METEOR and the PTB tokenizer need Java; without it METEOR is reported as null and text is tokenized in Python.
Progress: a bar on a terminal; in a log (stderr not a terminal) a line every $CLIP_VLM_PROGRESS_SECONDS
seconds (default 10) and at the end, counting every model's captions and answers.

The manifest's images are found under the dataroot recorded in its manifest.json (an absolute path);
when the data has moved, --dataroot says where it is now. --out is replaced when an earlier eval wrote
it, or with --overwrite; never when it is or holds the manifest, the dataroot or the checkpoint."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="caption a manifest split and score it (BLEU, METEOR, ROUGE-L, CIDEr), base vs fine-tuned",
        description="Caption every sample of a manifest split file (from 'clip-vlm data build') in batches, "
        "score the captions against the references, and write captions, metrics and an HTML report.",
        epilog=EPILOG,
    )
    parser.add_argument("--manifest", type=Path, required=True, help="manifest split file, e.g. manifest/mini_val.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="output folder (written whole, or not at all)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out that an earlier eval did not write (never an input)")
    parser.add_argument("--dataroot", type=Path, default=None,
                        help="where the manifest's images are now, if they moved since 'data build' "
                        "(default: the dataroot in manifest.json)")
    parser.add_argument("--compare", action="store_true", help="also caption with the base model and report both side by side")
    parser.add_argument("--batch-size", type=int, default=8, help=f"samples captioned together, at most {MAX_BATCH_SIZE} (default %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples (default: all)")
    parser.add_argument("--blank-view", action="append", default=[], metavar="CAMERA",
                        help="replace this view's images with black frames, e.g. CAM_BACK (ablation; repeatable)")
    parser.add_argument("--blank-history", action="store_true",
                        help="replace every view's past frames with black frames (ablation, for a model with a history: "
                        "motion facts should fall to chance, the present's should not)")
    parser.add_argument("--skip-questions", action="store_true",
                        help="caption only; do not ask the manifest rows' questions")
    parser.add_argument("--max-answer-tokens", type=int, default=DEFAULT_MAX_ANSWER_TOKENS, metavar="N",
                        help="longest answer to a question, in tokens (default %(default)s; captions keep "
                        "--max-new-tokens)")
    add_model_arguments(parser)
    add_quantize_argument(parser)
    add_decoding_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clip_vlm_core.data.manifest import load_manifest, manifest_dataroot
    from clip_vlm_core.evaluate import WRITER, eval_inputs, evaluate_manifest
    from clip_vlm_core.jsonout import dumps
    from clip_vlm_core.output_guard import guard_output

    decoding = decoding_from_args(args)
    check_batch(args.batch_size, decoding.num_beams, "--batch-size")  # before minutes of model loading
    check_answer_tokens(args.max_answer_tokens, "--max-answer-tokens")
    inputs = {**eval_inputs(args.manifest, args.dataroot), "checkpoint": args.checkpoint}
    guard_output(args.out, WRITER, inputs, args.overwrite)  # before minutes of model loading
    manifest_dataroot(args.manifest, args.dataroot)  # so is a missing manifest or dataroot
    load_manifest(args.manifest)  # and a manifest row that cannot be read (its questions, its captions)
    captioner = load_captioner(args)
    metrics = evaluate_manifest(
        args.manifest,
        captioner,
        args.out,
        compare=args.compare,
        batch_size=args.batch_size,
        limit=args.limit,
        blank_views=tuple(args.blank_view),
        blank_history=args.blank_history,
        decoding=decoding,
        overwrite=args.overwrite,
        dataroot=args.dataroot,
        questions=not args.skip_questions,
        max_answer_tokens=args.max_answer_tokens,
        checkpoint=args.checkpoint,
    )
    print(dumps(_headline(metrics), indent=2))
    print(f"wrote {args.out}/captions.jsonl, metrics.json, report.html")
    return 0


def _headline(metrics: dict) -> dict:
    """The scores worth a glance on the terminal; metrics.json has everything."""
    keys = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "exact_match", "samples", "caption_seconds", "answer_seconds",
            "seconds")

    def headline(block: dict) -> dict:
        out = {k: block[k] for k in keys if k in block}
        if block.get("qa"):
            out["qa_accuracy"] = block["qa"]["accuracy"]
            out["qa_per_type"] = {t: round(f["accuracy"], 3) for t, f in block["qa"]["per_type"].items()}
        return out

    if "finetuned" in metrics:
        return {**{m: headline(metrics[m]) for m in ("base", "finetuned")}, "run_seconds": metrics["run_seconds"]}
    return {**headline(metrics), "run_seconds": metrics["run_seconds"]}
