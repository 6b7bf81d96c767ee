"""A benchmark report read two ways: a table for people, a JSON file for comparing runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clip_vlm_core import jsonout
from clip_vlm_core.atomic import write_text

NOT_AVAILABLE = "n/a"
# Every per-second figure of a bench is the batch over the MEAN time of the timed runs (items / total time),
# printed beside that mean, so the columns agree; p50 and p95 show the spread.
THROUGHPUT_NOTE = ("{rate} = batch / {what} mean ({what} mean = total time of the timed runs / runs); p50 and p95 "
                   "show the spread: one slow run lifts the mean above the p50, and {rate} falls below batch / p50")


def write_json(report: dict[str, Any], path: Path) -> Path:
    """Write the report atomically (a reader never sees half of it), as strict JSON: a figure that could
    not be measured (NaN, infinite) is null."""
    path = Path(path)
    write_text(path, jsonout.dumps(report, indent=2) + "\n")
    return path


def _quantized(model: dict[str, Any]) -> str:
    counts = {k: v for k, v in (model.get("quantized_layers") or {}).items() if v}
    return ", ".join(f"{v} {k} layers" for k, v in counts.items()) or "not quantized"


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return NOT_AVAILABLE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))] if rows else [
        len(h) for h in header
    ]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def format_header(report: dict[str, Any]) -> str:
    env, model = report["environment"], report["model"]
    cores = f", {env['cpu_cores']} CPU cores" if env.get("cpu_cores") else ""
    lines = [
        f"device: {env['device']}{cores}",
        f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, open_clip {env['open_clip']}",
        f"weights: {model['weights'].upper()} - {model['source']}",
        f"{model['dtype']}, attention {model['attn_implementation']}, views {', '.join(model['views'])}, "
        f"Qwen's input {model['frame_size'][1]}x{model['frame_size'][0]} -> {model['image_tokens_per_view']} image "
        f"tokens per view, prompt {model['prompt_tokens']} tokens",
    ]
    if model["weights"] == "random":
        lines.append("NOTE: random weights of the right shapes - timings hold, captions would be noise")
    return "\n".join(lines)


def format_caption_report(report: dict[str, Any]) -> str:
    settings = report["settings"]
    header = ["batch", "status", "prep p50 ms (share)", "TTFT p50 ms", "decode ms/tok", "latency p50 ms",
              "latency p95 ms", "latency mean ms", "captions/s", "peak GPU MiB", "decode/bound"]
    rows = []
    for r in report["results"]:
        if r["status"] != "ok":
            rows.append([str(r["batch_size"]), r["status"], *[""] * (len(header) - 2)])
            continue
        rows.append([
            str(r["batch_size"]), "ok", f"{_cell(r['preprocess_ms_p50'])} ({100 * r['preprocess_share']:.0f}%)",
            _cell(r["time_to_first_token_ms_p50"]), _cell(r["decode_ms_per_token"], 2),
            _cell(r["caption_latency_ms_p50"]), _cell(r["caption_latency_ms_p95"]),
            _cell(r.get("caption_latency_ms_mean")), _cell(r["captions_per_s"], 2),
            _cell(r["peak_gpu_memory_mib"], 0), _cell(r.get("decode_to_bound_ratio"), 2) + "x",
        ])
    return "\n".join([
        format_header(report),
        f"{settings['max_new_tokens']} new tokens per caption (EOS ignored), {settings['warmup']} warm-up + "
        f"{settings['iters']} timed runs; generate() compiled: {_cell(settings['static_cache'])}",
        "from 1600x900 JPEG bytes: TTFT, latency and captions/s include preprocessing (prep: its p50 and "
        "share of latency p50); decode ms/tok does not",
        "decoder: {decoder}; vision attention: {vision_attention}; LoRA: {lora}".format(**report["inference"]),
        f"copy bandwidth {report['copy_bandwidth_gb_s']:.1f} GB/s; language model "
        f"{report['language_model_weight_bytes'] / 1e9:.3f} GB -> bound {report['bandwidth_bound_ms_per_token']:.3f} "
        "ms per decode step",
        THROUGHPUT_NOTE.format(rate="captions/s", what="latency"),
        "",
        _table(header, rows),
    ])


def format_train_report(report: dict[str, Any]) -> str:
    settings = report["settings"]
    header = ["batch", "cached enc.", "grad ckpt", "status", "tokens/sample", "step p50 ms", "step p95 ms",
              "step mean ms", "samples/s", "peak GPU MiB"]
    rows = []
    for r in report["results"]:
        start = [str(r["batch_size"]), _cell(r["cached_encoders"]), _cell(r["gradient_checkpointing"]), r["status"]]
        if r["status"] != "ok":
            rows.append([*start, *[""] * (len(header) - len(start))])
            continue
        rows.append([*start, str(r["tokens_per_sample"]), _cell(r["step_ms_p50"]), _cell(r.get("step_ms_p95")),
                     _cell(r.get("step_ms_mean")), _cell(r["samples_per_s"], 2), _cell(r["peak_gpu_memory_mib"], 0)])
    return "\n".join([
        format_header(report),
        f"language model {_quantized(report['model'])}; forward + backward + "
        f"{'AdamW8bit' if settings.get('optimizer') == 'adamw8bit' else 'AdamW'} on "
        f"{report['trainable_parameters']:,} trainable parameters (connector + LoRA), "
        f"{settings['caption_tokens']} caption tokens, {settings['warmup']} warm-up + {settings['iters']} timed steps",
        f"vision attention: {report.get('vision_attention', 'n/a')}; logits only over caption positions",
        THROUGHPUT_NOTE.format(rate="samples/s", what="step"),
        "",
        _table(header, rows),
    ])


def format_preprocess_report(report: dict[str, Any]) -> str:
    env, frame, settings = report["environment"], report["frame"], report["settings"]
    cores = f", {env['cpu_cores']} CPU cores" if env.get("cpu_cores") else ""
    tensors = report["tensors"]
    differences = "; ".join(
        f"{name} {t['max_abs_diff']:.4g} ({t['max_uint8_levels']:.2f} uint8 levels, "
        f"{100 * t['fraction_differing']:.2f}% of values differ)"
        for name, t in tensors.items()
    )
    return "\n".join([
        f"device: {env['device']}{cores} ({report['device']})",
        f"torch {env['torch']}, transformers {env['transformers']}, open_clip {env['open_clip']}",
        f"processor: {report['source']}",
        f"frames: {frame['width']}x{frame['height']} JPEG ({frame['jpeg_bytes'] / 1000:.0f} kB) -> Qwen "
        f"{frame['qwen_size'][1]}x{frame['qwen_size'][0]} ({frame['image_tokens_per_view']} tokens per view), "
        f"CLIP {frame['clip_size']}x{frame['clip_size']}; {settings['pairs']} pair(s) per call, "
        f"{settings['warmup']} warm-up + {settings['iters']} timed rounds, interleaved",
        "",
        "JPEG bytes -> model-ready tensors, per pair      p50 ms   p95 ms",
        f"transformers' processor + OpenCLIP transform  {report['transformers_ms_per_pair']:8.1f} "
        f"{report['transformers_ms_per_pair_p95']:8.1f}",
        f"captioner (tensor ops on {report['device']}){' ' * max(0, 19 - len(report['device']))}"
        f"{report['captioner_ms_per_pair']:8.1f} {report['captioner_ms_per_pair_p95']:8.1f}   "
        f"{report['speedup']:.2f}x faster",
        "",
        f"largest difference: {differences}; token ids {'equal' if report['token_ids_equal'] else 'DIFFER'}",
    ])
