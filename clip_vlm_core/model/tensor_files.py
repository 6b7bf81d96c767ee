"""Weight files are judged by their headers before a byte of a tensor is read.

A safetensors file starts with an 8-byte length and a JSON header naming every tensor's dtype, shape and
byte range; a torch.save file is a zip whose directory lists every storage with its size. Both headers are
read here, bounded (clip_vlm_core.jsonin for the JSON), and held against what the declared architecture
expects (`TensorSpec`s; clip_vlm_core.model.checkpoint_limits derives them from the configs): a tensor the
architecture does not have, of another shape, or of a dtype its role does not allow is refused in one
sentence, so a 16 GB tensor in a 64-wide connector costs a header read, not 16 GB of RAM.

Dtypes are allowed per role: trainable weights (connector, LoRA) are floating point and, once read, finite;
frozen base weights may also be quantized (8-bit and 4-bit integer packings, FP8); optimizer state may be
8-bit (bitsandbytes' state1/state2).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from clip_vlm_core.errors import UserError
from clip_vlm_core.jsonin import parse_json
from clip_vlm_core.limits import size_text
from clip_vlm_core.paths import regular_file_info

# Bytes per element of every dtype safetensors writes (sub-byte FP4/FP6 packings are not loaded here).
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
TRAINABLE = frozenset({"F32", "BF16", "F16"})
# bitsandbytes 4-bit (uint8 packing) and LLM.int8 (int8), GPTQ/AWQ (int32 packing), FP8 checkpoints
FROZEN = TRAINABLE | {"F8_E4M3", "F8_E5M2", "U8", "I8", "I32"}
OPTIMIZER_STATE = TRAINABLE | {"U8", "I8"}  # 8-bit optimizers keep uint8/int8 state beside float scales
# A safetensors header lists names, dtypes, shapes and offsets: ~100 bytes a tensor, so ~40 kB for one
# shard of Qwen2.5-VL-3B; 16 MiB is beyond any.
MAX_SAFETENSORS_HEADER_BYTES = 16 << 20
# A torch.save file's pickle holds the structure only (tensors are separate zip entries).
MAX_TORCH_PICKLE_BYTES = 16 << 20

_TORCH_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
                 torch.uint8: "U8", torch.int8: "I8", torch.int32: "I32", torch.int64: "I64", torch.bool: "BOOL"}


def dtype_name(dtype: torch.dtype) -> str:
    """safetensors' name of a torch dtype (F32, BF16, ...)."""
    return _TORCH_DTYPES.get(dtype, str(dtype).removeprefix("torch."))


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a file's header declares it."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES.get(self.dtype, 8)


@dataclass(frozen=True)
class TensorSpec:
    """What the architecture expects of one tensor: its shape and the dtypes its role allows."""

    shape: tuple[int, ...]
    dtypes: frozenset[str] = TRAINABLE


def specs_of(state: Mapping[str, torch.Tensor], dtypes: frozenset[str] = TRAINABLE) -> dict[str, TensorSpec]:
    """The specs of a module's state dict (built from its config, on the meta device or for real)."""
    return {name: TensorSpec(tuple(tensor.shape), dtypes) for name, tensor in state.items()}


def shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(f"{n:,}" for n in shape) + "]"


def _regular_size(path: Path, what: str) -> int:
    return regular_file_info(path, what, missing="is missing").st_size


def read_safetensors_header(path: str | Path, what: str) -> dict[str, TensorInfo]:
    """Every tensor a safetensors file declares, from its header alone, after checking that the header is
    bounded and consistent with the file (offsets inside it, each byte range the size its shape needs).
    `what` names the file's role ("checkpoint file")."""
    path = Path(path)
    size = _regular_size(path, what)
    corrupt = f"{what} {path} is corrupt"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{corrupt} ({size} bytes, shorter than a safetensors header)")
            length = int.from_bytes(head, "little")
            if length > MAX_SAFETENSORS_HEADER_BYTES:
                raise UserError(f"{corrupt} (its header claims {size_text(length)}, more than the "
                                f"{size_text(MAX_SAFETENSORS_HEADER_BYTES)} a header may be)")
            if 8 + length > size:
                raise UserError(f"{corrupt} (its {length:,}-byte header runs past the end of the file)")
            raw = f.read(length)
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({exc.strerror})") from None
    try:
        header = parse_json(raw, f"the header of {what} {path}")
    except UserError as exc:
        raise UserError(f"{corrupt}: {exc}") from None
    if not isinstance(header, dict):
        raise UserError(f"{corrupt} (its header is not a JSON object)")
    data_bytes = size - 8 - length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor_entry(name, entry, data_bytes, corrupt)
    return tensors


