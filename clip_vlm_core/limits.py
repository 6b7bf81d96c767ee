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

# Every other text that enters the prompt or a training target passes the same check (`check_text`):
# no chat-template tokens, valid Unicode, and a length beyond any real use. The caption prompt is an
# instruction, as a question is. An answer is a word to a short paragraph; 2,000 characters (~500 tokens)
# is beyond any, while a 1 MB answer made training ask for 68 GB. A caption target may be longer, but no
# longer than the model may generate (MAX_NEW_TOKENS tokens, ~4 characters each): 8,000 characters is
# ~2,000 tokens, beyond NuInteract's joint front-and-back descriptions.
MAX_PROMPT_CHARS = MAX_QUESTION_CHARS
MAX_ANSWER_CHARS = 2000
MAX_CAPTION_CHARS = 8000

# Question-answer data (`data build --qa`), read one line at a time. A line is one pair, a few kB; 4 MiB
# bounds what one line may cost while an over-long answer is still read far enough to be named as such.
# A keyframe with more than 1,000 pairs is not data; 2,000,000 pairs kept for a data set's samples is ~60
# per keyframe of nuScenes trainval (memory ~1 GB); pairs for other samples are counted, not kept.
MAX_QA_LINE_BYTES = 4 << 20
MAX_QA_PER_KEYFRAME = 1000
MAX_QA_PAIRS = 2_000_000
# Manifest rows: one keyframe with up to MAX_QA_PER_KEYFRAME pairs fits in 32 MiB; nuScenes trainval has
# 34,149 keyframes, a manifest of more than 1,000,000 rows is not one.
MAX_MANIFEST_LINE_BYTES = 32 << 20
MAX_MANIFEST_ROWS = 1_000_000

# JSON files (clip_vlm_core.jsonin). No file clip-vlm reads nests more than ~6 levels (tokenizer.json);
# Python's parser fails with RecursionError near 1,000.
MAX_JSON_DEPTH = 64
# Configs, manifest.json, a run's state, adapter_config.json: kilobytes; a long run's trainer state
# (its loss history) a few MB.
MAX_SMALL_JSON_BYTES = 16 << 20
# The JSON files of a model folder: tokenizer.json is 7 MB for Qwen2.5, 33 MB for the largest vocabularies.
MAX_MODEL_JSON_BYTES = 64 << 20
# Training recipes (YAML): a few kilobytes, and no more than 100,000 values (YAML aliases can repeat a
# list a billion times in a few lines).
MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_VALUES = 100_000


def check_text(text: Any, what: str, max_chars: int, why: str) -> str:
    """Text that enters the prompt or a training target (a question, the caption prompt, an answer, a
    caption), stripped of surrounding blanks, or one sentence saying why it cannot: not text, empty, not
    valid Unicode (an undecodable byte or a lone surrogate), longer than `max_chars` (`why` says why that
    is the limit), or holding a chat-template token, which would rewrite the prompt around it."""
    if not isinstance(text, str):
        raise UserError(f"{what} must be text, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise UserError(f"{what} is empty")
    surrogate = re.search(r"[\ud800-\udfff]", stripped)
    if surrogate:
        raise UserError(f"{what} is not valid Unicode text (U+{ord(surrogate[0]):04X} at character "
                        f"{surrogate.start() + 1:,}: a byte that is not UTF-8, or a lone surrogate)")
    if len(stripped) > max_chars:
        raise UserError(f"{what} is {len(stripped):,} characters long, more than {max_chars:,} ({why})")
    if re.search(r"<\|[^<>|]*\|>", stripped):  # Qwen's special tokens: <|im_end|>, <|image_pad|>, ...
        raise UserError(f"{what} holds a chat-template token ('<|...|>'), which would rewrite the prompt; "
                        f"write it in words")
    return stripped


def check_prompt(prompt: Any, what: str = "the prompt") -> str:
    """The caption prompt (an instruction: a checkpoint's, --prompt, the node's prompt parameter)."""
    if isinstance(prompt, str) and not prompt.strip():
        raise UserError(f"{what} is empty: give the instruction the model captions by")
    return check_text(prompt, what, MAX_PROMPT_CHARS,
                      "an instruction is a sentence or two; each character costs prompt tokens")


def check_answer(answer: Any, what: str = "the answer") -> str:
    """A training or reference answer."""
    return check_text(answer, what, MAX_ANSWER_CHARS,
                      "an answer is a word to a short paragraph; each character costs training memory")


def check_caption(caption: Any, what: str = "the caption") -> str:
    """A training or reference caption."""
    return check_text(caption, what, MAX_CAPTION_CHARS,
                      "about 2,000 tokens, half of the longest caption the model may generate")


def size_text(nbytes: int) -> str:
    """A size as people read it: 512 bytes, 64 KiB, 16 MiB, 1.5 GiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            value = nbytes / (1 << shift)
            return f"{value:,.0f} {unit}" if value.is_integer() or value >= 100 else f"{value:.1f} {unit}"
    return f"{nbytes:,} bytes"


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
    if isinstance(question, str) and not question.strip():
        raise UserError(f"{what} is empty: ask something about the scene")
    return check_text(question, what, MAX_QUESTION_CHARS,
                      "a question is a sentence or two; each character costs prompt tokens")


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
