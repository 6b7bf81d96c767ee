"""How many threads torch computes with during training on a CPU it may share.

torch starts one thread per core and every step's matrix products wait for the slowest of them: beside
other busy processes (a second training, DDP's other ranks, someone else's job) threads fight them for the
cores and a step takes many times longer (measured: 20 tiny-recipe steps took 664 s at torch's default
beside other work, ~40x less with one thread). So, unless told (`--threads N`, or OMP_NUM_THREADS set),
a run takes its share of the cores it may run on (os.sched_getaffinity: a container's or taskset's limit),
divided by the training processes on this machine, and no more than the cores the rest of the machine
leaves idle, measured over a moment at the start (/proc/stat, less this process's own time). Never fewer
than one.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

SAMPLE_S = 0.5  # how long the machine's load is watched at the start


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    why: str


def usable_cores() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _busy_cpu_seconds() -> float | None:
    """CPU time spent busy by the whole machine so far (Linux's /proc/stat), or None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy / os.sysconf("SC_CLK_TCK")


def cores_busy_elsewhere(seconds: float = SAMPLE_S) -> float:
    """How many cores other processes keep busy now: the machine's busy time over `seconds`, less this
    process's own (the 1-minute load average where /proc/stat is not there)."""
    before, own_before, start = _busy_cpu_seconds(), time.process_time(), time.monotonic()
    if before is None:
        try:
            return max(os.getloadavg()[0] - 1.0, 0.0)
        except (AttributeError, OSError):
            return 0.0
    time.sleep(seconds)
    after, own_after, elapsed = _busy_cpu_seconds(), time.process_time(), time.monotonic() - start
    return max(((after or before) - before - (own_after - own_before)) / max(elapsed, 1e-3), 0.0)


def choose_threads(requested: int | None, local_processes: int, env: dict[str, str] | None = None,
                   busy: float | None = None) -> ThreadChoice:
    """The torch thread count for one training process: `requested` (--threads), else OMP_NUM_THREADS,
    else the cores divided among this machine's training processes, no more than the idle cores."""
    env = os.environ if env is None else env
    if requested:
        return ThreadChoice(requested, "--threads")
    if env.get("OMP_NUM_THREADS", "").strip().isdigit() and int(env["OMP_NUM_THREADS"]) > 0:
        return ThreadChoice(int(env["OMP_NUM_THREADS"]), "OMP_NUM_THREADS")
    cores, processes = usable_cores(), max(local_processes, 1)
    share = max(cores // processes, 1)
    if busy is None:
        busy = cores_busy_elsewhere()
    # The run's other processes measure at the same moment (after the rendezvous), idle: not counted here.
    idle = int(cores - busy + 0.5)
    threads = max(min(share, idle), 1)
    return ThreadChoice(threads, f"{cores} core(s) for {processes} training process(es) on this machine, "
                                 f"~{busy:.1f} busy with other work")


def set_torch_threads(requested: int | None, local_processes: int) -> ThreadChoice:
    """Choose (choose_threads), apply to torch, and say it once per machine."""
    import torch

    choice = choose_threads(requested, local_processes)
    torch.set_num_threads(choice.threads)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        log.info("torch threads: %d per process (%s); --threads N or OMP_NUM_THREADS=N sets it",
                 choice.threads, choice.why)
    return choice
