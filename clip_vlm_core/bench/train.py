"""`bench train`: training throughput of connector + LoRA, and what the two memory/speed levers buy.

One training step is forward + backward + AdamW on the trainable parameters (connector + LoRA), at each
batch size, with and without
- cached frozen-encoder outputs: Qwen's vision tower and OpenCLIP are frozen, so their outputs can be
  computed once per frame offline and fed to the model as `visual_embeds=` / `clip_tokens=`;
- gradient checkpointing of the language model: activations are recomputed in backward instead of kept.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import torch

from clip_vlm_core.bench.measure import environment, peak_memory_mib, reset_peak_memory, summary_ms, timed
from clip_vlm_core.bench.settings import TrainBenchSettings
from clip_vlm_core.bench.subject import BenchModel
from clip_vlm_core.model.vision_attention import enable_varlen_vision_attention
from clip_vlm_core.progress import progress_bar
from clip_vlm_core.train_setup import make_optimizer


def benchmark_training(bench: BenchModel, settings: TrainBenchSettings) -> dict[str, Any]:
    """Time training steps for every (batch size, cached encoders, checkpointing) combination."""
    trainable = [p for p in bench.model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the benchmarked model has no trainable parameters: load it with trainable=True")
    # The vision tower is frozen and runs forward only: its packed attention applies to training as well.
    vision_why_not = enable_varlen_vision_attention(bench.model.base_qwen)
    combos = list(itertools.product(settings.batch_sizes, settings.cached_encoders, settings.gradient_checkpointing))
    results = [
        _time_configuration(bench, settings, trainable, *combo)
        for combo in progress_bar(combos, desc="train bench", unit="config")
    ]
    return {
        "benchmark": "train",
        "environment": environment(bench.device),
        "model": bench.describe(),
        "settings": dataclasses.asdict(settings),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "vision_attention": f"sdpa per window ({vision_why_not})" if vision_why_not else "flash varlen",
        "results": results,
    }


def set_gradient_checkpointing(bench: BenchModel, enabled: bool) -> None:
    qwen = bench.model.base_qwen
    if enabled:
        # Non-reentrant: the frozen embeddings' outputs need no grad for recomputation to reach LoRA.
        qwen.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif qwen.is_activation_checkpointing:
        qwen.activation_checkpointing_disable()


def cache_encoder_outputs(bench: BenchModel, inputs: dict[str, Any]) -> dict[str, Any]:
    """The same step's inputs with the frozen encoders' outputs in place of their pixels."""
    cached = dict(inputs)
    with torch.no_grad():
        cached["visual_embeds"] = bench.model.encode_visual(cached.pop("pixel_values"), inputs["image_grid_thw"])
        cached["clip_tokens"] = bench.model.clip(cached.pop("clip_pixels"))
    return cached


def _time_steps(
    bench: BenchModel, inputs: dict[str, Any], optimizer: torch.optim.Optimizer, settings: TrainBenchSettings
) -> list[float]:
    def step() -> float:
        loss = bench.model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(settings.warmup):
        step()
    reset_peak_memory(bench.device)
    return [timed(step, bench.device)[0] for _ in range(settings.iters)]


def _time_configuration(
    bench: BenchModel,
    settings: TrainBenchSettings,
    trainable: list[torch.nn.Parameter],
    batch_size: int,
    cached: bool,
    checkpointing: bool,
) -> dict[str, Any]:
    row: dict[str, Any] = {"batch_size": batch_size, "cached_encoders": cached, "gradient_checkpointing": checkpointing}
    set_gradient_checkpointing(bench, checkpointing)
    bench.model.train(True)
    try:
        inputs = bench.make_inputs(batch_size, settings.caption_tokens)
        row["tokens_per_sample"] = int(inputs["input_ids"].shape[1])
        if cached:
            inputs = cache_encoder_outputs(bench, inputs)
        # A fresh optimizer per configuration, so each peak memory includes the AdamW state it would have.
        optimizer = make_optimizer([{"params": trainable, "lr": settings.learning_rate}], settings)
        seconds = _time_steps(bench, inputs, optimizer, settings)
    except torch.cuda.OutOfMemoryError:
        row["status"] = "out of memory"
        return row
    finally:
        bench.model.train(False)
        set_gradient_checkpointing(bench, False)
        for param in trainable:
            param.grad = None
        if bench.device.type == "cuda":
            torch.cuda.empty_cache()
    step_ms = summary_ms(seconds)
    row.update(
        status="ok",
        step_ms_p50=step_ms["p50"],
        step_ms_p95=step_ms["p95"],
        step_ms_mean=step_ms["mean"],
        # Throughput over all the timed steps (batch x steps / their total time), so a slow step counts:
        # it is batch / the mean step, not batch / p50 (report.THROUGHPUT_NOTE says so beside the table).
        samples_per_s=batch_size / (step_ms["mean"] / 1000),
        peak_gpu_memory_mib=peak_memory_mib(bench.device),
    )
    return row
