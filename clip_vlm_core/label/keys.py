"""What makes a label row unique: the bag's identity, the pair's stamps, and the settings it was made with.

A row's key is (bag identity, each view's stamp, model, decoding settings in effect, prompt, questions),
hashed. A run adds a row only when its key is not in LABELS yet, so a run killed part-way and started
again, or a second run over the same inputs, adds nothing twice.

Bag identity. A bag is known by its content, not its path: `sha256:` + the SHA-256 of its storage files'
bytes, in the order its metadata lists them (each preceded by its length, so files cannot trade bytes).
A bag moved, copied, renamed or reached through a link keeps its identity; a bag cut short, re-recorded
or edited gets a new one. metadata.yaml is left out (`ros2 bag reindex` rewrites it without touching a
message), and so is whether a file is read as a folder or alone. Its cost is one extra read of the bag,
at about 1 GB/s, in the worker that labels it.

Model identity. `sha256:` of the checkpoint's own files (its config, connector and LoRA adapter: what
training made), with the base models as its config names them (hub ids, or folders relative to it); a
bare Qwen2.5-VL folder, the SHA-256 of its configuration and tokenizer files with its weight files'
names and sizes; a hub id, the id. So a checkpoint retrained in place (`runs/x/best`) labels anew, and
one moved or copied does not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip_vlm_core.config import DEFAULT_VIEWS, CaptionerConfig, load_json
from clip_vlm_core.errors import UserError

CHUNK = 1 << 20
KEY_HEX = 32  # 128 bits of SHA-256: no two of 10^15 rows collide by chance
CHECKPOINT_CONFIG = "clip_vlm_config.json"


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _file_digest(path: Path, digest: Any, what: str) -> int:
    """Feed a file's length and bytes to `digest`; return its length."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            digest.update(size.to_bytes(8, "little"))
            while piece := f.read(CHUNK):
                digest.update(piece)
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({exc.strerror})") from None
    return size


def bag_identity(files: Sequence[Path], shown: str) -> str:
    """`sha256:` + the hex SHA-256 of a bag's storage files (see the module's docstring)."""
    digest = hashlib.sha256(b"clip-vlm bag identity 1\n")
    for path in files:
        _file_digest(Path(path), digest, f"bag {shown}: storage file")
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    name: str  # as people know it: 'embedded-default', the checkpoint's path, a hub id
    sha256: str  # 'sha256:...' (see the module's docstring)
    views: tuple[str, ...]  # the views the model reads, in its order


def model_identity(checkpoint: str | None) -> ModelIdentity:
    """Who the model is, without loading it (its views come from its config). `checkpoint` is what
    `--checkpoint` says: None for the embedded model, a folder, or a hub id."""
    from clip_vlm_core.model.model_refs import classify_ref

    ref = classify_ref(checkpoint, "--checkpoint")
    if ref.kind == "hub":
        return ModelIdentity(ref.value, "sha256:" + hashlib.sha256(_canonical(["hub", ref.value])).hexdigest(),
                             DEFAULT_VIEWS)
    folder = Path(ref.path)
    name = f"embedded-{ref.value}" if ref.kind == "embedded" else str(checkpoint)
    if not folder.is_dir():
        raise UserError(f"checkpoint {folder} is a file, not a checkpoint folder")
    digest = hashlib.sha256(b"clip-vlm model identity 1\n")
    if (folder / CHECKPOINT_CONFIG).is_file():
        config = load_json(CaptionerConfig, folder / CHECKPOINT_CONFIG)
        views = config.views
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p, folder))
        for path in files:
            digest.update(_canonical(path.relative_to(folder).as_posix()))
            _file_digest(path, digest, "checkpoint file")
    else:  # a bare Qwen2.5-VL folder: its settings in full, its weights by name and size
        views = DEFAULT_VIEWS
        for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            digest.update(_canonical(path.name))
            if path.suffix in (".json", ".jinja", ".txt"):
                _file_digest(path, digest, "model file")
            else:
                digest.update(path.stat().st_size.to_bytes(8, "little"))
    return ModelIdentity(name, "sha256:" + digest.hexdigest(), tuple(views))


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def settings_id(model_sha256: str, prompt: str, decoding: dict[str, Any], questions: Sequence[str]) -> str:
    """What a label depends on besides its frames: the model, the prompt and decoding settings in effect,
    and the questions asked, as one hex digest."""
    record = {"model": model_sha256, "prompt": prompt, "decoding": decoding, "questions": list(questions)}
    return hashlib.sha256(_canonical(record)).hexdigest()[:KEY_HEX]


def pair_key(bag_id: str, views: Sequence[str], stamps_ns: Sequence[int], settings: str) -> str:
    """A label row's key: the bag, each view's stamp, and the settings (`settings_id`)."""
    record = [bag_id, [[v, int(s)] for v, s in zip(views, stamps_ns, strict=True)], settings]
    return hashlib.sha256(_canonical(record)).hexdigest()[:KEY_HEX]
