"""`clip-vlm bench caption|train|preprocess|memory|surround`: captioning latency/throughput, training
throughput, the cost of turning JPEG bytes into model inputs, the memory estimate against measured memory,
and what a history and context views cost."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

EPILOG = """examples:
  clip-vlm bench caption --batch-sizes 1 8 32 --max-new-tokens 48 --out bench-caption.json
  clip-vlm bench train --batch-sizes 8 16 --out bench-train.json
  clip-vlm bench caption --tiny --batch-sizes 1 2 --max-new-tokens 4 --iters 2 --warmup 1
  clip-vlm bench preprocess --device cpu --out bench-preprocess.json
  clip-vlm bench memory --sizes tiny 1gb --batch 2
  clip-vlm bench surround --history 3 --iters 5 --out bench-surround.json

Without --tiny the full-size model is timed (Qwen2.5-VL-3B + OpenCLIP ViT-L-14, two views): from
--checkpoint, else from the local hub cache, else with RANDOM weights of the right shapes (the report
says which). Captions are forced to exactly --max-new-tokens tokens so runs compare. See BENCHMARKS.md."""


def _add_common(parser: argparse.ArgumentParser, batch_sizes: list[int], warmup: int, iters: int) -> None:
    parser.add_argument("--tiny", action="store_true",
                        help="time the embedded tiny model instead of the full-size one (runs on any CPU in seconds)")
    parser.add_argument("--checkpoint", default=None,
                        help="clip-vlm checkpoint folder or Qwen2.5-VL hub id/folder with real weights "
                        "(default: Qwen2.5-VL-3B from the hub cache, else random weights)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=batch_sizes, metavar="N",
                        help="batch sizes to time, in pairs of views (default: %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=None, metavar="N",
                        help="cap on Qwen's pixels per image; a 1600x900 frame is resized to fit "
                        "(default: Qwen's own budget, which keeps it at 1596x896, 1824 tokens per view)")
    parser.add_argument("--warmup", type=int, default=warmup, metavar="N", help="untimed runs first (default: %(default)s)")
    parser.add_argument("--iters", type=int, default=iters, metavar="N", help="timed runs per setting (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE.json", help="also write the report as JSON")


def _benchmark(kinds: argparse._SubParsersAction, name: str, settings, help: str,
               description: str) -> argparse.ArgumentParser:
    """The `bench caption` or `bench train` parser with the flags they share, defaults from `settings`."""
    parser = kinds.add_parser(name, help=help, description=description, epilog=EPILOG)
    _add_common(parser, list(settings.batch_sizes), settings.warmup, settings.iters)
    parser.set_defaults(func=run)
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    from clip_vlm_core.bench.settings import CaptionBenchSettings, PreprocessBenchSettings, TrainBenchSettings
    from clip_vlm_core.config import DECODERS, QUANTIZE_MODES, VISION_ATTENTIONS

    parser = subparsers.add_parser(
        "bench",
        help="measure captioning latency and training throughput",
        description="Benchmark the captioner: 'caption' times generation per batch size, 'train' times "
        "training steps with and without cached encoder outputs and gradient checkpointing.",
        epilog=EPILOG,
    )
    kinds = parser.add_subparsers(dest="benchmark", metavar="caption|train|preprocess|memory|surround", required=True)

    c = CaptionBenchSettings()
    caption = _benchmark(kinds, "caption", c, "time to first token, decode time per token, caption latency, "
                         "captions/s, peak memory", "Time captioning at each batch size, with captions of a fixed "
                         "length (EOS ignored).")
    caption.add_argument("--max-new-tokens", type=int, default=c.max_new_tokens, metavar="N",
                         help="tokens generated per caption, exactly (default: %(default)s)")
    caption.add_argument("--decoder", choices=DECODERS, default=c.decoder,
                         help="static: greedy decoding from a static KV cache, each token one CUDA-graph replay; "
                         "transformers: its generate(); auto: static on a GPU (default: %(default)s)")
    caption.add_argument("--vision-attention", choices=VISION_ATTENTIONS, default=c.vision_attention,
                         help="varlen: Qwen's vision windows in one flash-attention call (GPU, bf16/fp16); "
                         "sdpa: one call per window; auto: varlen where it runs (default: %(default)s)")
    caption.add_argument("--merge-lora", action=argparse.BooleanOptionalAction, default=None,
                         help="fold LoRA adapters into the weights (default: on a GPU)")
    caption.add_argument("--compile", action="store_true",
                         help="GPU only: transformers' generate() with its static KV cache, which compiles the "
                         "decode step (implies --decoder transformers)")

    t = TrainBenchSettings()
    train = _benchmark(kinds, "train", t, "training samples/s and peak memory, with/without cached encoders and "
                       "gradient checkpointing", "Time forward + backward + AdamW steps on the connector and LoRA "
                       "parameters.")
    train.add_argument("--caption-tokens", "--max-new-tokens", dest="caption_tokens", type=int, metavar="N",
                       default=t.caption_tokens,
                       help="length of the labelled caption in each sample (default: %(default)s)")
    train.add_argument("--quantize", choices=QUANTIZE_MODES, default="none",
                       help="the frozen language model in 4 bits (nf4: QLoRA) or 8 bits (int8), through bitsandbytes "
                       "(default: %(default)s)")
    train.add_argument("--optimizer", choices=("adamw", "adamw8bit"), default=t.optimizer,
                       help="AdamW's moments in fp32, or bitsandbytes' 8-bit AdamW (default: %(default)s)")

    p = PreprocessBenchSettings()
    preprocess = kinds.add_parser(
        "preprocess",
        help="JPEG bytes to model inputs per 1600x900 pair: transformers' processor vs the captioner's path",
        description="Time turning a 1600x900 front/back JPEG pair into model-ready tensors, two ways in one "
        "run: transformers' processor + OpenCLIP's transform (as the captioner called them before) and the "
        "captioner's own path (tensor operations on the device); also report how much their tensors differ.",
        epilog=EPILOG,
    )
    preprocess.add_argument("--tiny", action="store_true",
                            help="use the embedded tiny model's processor (default: Qwen2.5-VL-3B's released settings)")
    preprocess.add_argument("--checkpoint", default=None, help="use this checkpoint's processor and CLIP settings")
    preprocess.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    preprocess.add_argument("--max-pixels", type=int, default=None, metavar="N",
                            help="cap on Qwen's pixels per image (default: the processor's own)")
    preprocess.add_argument("--pairs", type=int, default=p.pairs, metavar="N",
                            help="front/back pairs per call (default: %(default)s)")
    preprocess.add_argument("--warmup", type=int, default=p.warmup, metavar="N", help="untimed rounds first (default: %(default)s)")
    preprocess.add_argument("--iters", type=int, default=p.iters, metavar="N", help="timed rounds (default: %(default)s)")
    preprocess.add_argument("--out", type=Path, default=None, metavar="FILE.json", help="also write the report as JSON")
    preprocess.set_defaults(func=run_preprocess)

    from clip_vlm_core.bench.memory import SIZES, MemoryRun

    m = MemoryRun()
    memory = kinds.add_parser(
        "memory", help="the training memory estimate against the peak measured on this CPU",
        description="Build a random model of each size in a child process, run training steps (forward, backward, "
        "AdamW), and print the estimate (clip_vlm_core.memory_estimate) beside the measured peak resident memory "
        "over the process's baseline after imports.", epilog=EPILOG)
    memory.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES),
                        help="tiny: ~20 MB of weights; 1gb: Qwen2.5-VL-3B's widths and vocabulary, 2 layers, "
                        "~1.9 GB in fp32 (default: both)")
    memory.add_argument("--batch", type=int, default=m.batch, metavar="N", help="samples per step (default: %(default)s)")
    memory.add_argument("--caption-tokens", type=int, default=m.caption_tokens, metavar="N",
                        help="labelled tokens per sample (default: %(default)s)")
    memory.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    memory.add_argument("--optimizer", choices=("adamw", "adamw8bit"), default=m.optimizer,
                        help="the optimizer of the steps (default: %(default)s)")
    memory.add_argument("--out", type=Path, default=None, metavar="FILE.json", help="also write the report as JSON")
    memory.set_defaults(func=run_memory)

    surround = kinds.add_parser(
        "surround", help="what a history per view and context views cost, stage by stage, beside two views",
        description="Caption with the tiny architecture in four layouts (2 views; + a history of K frames per "
        "view; 2 full + 4 context views; both), from 1600x900 JPEG bytes of every frame read, and time decode, "
        "prepare, encoders, connector and generation; 'cached' keeps past frames' CLIP tokens from earlier "
        "captions, as the node does. Then the full-size model's tokens and FLOPs per caption for 2 views, 6 full "
        "views and 2 + 4 context, each with and without the history, counted from its shapes.", epilog=EPILOG)
    surround.add_argument("--history", type=int, default=3, metavar="K", help="past frames per view (default: %(default)s)")
    surround.add_argument("--max-new-tokens", type=int, default=16, metavar="N",
                          help="tokens generated per caption, exactly (default: %(default)s)")
    surround.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed captions first (default: %(default)s)")
    surround.add_argument("--iters", type=int, default=5, metavar="N", help="timed captions per layout (default: %(default)s)")
    surround.add_argument("--patch", action="store_true",
                          help="also time the layouts with a history with patch CLIP tokens (every patch of each view "
                          "and frame in the memory) instead of one pooled token")
    surround.add_argument("--out", type=Path, default=None, metavar="FILE.json", help="also write the report as JSON")
    surround.set_defaults(func=run_surround)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, spelled from its parsed options (defaults included)."""
    words = ["clip-vlm", "bench", args.benchmark]
    for name, value in sorted(vars(args).items()):
        if name in ("func", "command", "benchmark", "verbose") or value is None:
            continue
        if value is False:
            if name == "merge_lora":
                words.append("--no-merge-lora")
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return " ".join(words)


