"""`bench caption`: how fast the captioner describes scenes, per batch size.

Every caption is forced to exactly `max_new_tokens` tokens (min_new_tokens = max_new_tokens, so EOS
cannot end it early) and warm-up runs are not counted, so runs on different machines compare.
Each run starts from JPEG bytes (1600x900 camera-like frames, different in every run), so every
figure but the per-token decode time includes preprocessing, whose own time is reported beside it.

    preprocessing         JPEG bytes to model-ready tensors on the device, the captioner's way
    time to first token   preprocessing, then from calling generate() to the first token: both
                          vision encoders, the connector and the prefill
    decode per token      mean time of each later token (stamped from inside generate()), median of runs
    bandwidth bound       language-model weight bytes / the device's measured copy bandwidth: the least
                          time a decode step can take, since every step reads every weight once
                          (KV-cache reads, which grow with batch and prompt, come on top)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from clip_vlm_core.bench.frames import camera_samples
from clip_vlm_core.bench.measure import (
    copy_bandwidth_gb_s,
    environment,
    peak_memory_mib,
    reset_peak_memory,
    summary_ms,
    synchronize,
    timed,
)
from clip_vlm_core.bench.settings import CaptionBenchSettings
from clip_vlm_core.bench.subject import BenchModel
from clip_vlm_core.config import DecodingConfig
from clip_vlm_core.errors import UserError
from clip_vlm_core.latency import percentile
from clip_vlm_core.model.inference import optimize_for_inference
from clip_vlm_core.progress import progress_bar

DISTINCT_ROUNDS = 4  # different frames per run, so no decoder or cache sees the same bytes twice in a row


def language_model_bytes(bench: BenchModel, lora_merged: bool = False) -> int:
    """Bytes of the weights one decode step reads: the language model (LoRA included unless merged) and
    its head.

    The vision tower runs once per caption, in the prefill; tied embeddings are counted once, as the
    output head that reads all of them every step.
    """
    return sum(
        p.numel() * p.element_size()
        for n, p in bench.model.qwen.named_parameters()
        if ".visual." not in n and not (lora_merged and ".lora_" in n)
    )


def benchmark_captioning(bench: BenchModel, settings: CaptionBenchSettings) -> dict[str, Any]:
    """Time captioning at each batch size; the report as a JSON-ready dict."""
    if settings.static_cache and bench.device.type != "cuda":
        raise UserError("--compile (static KV cache + torch.compile) needs a CUDA GPU")
    bench.model.train(False)
    inference = optimize_for_inference(bench.model, settings.decoder, settings.vision_attention, settings.merge_lora)
    bandwidth = copy_bandwidth_gb_s(bench.device)
    weight_bytes = language_model_bytes(bench, lora_merged=inference["lora"].startswith("merged"))
    bound_ms = weight_bytes / (bandwidth * 1e9) * 1000
    results = []
    for batch_size in progress_bar(settings.batch_sizes, desc="caption bench", unit="batch size"):
        row = _time_batch_size(bench, settings, batch_size)
        if row.get("decode_ms_per_token") is not None:
            row["decode_to_bound_ratio"] = row["decode_ms_per_token"] / bound_ms
        results.append(row)
    return {
        "benchmark": "caption",
        "environment": environment(bench.device),
        "model": bench.describe(),
        "settings": dataclasses.asdict(settings),
        "inference": inference,
        "copy_bandwidth_gb_s": bandwidth,
        "language_model_weight_bytes": weight_bytes,
        "bandwidth_bound_ms_per_token": bound_ms,
        "results": results,
    }


class TokenClock:
    """Stamps the moment each new token exists, from inside generate() (stopping criteria run once per
    step, after the token is chosen), so one run yields time to first token, decode rate and latency."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def start(self) -> None:
        synchronize(self.device)
        self.stamps = [time.perf_counter()]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        synchronize(self.device)  # generate() waits on the GPU every step anyway to check for EOS
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def split(self) -> tuple[float, float, float]:
        """(time to first token, mean time per later token, whole caption) in seconds."""
        first = self.stamps[1] - self.stamps[0]
        per_token = (self.stamps[-1] - self.stamps[1]) / (len(self.stamps) - 2)
        return first, per_token, self.stamps[-1] - self.stamps[0]