def _tensor_entry(name: str, entry: object, data_bytes: int, corrupt: str) -> TensorInfo:
    def whole(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(entry, dict):
        raise UserError(f"{corrupt} (its header entry for tensor {name!r} is not an object)")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise UserError(f"{corrupt} (tensor {name!r} has dtype {dtype!r}, which clip-vlm does not load)")
    if not isinstance(shape, list) or len(shape) > 8 or not all(whole(n) for n in shape):
        raise UserError(f"{corrupt} (tensor {name!r} has no valid shape)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(whole(n) for n in offsets)
            and offsets[0] <= offsets[1] <= data_bytes):
        raise UserError(f"{corrupt} (tensor {name!r} lies outside the file)")
    info = TensorInfo(dtype, tuple(shape))
    if offsets[1] - offsets[0] != info.nbytes:
        raise UserError(f"{corrupt} (tensor {name!r} of shape {shape_text(info.shape)} {dtype} needs "
                        f"{info.nbytes:,} bytes, its header gives it {offsets[1] - offsets[0]:,})")
    return info


def check_tensors(header: Mapping[str, TensorInfo], expected: Mapping[str, TensorSpec], what: str,
                  allow_missing: bool = False, declared: str = "the architecture its config declares") -> None:
    """Refuse, in one sentence, a tensor `expected` does not name, one of another shape or of a dtype its
    role does not allow, and (unless `allow_missing`) a tensor `expected` names that is not there.
    `what` names the file ("checkpoint file runs/x/best/connector.safetensors")."""
    for name, info in header.items():
        spec = expected.get(name)
        if spec is None:
            raise UserError(f"{what} holds a tensor {name!r} {shape_text(info.shape)} that {declared} does not have")
        if info.dtype not in spec.dtypes:
            raise UserError(f"{what} holds tensor {name!r} as {info.dtype}; as a "
                            f"{'trainable' if spec.dtypes <= TRAINABLE else 'stored'} weight it must be one of "
                            f"{', '.join(sorted(spec.dtypes))}")
        if info.shape != spec.shape:
            raise UserError(f"{what} holds tensor {name!r} of shape {shape_text(info.shape)}, where {declared} "
                            f"has {shape_text(spec.shape)}")
    missing = [name for name in expected if name not in header]
    if missing and not allow_missing:
        raise UserError(f"{what} lacks tensor(s) {missing[:3]}{' and more' if len(missing) > 3 else ''} that "
                        f"{declared} has")


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Trainable weights (and optimizer state) hold finite numbers: NaN weights caption nothing at all."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{what} holds NaN or infinite values in tensor {name!r} (a diverged or damaged "
                            f"checkpoint)")


def load_checked(path: str | Path, expected: Mapping[str, TensorSpec], what: str, finite: bool = True,
                 declared: str = "the architecture its config declares") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, read only after its header matched `expected` (and checked
    finite after reading, unless `finite` is False)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    check_tensors(read_safetensors_header(path, what), expected, f"{what} {path}", declared=declared)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{what} {path} is corrupt ({exc})") from None
    if finite:
        check_finite(tensors, f"{what} {path}")
    return tensors


def check_torch_zip(path: str | Path, what: str, max_storage_bytes: int, max_total_bytes: int) -> None:
    """A torch.save file's directory, before torch.load reads it: a zip of a bounded pickle and storages,
    none larger than `max_storage_bytes`, together at most `max_total_bytes` (both derived by the caller
    from the parameters the state belongs to)."""
    path = Path(path)
    _regular_size(path, what)
    shown = f"{what} {path}"
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"{shown} is corrupt or not a torch.save file ({exc})") from None
    total = 0
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED:
            raise UserError(f"{shown} is not a torch.save file (entry {entry.filename!r} is compressed)")
        if entry.filename.endswith("/data.pkl") and entry.file_size > MAX_TORCH_PICKLE_BYTES:
            raise UserError(f"{shown} holds a {size_text(entry.file_size)} pickle, more than the "
                            f"{size_text(MAX_TORCH_PICKLE_BYTES)} its structure needs")
        if "/data/" in entry.filename:
            if entry.file_size > max_storage_bytes:
                raise UserError(f"{shown} holds a tensor of {size_text(entry.file_size)}, more than the "
                                f"{size_text(max_storage_bytes)} the largest parameter's state needs")
            total += entry.file_size
    if total > max_total_bytes:
        raise UserError(f"{shown} holds {size_text(total)} of tensors, more than the {size_text(max_total_bytes)} "
                        f"the parameters' state needs")
