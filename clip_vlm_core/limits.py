"""Every user-set number that allocates or steers, with its bounds in one place and one check for all.

A setting is declared with `bounded(default, low, high, why=...)` in its dataclass; `check_fields(obj)`
refuses any value outside (or NaN/inf, or of the wrong type) with one sentence naming the setting, the
bound and why it exists. The CLI, the node's parameter table, eval, the benchmark and the training
recipes all read these, so a limit is stated once.

The upper bounds are ones a real use never needs, chosen for the full-size model (Qwen2.5-VL-3B): one
sequence of a ~3,700-token prompt (two views at Qwen's default pixel budget) holds ~0.14 GB of KV
cache in bf16 (36 layers x 2 KV heads x 128 dims x 2 x 2 bytes = 36 KiB per token).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from clip_vlm_core.errors import UserError

# Decoding. A caption or an answer is tens of tokens; every new token grows each sequence's KV cache.
MAX_NEW_TOKENS = 4096
# Beam search keeps one sequence (and KV cache) per beam; captions gain nothing beyond a few beams.
# `--num-beams 100000` for one pair asked for 14 GB before it was killed.
MAX_NUM_BEAMS = 16
MAX_TOP_K = 1000  # 0 = no top-k cut; a cut wider than 1,000 of 151,936 words keeps all the mass anyway
# Sampling temperature: below 0.01 it is greedy decoding with overflow risk, above 10 uniform noise.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 10.0
# Repetition penalty: outside [0.5, 2] repeated words' logits are more than halved or doubled, and a
# caption either loops or loses the common words ("the", "lane") every sentence needs.
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.5, 2.0
MAX_EOS_TOKEN_IDS = 16

# Batches. Pairs of views captioned (or trained on) in one model call: 256 pairs at full size are
# ~950,000 prompt tokens, more than one 80 GB GPU holds for a forward pass.
MAX_BATCH_SIZE = 256
# Sequences decoded at once (batch x beams): 256 of them hold ~35 GB of KV cache at full size.
MAX_SEQUENCES = 256

# Questions (`clip-vlm ask`, the node's scene_question). A question is a sentence or two; 1,000 characters
# (~250 tokens) is beyond any, while a megabyte string would be ~250,000 prompt tokens in one forward pass.
MAX_QUESTION_CHARS = 1000


@dataclass(frozen=True)
class Bound:
    """The values a numeric setting may take, and why (said when one is refused)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is excluded
    high_open: bool = False
    why: str = ""

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        low = None if self.low is None else f"{'greater than' if self.low_open else 'at least'} {number(self.low)}"
        high = None if self.high is None else f"{'less than' if self.high_open else 'at most'} {number(self.high)}"
        return " and ".join(part for part in (low, high) if part)


def number(value: float) -> str:
    """A bound or a value as people write it: 4,096 and 12,845,056, but 0.01 and 1e-05."""
    if math.isfinite(value) and float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:g}"


def bounded(default: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False, why: str = "") -> Any:
    """A dataclass field whose value `check_fields` keeps within [low, high] (ends open where asked)."""
    return dataclasses.field(default=default, metadata={"bound": Bound(low, high, low_open, high_open, why)})


def one_of(default: str, choices: tuple[str, ...]) -> Any:
    """A dataclass field that must be one of `choices`."""
    return dataclasses.field(default=default, metadata={"choices": choices})


def bound_of(cls: type, name: str) -> Bound:
    """The bound declared on field `name` of dataclass `cls` (for tables that show or reuse it)."""
    return next(f.metadata["bound"] for f in dataclasses.fields(cls) if f.name == name)


def check_fields(obj: Any, prefix: str = "") -> None:
    """Refuse the first field of dataclass `obj` that breaks its declared type, bound or choices."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = prefix + f.name
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise UserError(f"{name} must be one of {', '.join(map(str, f.metadata['choices']))}, got {value!r}")
        bound: Bound | None = f.metadata.get("bound")
        if bound is None or value is None:
            continue
        check_number(name, value, bound, whole="int" in str(f.type))


def check_number(name: str, value: Any, bound: Bound, whole: bool = False) -> None:
    """One number against its bound: a whole number where one is meant, finite, within the bound."""
    if isinstance(value, bool) or not isinstance(value, int | float) or (whole and not isinstance(value, int)):
        raise UserError(f"{name} must be a{' whole' if whole else ''} number, got {value!r}")
    finite = math.isfinite(value)
    if not finite or not bound.contains(value):
        what = bound.describe()
        if not finite and bound.high is None:  # "at least 1" alone would not refuse infinity in words
            what = f"finite and {what}" if what else "finite"
        why = f" ({bound.why})" if bound.why else ""
        raise UserError(f"{name} must be {what}{why}, got {number(value)}")


def check_batch(batch_size: int, num_beams: int, what: str = "batch size") -> None:
    """A batch of pairs and a beam width whose product (sequences decoded at once) fits the bound."""
    check_number(what, batch_size, Bound(1, MAX_BATCH_SIZE, why="pairs of views in one model call"), whole=True)
    if batch_size * num_beams > MAX_SEQUENCES:
        raise UserError(
            f"{what} {batch_size} x {num_beams} beams is {batch_size * num_beams} sequences decoded at once, more than "
            f"{MAX_SEQUENCES} (each holds its own KV cache: ~0.14 GB at full size); lower one of them"
        )


def check_question(question: Any, what: str = "the question") -> str:
    """A question stripped of surrounding blanks, or one sentence saying why it cannot be asked."""
    if not isinstance(question, str):
        raise UserError(f"{what} must be text, got {type(question).__name__}")
    text = question.strip()
    if not text:
        raise UserError(f"{what} is empty: ask something about the scene")
    if len(text) > MAX_QUESTION_CHARS:
        raise UserError(f"{what} is {len(text):,} characters long, more than {MAX_QUESTION_CHARS:,} "
                        f"(a question is a sentence or two; each character costs prompt tokens)")
    if re.search(r"<\|[^<>|]*\|>", text):  # Qwen's special tokens: <|im_end|>, <|image_pad|>, ...
        raise UserError(f"{what} holds a chat-template token ('<|...|>'), which would rewrite the prompt; "
                        f"ask in words")
    return text


# Bags (`clip-vlm bag info|play`). Every size a bag declares is checked against these before anything is
# read, inflated or allocated; a bag over one is refused in one sentence naming the file and the limit.
# One message: the largest image the node accepts (8192 x 8192 x 3 raw = 192 MiB; 32 MiB encoded) plus
# headroom for its header and for other large messages (a dense point cloud is tens of MB).
MAX_BAG_MESSAGE_BYTES = 256 * 2**20
# One MCAP chunk, inflated: it holds at least one whole message. rosbag2 writes 768 KiB chunks by default.
MAX_BAG_CHUNK_BYTES = 256 * 2**20
# One whole-file-compressed storage file (compression_mode: file), inflated into TMPDIR to be played; it
# must also fit in TMPDIR's free space with MIN_BAG_TMP_FREE_BYTES to spare. Larger ones: decompress them
# once (`ros2 bag convert`, or `zstd -d` and edit metadata.yaml).
MAX_BAG_INFLATED_FILE_BYTES = 2**30
MIN_BAG_TMP_FREE_BYTES = 256 * 2**20
# metadata.yaml: rosbag2 writes ~0.5 KB a topic and ~0.2 KB a file, so 8 MiB is thousands of each.
MAX_BAG_METADATA_BYTES = 8 * 2**20
