"""Helpers for the hostile-file tests (checkpoints, data files, bags): files that declare huge sizes while taking a few kB of
disk (sparse safetensors, deep JSON), copies of the embedded model to damage, and the real CLI run under
an address-space limit so that anything that did allocate what a file declares would fail."""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from intact import REPO

ASSETS = REPO / "clip_vlm_core" / "assets"
SAMPLES = ASSETS / "samples"
VIEWS = ["--view", f"CAM_FRONT={SAMPLES / 'front.jpg'}", "--view", f"CAM_BACK={SAMPLES / 'back.jpg'}"]
# The real CLI captions with the embedded model in ~2.5 GiB of address space (torch's libraries included):
# 6 GiB leaves room, and is far below any size the hostile files declare.
ADDRESS_SPACE_LIMIT = 6 << 30

_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I32": 4, "I64": 8, "F64": 8, "F8_E4M3": 1}
_TORCH = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int8: "I8", torch.uint8: "U8"}


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor | tuple[str, tuple[int, ...]]]) -> Path:
    """A safetensors file in which a tensor given as (dtype, shape) is declared but never written: the file
    is sparse, so a 16 GB tensor takes no disk. Tensors given as torch tensors are written for real."""
    header, offset, payloads = {}, 0, []
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor):
            dtype, shape = _TORCH[value.dtype], tuple(value.shape)
            payloads.append((offset, value.contiguous().view(torch.uint8).numpy().tobytes()
                             if value.numel() else b""))
        else:
            dtype, shape = value
        size = math.prod(shape) * _BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for start, data in payloads:
            f.seek(8 + len(text) + start)
            f.write(data)
        f.truncate(8 + len(text) + offset)
    return path


def digest(root: Path) -> dict[str, object]:
    """tests/intact.py's digest, for trees holding sparse files that declare gigabytes: a file over 64 MiB
    is known by its size, modification time and the hash of its first MiB (its header), not read whole."""
    entries: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            entries[key] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            entries[key] = "folder"
        elif path.stat().st_size > 64 << 20:
            with open(path, "rb") as f:
                head = hashlib.sha256(f.read(1 << 20)).hexdigest()
            entries[key] = (path.stat().st_size, path.stat().st_mtime_ns, head)
        else:
            entries[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def copy_embedded(tmp: Path) -> Path:
    """A copy of the embedded model and its tiny base models; returns the checkpoint folder."""
    shutil.copytree(ASSETS, tmp / "assets", ignore=shutil.ignore_patterns("samples"))
    return tmp / "assets" / "default_model"


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def deep_json(depth: int = 100_000) -> str:
    """JSON nested `depth` arrays deep: 200 kB of text that makes Python's parser raise RecursionError."""
    return "[" * depth + "]" * depth


def run_limited(*args: str, limit: int = ADDRESS_SPACE_LIMIT, env: Mapping[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """`clip-vlm ARGS` in a fresh process whose address space is capped at `limit` bytes."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-m", "clip_vlm_core", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, preexec_fn=cap, env={**os.environ, **(env or {})})


_PEAK = ("import resource, runpy, sys; sys.argv = ['clip-vlm', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('clip_vlm_core', run_name='__main__')\n"
         "except SystemExit as exc:\n    code = exc.code\nelse:\n    code = 0\n"
         "print('peak-rss-kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
         "sys.exit(code)\n")


def run_measured(*args: str, limit: int = ADDRESS_SPACE_LIMIT,
                 timeout: float = 600) -> tuple[subprocess.CompletedProcess, int]:
    """`clip-vlm ARGS` under the address-space limit, and its peak resident memory in MiB (the last
    stderr line, taken off what is returned)."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([sys.executable, "-c", _PEAK, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, preexec_fn=cap)
    lines = done.stderr.rstrip("\n").split("\n")
    peak = int(lines[-1].split()[-1]) // 1024 if lines and lines[-1].startswith("peak-rss-kb") else -1
    done.stderr = "\n".join(lines[:-1]) + "\n" if peak >= 0 else done.stderr
    return done, peak
