"""`clip-vlm caption`: describe one set of camera images (the playground)."""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from clip_vlm_core.config import DecodingConfig
from clip_vlm_core.limits import bound_of

EPILOG = """examples:
  clip-vlm caption --view CAM_FRONT=front.jpg --view CAM_BACK=back.jpg
  clip-vlm caption --view CAM_FRONT=f.jpg --view CAM_BACK=b.jpg --checkpoint runs/tiny/best --num-beams 3
  clip-vlm caption --view CAM_FRONT=f.jpg --view CAM_BACK=b.jpg --log playground.jsonl

With no --checkpoint the embedded default model is used (a tiny model trained on synthetic scenes)."""


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """Decoding flags shared by `caption` and `eval`; defaults and bounds come from DecodingConfig."""
    d = DecodingConfig()
    b = partial(bound_of, DecodingConfig)
    group = parser.add_argument_group(
        "decoding", "Greedy by default. Unset, --repetition-penalty and --eos-token-ids are the base model's own "
        "(its generation_config.json); every setting in effect is written by --log.")
    group.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                       help=f"caption length limit in tokens, at most {b('max_new_tokens').high:g} (default %(default)s)")
    group.add_argument("--num-beams", type=int, default=d.num_beams,
                       help=f"beam search width, at most {b('num_beams').high:g}; 1 is greedy (default %(default)s)")
    group.add_argument("--sample", dest="do_sample", action="store_true", help="sample instead of greedy/beam decoding")
    group.add_argument("--temperature", type=float, default=d.temperature,
                       help="sampling temperature, with --sample (default %(default)s)")
    group.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling mass, with --sample (default %(default)s)")
    group.add_argument("--top-k", type=int, default=d.top_k,
                       help="sample among the k most likely tokens, with --sample; 0 = all (default %(default)s)")
    group.add_argument("--repetition-penalty", type=float, default=None,
                       help="1.0 means none (default: the base model's, e.g. 1.05 for Qwen2.5-VL-Instruct)")
    group.add_argument("--eos-token-ids", type=int, nargs="+", default=None, metavar="ID",
                       help="token ids that end a caption (default: the base model's, plus its tokenizer's end token)")


def decoding_from_args(args: argparse.Namespace) -> DecodingConfig:
    """The decoding flags of `add_decoding_arguments` as the one DecodingConfig."""
    return DecodingConfig.of(vars(args))


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="clip-vlm checkpoint folder, a Qwen2.5-VL folder or hub id org/name, or a shipped model: "
                        "embedded:default (the default), embedded:surround (six cameras with a history)"
                        "; a path whose first folder exists here is local and must exist, never a "
                        "hub id; hub ids come from the Hugging Face cache first")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--local-files-only", action="store_true",
                        help="never contact the model hub: a hub id must be in the local cache (as with HF_HUB_OFFLINE=1)")
    parser.add_argument("--base-models-root", metavar="DIR", default=None,
                        help="a folder the checkpoint's local base models may lie in (default: $CLIP_VLM_BASE_MODELS, "
                        "else the folder holding the checkpoint); folders elsewhere are refused")


def add_quantize_argument(parser: argparse.ArgumentParser) -> None:
    """--quantize for the commands that load one captioner (caption, ask, eval)."""
    from clip_vlm_core.config import QUANTIZE_MODES

    parser.add_argument("--quantize", choices=QUANTIZE_MODES, default=None,
                        help="the language model in 4 bits (nf4), 8 bits (int8) or as stored (none), through "
                        "bitsandbytes; none runs a QLoRA checkpoint on a full-precision base, its adapters merged on "
                        "a GPU (default: the checkpoint's own)")


def scene_command(subparsers: argparse._SubParsersAction, name: str, help: str, description: str, epilog: str,
                  logged: str, run) -> argparse.ArgumentParser:
    """A command about one scene (caption, ask): its --view images, --log of what it `logged`, the model and
    decoding flags; the command adds its own."""
    parser = subparsers.add_parser(name, help=help, description=description, epilog=epilog)
    parser.add_argument("--view", action="append", default=[], metavar="CAMERA=IMAGE", required=True,
                        help="a camera name and its image file, e.g. CAM_FRONT=front.jpg (repeat per view)")
    parser.add_argument("--log", type=Path, default=None,
                        help=f"append {logged}, with the settings, to this JSONL file (a new file, or an earlier "
                        "caption/ask log; never an input)")
    add_model_arguments(parser)
    add_quantize_argument(parser)
    add_decoding_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = scene_command(subparsers, "caption", "describe a set of camera images in one caption",
                           "Caption one scene seen by several cameras. Give one --view per camera the model reads.",
                           EPILOG, "the caption and prompt", run)
    parser.add_argument("--prompt", default=None, help="instruction given to the model (default: the checkpoint's)")


