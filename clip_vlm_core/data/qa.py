"""Question-answer pairs about keyframes: the JSONL files `clip-vlm data build --qa` brings in.

One pair per line, keyed by nuScenes sample token, as captions are:

    {"token": "<sample token>", "question": "What colour is the vehicle ahead?", "answer": "red",
     "type": "front.vehicle_colour"}

`type` is optional; evaluation reports accuracy per type (pairs without one count as "untyped"). The
synthetic world writes such files (qa.jsonl, qa_heldout.jsonl); real QA data is converted to this shape.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from clip_vlm_core.errors import UserError
from clip_vlm_core.limits import check_question
from clip_vlm_core.paths import regular_file

UNTYPED = "untyped"


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
        # Trained on and asked as the node and `ask` ask: the same limits (length, no chat-template tokens).
        question = check_question(raw["question"], f"{where}: the question")
        kind = raw.get("type", UNTYPED)
        if not isinstance(kind, str) or not kind.strip():
            raise UserError(f"{where} has a type that is not a non-empty string")
        return cls(question, raw["answer"].strip(), kind.strip())


def load_qa_files(paths: Iterable[str | Path]) -> dict[str, list[QAPair]]:
    """Every pair of the files by sample token, in file and line order (a token may have many)."""
    pairs: dict[str, list[QAPair]] = defaultdict(list)
    for path in map(Path, paths):
        regular_file(path, "question-answer file")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"question-answer file {path} cannot be read ({exc})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"question-answer file {path} line {n}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where} is not valid JSON ({exc})") from None
            token = raw.get("token") if isinstance(raw, dict) else None
            if not isinstance(token, str) or not token:
                raise UserError(f"{where} has no sample 'token'")
            pairs[token].append(QAPair.from_dict(raw, where))
    return dict(pairs)