def run(args: argparse.Namespace) -> int:
    from clip_vlm_core.bench.caption import benchmark_captioning
    from clip_vlm_core.bench.report import format_caption_report, format_train_report, write_json
    from clip_vlm_core.bench.settings import CaptionBenchSettings, TrainBenchSettings
    from clip_vlm_core.bench.subject import load_bench_model
    from clip_vlm_core.bench.train import benchmark_training
    from clip_vlm_core.errors import UserError
    from clip_vlm_core.model.checkpoint import resolve_device

    training = args.benchmark == "train"
    if training:
        settings = TrainBenchSettings(batch_sizes=args.batch_sizes, caption_tokens=args.caption_tokens,
                                      warmup=args.warmup, iters=args.iters, optimizer=args.optimizer)
    else:
        settings = CaptionBenchSettings(batch_sizes=args.batch_sizes, max_new_tokens=args.max_new_tokens,
                                        warmup=args.warmup, iters=args.iters, static_cache=args.compile,
                                        decoder=args.decoder, vision_attention=args.vision_attention,
                                        merge_lora=args.merge_lora)
    full_size = not args.tiny and not args.checkpoint
    if full_size and args.device is None and resolve_device(None).type == "cpu":
        raise UserError("no GPU here, and the full-size model on CPU needs ~17 GB and hours: "
                        "pass --tiny, or --device cpu to insist")
    model = load_bench_model(tiny=args.tiny, checkpoint=args.checkpoint, device=args.device,
                                   dtype=args.dtype, trainable=training, max_pixels=args.max_pixels,
                                   quantize=getattr(args, "quantize", None))
    if training:
        report = benchmark_training(model, settings)
        text = format_train_report(report)
    else:
        report = benchmark_captioning(model, settings)
        text = format_caption_report(report)
    report["command"] = command_line(args)
    report["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print(text)
    if args.out:
        write_json(report, args.out)
        print(f"report written to {args.out}")
    return 0


def run_preprocess(args: argparse.Namespace) -> int:
    from clip_vlm_core.bench.preprocess import benchmark_preprocessing, preprocessing_captioner
    from clip_vlm_core.bench.report import format_preprocess_report, write_json
    from clip_vlm_core.bench.settings import PreprocessBenchSettings

    settings = PreprocessBenchSettings(pairs=args.pairs, warmup=args.warmup, iters=args.iters)
    captioner, source = preprocessing_captioner(args.tiny, args.checkpoint, args.device, args.max_pixels)
    report = benchmark_preprocessing(captioner, settings, source)
    report["command"] = command_line(args)
    report["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print(format_preprocess_report(report))
    if args.out:
        write_json(report, args.out)
        print(f"report written to {args.out}")
    return 0


def run_memory(args: argparse.Namespace) -> int:
    from clip_vlm_core.bench.measure import environment
    from clip_vlm_core.bench.memory import MemoryRun, format_memory_report, measure
    from clip_vlm_core.bench.report import write_json
    from clip_vlm_core.errors import UserError
    from clip_vlm_core.limits import MAX_BATCH_SIZE

    if not 1 <= args.batch <= MAX_BATCH_SIZE:
        raise UserError(f"--batch must be 1 to {MAX_BATCH_SIZE}, got {args.batch}")
    if not 1 <= args.caption_tokens <= 4096:
        raise UserError(f"--caption-tokens must be 1 to 4096, got {args.caption_tokens}")
    import torch

    results = [measure(MemoryRun(size=size, batch=args.batch, caption_tokens=args.caption_tokens,
                                 checkpointing=args.checkpointing, optimizer=args.optimizer)) for size in args.sizes]
    report = {"benchmark": "memory", "environment": environment(torch.device("cpu")), "results": results,
              "command": command_line(args), "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    print(format_memory_report(results))
    env = report['environment']
    print(f"machine: {env['device']}, {env['cpu_cores']} cores; measured: peak resident memory (VmHWM) over the "
          f"baseline after imports, in a child process per size")
    if args.out:
        write_json(report, args.out)
        print(f"report written to {args.out}")
    return 0


def run_surround(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from clip_vlm_core.bench.measure import environment
    from clip_vlm_core.bench.report import write_json
    from clip_vlm_core.bench.surround import STAGES, benchmark_surround, full_size_arithmetic
    from clip_vlm_core.config import CaptionerConfig
    from clip_vlm_core.errors import UserError
    from clip_vlm_core.model.tiny import save_tiny_base_models, tiny_captioner_config

    CaptionerConfig(history_frames=args.history)  # its bounds, said before any model is built
    if args.iters < 1 or args.warmup < 0 or args.max_new_tokens < 1:
        raise UserError("--iters and --max-new-tokens must be at least 1, --warmup at least 0")
    with tempfile.TemporaryDirectory(prefix="clip-vlm-bench-") as folder:
        config = tiny_captioner_config(save_tiny_base_models(Path(folder) / "base", seed=0))
        measured = benchmark_surround(config, args.history, args.iters, args.warmup, args.max_new_tokens,
                                      patch=args.patch)
    arithmetic = full_size_arithmetic(args.history)
    env = environment(torch.device("cpu"))
    print(f"tiny architecture on {env.get('device', 'cpu')}, {args.max_new_tokens} new tokens, median of "
          f"{args.iters} captions (ms)")
    print(f"{'layout':<40}{''.join(f'{s:>12}' for s in STAGES)}{'total':>10}{'ratio':>8}{'cached':>10}{'ratio':>8}")
    for name, row in measured.items():
        print(f"{name:<40}{''.join(f'{row[s]:>12.1f}' for s in STAGES)}{row['total']:>10.1f}{row['ratio']:>8.2f}"
              f"{row['total_cached']:>10.1f}{row['ratio_cached']:>8.2f}")
    print("\nfull size (Qwen2.5-VL-3B + ViT-L/14 pooled, 480 visual tokens a view), per caption")
    print(f"{'layout':<40}{'Qwen tokens':>12}{'CLIP tokens':>12}{'GFLOPs':>10}{'ratio':>8}{'cached':>10}{'ratio':>8}")
    for name, row in arithmetic.items():
        print(f"{name:<40}{row['qwen_visual_tokens']:>12}{row['clip_memory_tokens']:>12}{row['total_gflops']:>10.0f}"
              f"{row['ratio']:>8.3f}{row['total_gflops_cached']:>10.0f}{row['ratio_cached']:>8.3f}")
    report = {"measured_ms": measured, "full_size": arithmetic, "environment": env, "command": command_line(args),
              "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if args.out:
        write_json(report, args.out)
        print(f"report written to {args.out}")
    return 0