def check_model_available(args: argparse.Namespace) -> None:
    """What --checkpoint names exists (or, as a hub id, is cached or may be downloaded): said at once,
    before seconds of model-library imports (clip_vlm_core.model.model_refs)."""
    from clip_vlm_core.model.model_refs import check_available

    check_available(args.checkpoint, args.local_files_only, args.base_models_root, what="--checkpoint")


def load_captioner(args: argparse.Namespace):
    """The SceneCaptioner the flags of `add_model_arguments` name."""
    check_model_available(args)
    from clip_vlm_core.model import SceneCaptioner

    return SceneCaptioner.from_pretrained(args.checkpoint, args.device, args.dtype, args.local_files_only,
                                          base_models_root=args.base_models_root,
                                          quantize=getattr(args, "quantize", None))


LOG_FIELDS = ("time", "model", "views", "decoding")  # what log_fields() starts every record with


def guard_log(args: argparse.Namespace, views: dict[str, Path]) -> None:
    """--log goes through the output guard: never an input (an image, the checkpoint or anything in it,
    the embedded model), never a folder or special file, and never an existing file that is not a
    caption/ask log (a manifest, a recipe, ...): appending would change what the user has."""
    from clip_vlm_core.model.model_refs import classify_ref, embedded_assets
    from clip_vlm_core.output_guard import guard_append

    if args.log is None:
        return
    inputs: dict[str, Path | str | None] = {f"{name} image": path for name, path in views.items()}
    try:
        ref = classify_ref(args.checkpoint, "--checkpoint")
    except Exception:  # noqa: BLE001 - said when the model is loaded
        ref = None
    inputs["checkpoint"] = ref.path if ref is not None and ref.kind == "folder" else None
    inputs["embedded model"] = embedded_assets()
    inputs["base models folder"] = args.base_models_root
    guard_append(args.log, inputs, lambda record: all(key in record for key in LOG_FIELDS),
                 "a clip-vlm caption/ask log")


def append_log(path: Path, records: list[dict]) -> None:
    """Append records to a JSONL log, one strict JSON line each, whatever the settings."""
    from clip_vlm_core.atomic import write_fault
    from clip_vlm_core.errors import UserError
    from clip_vlm_core.jsonout import dumps

    text = "".join(dumps(record) + "\n" for record in records)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as log:
            log.write(text)  # one write: a reader never sees half a record from us
    except OSError as exc:
        raise UserError(f"cannot write {path}: {write_fault(exc, path)}") from None


def log_fields(captioner, views: dict[str, Path], settings: DecodingConfig) -> dict:
    """What every `--log` line of caption and ask starts with: when, which model, which images, and the
    decoding settings in effect."""
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": captioner.model_name,
        "views": {name: str(path) for name, path in views.items()},
        "decoding": settings.record(),
    }


def parse_views(specs: list[str]) -> dict[str, Path]:
    from clip_vlm_core.errors import UserError

    views: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--view {spec!r} must look like CAMERA=IMAGE, e.g. CAM_FRONT=front.jpg")
        if name in views:
            raise UserError(f"--view {name} is given twice")
        views[name] = Path(path)
    return views


def run(args: argparse.Namespace) -> int:

    from clip_vlm_core.images import load_image
    from clip_vlm_core.limits import check_prompt

    decoding = decoding_from_args(args)
    views = parse_views(args.view)
    guard_log(args, views)
    if args.prompt:  # the rule every prompt follows, before seconds of model loading
        check_prompt(args.prompt, "--prompt")
    images = {name: load_image(path) for name, path in views.items()}
    captioner = load_captioner(args)
    if args.prompt:
        captioner = captioner.with_prompt(args.prompt)
    captioner.images_for([images])  # bad view names fail here, before any model work
    start = time.perf_counter()
    settings = captioner.decoding_in_effect(decoding)
    caption = captioner.caption([images], decoding=settings)[0]
    seconds = time.perf_counter() - start
    print(caption)
    if args.log:
        append_log(args.log, [{**log_fields(captioner, views, settings), "prompt": captioner.config.prompt,
                                "caption": caption, "seconds": round(seconds, 4)}])
    return 0