def _time_batch_size(bench: BenchModel, settings: CaptionBenchSettings, batch_size: int) -> dict[str, Any]:
    from transformers import StoppingCriteriaList

    rounds = [camera_samples(bench.views, batch_size, seed) for seed in range(DISTINCT_ROUNDS)]
    state: dict[str, Any] = {"run": 0}
    tokens = settings.max_new_tokens
    clock = TokenClock(bench.device)
    extra = {"cache_implementation": "static"} if settings.static_cache else {}

    def prepare() -> tuple[float, dict[str, Any]]:
        """Fresh inputs from this run's JPEG bytes, and how long making them took."""
        state["run"] += 1
        state.pop("inputs", None)  # the last run's tensors go before the new ones are made
        seconds, state["inputs"] = timed(lambda: bench.prepare_frames(rounds[state["run"] % DISTINCT_ROUNDS]),
                                         bench.device)
        return seconds, state["inputs"]

    def generate(new_tokens: int, **more: Any) -> torch.Tensor:
        # Captions of exactly `new_tokens` tokens: the end token is forbidden before then.
        decoding = DecodingConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  eos_token_ids=(bench.eos_token_id,))
        return bench.model.generate(**state["inputs"], decoding=decoding, pad_token_id=bench.pad_token_id, **more)

    def checked(out: torch.Tensor) -> torch.Tensor:
        if out.shape != (batch_size, tokens):  # a shorter caption would make the timings meaningless
            raise RuntimeError(f"generate() returned {tuple(out.shape)} tokens, expected {(batch_size, tokens)}")
        return out

    def caption_once_static() -> tuple[float, float, float]:
        """The static decoder takes no stopping criteria to stamp tokens with: time to first token is a
        one-token caption's latency, and decoding is the rest of a full caption's, per later token
        (both from the same prepared inputs). The full caption comes first, straight after its inputs
        are made, as a caller's one call would: whatever the first call after fresh inputs pays lands in
        the caption latency, not in a time to first token that would then exceed it."""
        synchronize(bench.device)
        start = time.perf_counter()
        checked(generate(tokens))
        synchronize(bench.device)
        middle = time.perf_counter()
        generate(1)
        synchronize(bench.device)
        latency, ttft = middle - start, time.perf_counter() - middle
        return ttft, (latency - ttft) / (tokens - 1), latency

    def generate_once() -> tuple[float, float, float]:
        if bench.model.fast_decoder is not None:
            return caption_once_static()
        clock.start()
        checked(generate(tokens, stopping_criteria=StoppingCriteriaList([clock]), **extra))
        synchronize(bench.device)
        clock.stamps[-1] = time.perf_counter()  # the caption is done when generate() returns it
        return clock.split()

    def caption_once() -> tuple[float, float, float, float]:
        """(preprocessing, time to first token, per later token, whole caption), preprocessing included
        in the first-token and whole-caption times."""
        prep, _ = prepare()
        first, per_token, whole = generate_once()
        return prep, prep + first, per_token, prep + whole

    try:
        for _ in range(settings.warmup):
            caption_once()
        reset_peak_memory(bench.device)
        runs = [caption_once() for _ in range(settings.iters)]
    except torch.cuda.OutOfMemoryError:
        state.clear()
        torch.cuda.empty_cache()
        return {"batch_size": batch_size, "status": "out of memory"}
    state.clear()
    prep_ms, first_ms, latency_ms = (summary_ms([r[i] for r in runs]) for i in (0, 1, 3))
    return {
        "batch_size": batch_size,
        "status": "ok",
        "preprocess_ms_p50": prep_ms["p50"],
        "preprocess_share": prep_ms["p50"] / latency_ms["p50"],
        "time_to_first_token_ms_p50": first_ms["p50"],
        "time_to_first_token_ms_p95": first_ms["p95"],
        "decode_ms_per_token": percentile([r[2] * 1000 for r in runs], 50),
        "caption_latency_ms_p50": latency_ms["p50"],
        "caption_latency_ms_p95": latency_ms["p95"],
        "caption_latency_ms_mean": latency_ms["mean"],
        "captions_per_s": batch_size / (latency_ms["mean"] / 1000),
        "peak_gpu_memory_mib": peak_memory_mib(bench.device),
    }
