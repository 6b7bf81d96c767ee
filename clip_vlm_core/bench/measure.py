"""Measuring instruments: a synchronised clock, peak memory, copy bandwidth, the machine."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from clip_vlm_core.latency import percentile


def synchronize(device: torch.device) -> None:
    """CUDA kernels run asynchronously: a clock read without this times the launch, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds `fn()` took on `device`, and what it returned."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def summary_ms(seconds: list[float]) -> dict[str, float]:
    """p50, p95 and mean of a list of durations, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "mean": statistics.fmean(ms)}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak GPU memory allocated by tensors since the last reset; None where there is no GPU counter."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def copy_bandwidth_gb_s(device: torch.device, nbytes: int | None = None, repeats: int = 5) -> float:
    """Device memory bandwidth as a large tensor copy achieves it (bytes read + bytes written per second).

    This, not the datasheet figure, is the honest roof for decoding: every decode step has to read all
    the language model's weights once.
    """
    if nbytes is None:
        nbytes = 2 * 2**30 if device.type == "cuda" else 256 * 2**20
    seconds = _time_copies(device, nbytes, repeats)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # give the two buffers back before the model needs the memory
    return 2 * nbytes * repeats / seconds / 1e9


def _time_copies(device: torch.device, nbytes: int, repeats: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults and allocator work are not bandwidth
    return timed(lambda: [dst.copy_(src) for _ in range(repeats)], device)[0]


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: device, core count, library versions."""
    import open_clip
    import peft
    import transformers

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        memory = torch.cuda.get_device_properties(device).total_memory / 2**30
        device_name = f"{name} ({memory:.0f} GiB)"
    else:
        device_name = cpu_model_name()
    return {
        "device": device_name,
        "device_type": device.type,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "open_clip": open_clip.__version__,
    }
