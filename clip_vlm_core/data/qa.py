"""Question-answer pairs about keyframes: the JSONL files `clip-vlm data build --qa` brings in.

One pair per line, keyed by nuScenes sample token, as captions are:

    {"token": "<sample token>", "question": "What colour is the vehicle ahead?", "answer": "red",
     "type": "front.vehicle_colour"}

`type` is optional; evaluation reports accuracy per type (pairs without one count as "untyped"). The
synthetic world writes such files (qa.jsonl, qa_heldout.jsonl); real QA data is converted to this shape.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clip_vlm_core.errors import UserError
from clip_vlm_core.jsonin import iter_json_lines
from clip_vlm_core.limits import (
    MAX_QA_LINE_BYTES,
    MAX_QA_PAIRS,
    MAX_QA_PER_KEYFRAME,
    check_answer,
    check_question,
    check_text,
)
from clip_vlm_core.paths import regular_file

UNTYPED = "untyped"
MAX_TYPE_CHARS = 100  # a type is a short name, e.g. front.vehicle_colour


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    type: str = UNTYPED

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: object, where: str) -> QAPair:
        """A pair from its JSON object; anything malformed is one UserError naming `where`."""
        if not isinstance(raw, dict):
            raise UserError(f"{where} must be a JSON object with question and answer")
        for key in ("question", "answer"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise UserError(f"{where} has no {key} (a non-empty string)")
        # Trained on and asked as the node and `ask` ask: the same limits (length, valid text, no
        # chat-template tokens); an answer is a training target, held to the same rule at its own length.
        question = check_question(raw["question"], f"{where}: the question")
        answer = check_answer(raw["answer"], f"{where}: the answer")
        kind = raw.get("type", UNTYPED)
        if not isinstance(kind, str) or not kind.strip():
            raise UserError(f"{where} has a type that is not a non-empty string")
        kind = check_text(kind, f"{where}: the type", MAX_TYPE_CHARS, "a type is a short name such as front.light")
        return cls(question, answer, kind)


@dataclass
class QAData:
    """The pairs of some --qa files by sample token, and those skipped for naming no known sample."""

    pairs: dict[str, list[QAPair]]
    unknown_pairs: int = 0
    unknown_examples: list[str] = field(default_factory=list)  # a few of their tokens


def load_qa_files(paths: Iterable[str | Path], known_tokens: Collection[str] | None = None) -> QAData:
    """Every pair of the files by sample token, in file and line order (a token may have many), read one
    line at a time: a line is at most MAX_QA_LINE_BYTES, a keyframe has at most MAX_QA_PER_KEYFRAME pairs,
    and at most MAX_QA_PAIRS are kept in all. With `known_tokens`, pairs for other tokens are checked,
    counted and dropped, so memory follows the data set, not the files."""
    paths = [Path(p) for p in paths]
    for path in paths:  # every file named is there before any is read
        regular_file(path, "question-answer file")
    data = QAData(defaultdict(list))
    kept = 0
    for path in paths:
        for n, raw in iter_json_lines(path, "question-answer file", MAX_QA_LINE_BYTES):
            where = f"question-answer file {path} line {n}"
            token = raw.get("token") if isinstance(raw, dict) else None
            if not isinstance(token, str) or not token:
                raise UserError(f"{where} has no sample 'token'")
            pair = QAPair.from_dict(raw, where)
            if known_tokens is not None and token not in known_tokens:  # checked, counted, not kept
                data.unknown_pairs += 1
                if len(data.unknown_examples) < 3 and token not in data.unknown_examples:
                    data.unknown_examples.append(token[:64])
                continue
            if len(data.pairs[token]) >= MAX_QA_PER_KEYFRAME:
                raise UserError(f"{where}: sample {token} has more than {MAX_QA_PER_KEYFRAME:,} question-answer pairs, "
                                f"more than a keyframe's questions could be")
            kept += 1
            if kept > MAX_QA_PAIRS:
                raise UserError(f"the question-answer files hold more than {MAX_QA_PAIRS:,} pairs for this data set's "
                                f"samples ({where}); split the data set across manifests")
            data.pairs[token].append(pair)
    data.pairs = dict(data.pairs)
    return data
