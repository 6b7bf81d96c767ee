"""CPU-bound processes beside a test, for what must hold on a busy machine (delivery, pairing, the demo)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

CPU_BOUND = [sys.executable, "-c", "while True: pass"]


@contextmanager
def cpu_bound_processes(count: int) -> Iterator[list[subprocess.Popen]]:
    """`count` processes spinning a core each while the block runs; killed and reaped when it ends."""
    processes = [subprocess.Popen(CPU_BOUND) for _ in range(count)]
    try:
        yield processes
    finally:
        for process in processes:
            process.kill()
            process.wait()
