"""Question-answering accuracy: exact match after normalisation, overall and per question type.

Normalisation is SQuAD's: lowercase, punctuation and the articles a/an/the removed, whitespace collapsed,
so "The left lane." matches "left lane" but "left" does not. Next to each type's accuracy stands its
chance level, the share of its most common true answer: what a model that never looks would score by
always giving that answer. A blanked view should bring the types it alone shows down to about that.
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from clip_vlm_core.errors import UserError
from clip_vlm_core.limits import MAX_NEW_TOKENS

DEFAULT_MAX_ANSWER_TOKENS = 16  # the synthetic answers are 1-3 tokens; "front-left lane, two cars" fits too


def check_answer_tokens(max_answer_tokens: int, name: str = "max_answer_tokens") -> None:
    """An answer's token limit within the decoder's own bounds, or one sentence saying why not."""
    whole = isinstance(max_answer_tokens, int) and not isinstance(max_answer_tokens, bool)
    if not whole or not 1 <= max_answer_tokens <= MAX_NEW_TOKENS:
        raise UserError(f"{name} must be a whole number from 1 to {MAX_NEW_TOKENS}, got {max_answer_tokens!r}")


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answers_match(reference: str, prediction: str) -> bool:
    return normalise_answer(reference) == normalise_answer(prediction)


def qa_accuracy(types: Sequence[str], references: Sequence[str], predictions: Sequence[str]) -> dict[str, Any]:
    """{"accuracy", "questions", "per_type": {type: {"accuracy", "chance", "questions"}}}; {} for no questions."""
    if not len(types) == len(references) == len(predictions):
        raise ValueError(f"{len(types)} types, {len(references)} references, {len(predictions)} predictions")
    if not references:
        return {}
    right: dict[str, int] = defaultdict(int)
    truths: dict[str, Counter] = defaultdict(Counter)
    for kind, reference, prediction in zip(types, references, predictions, strict=True):
        truths[kind][normalise_answer(reference)] += 1
        right[kind] += answers_match(reference, prediction)
    per_type = {}
    for kind in sorted(truths):
        asked = sum(truths[kind].values())
        per_type[kind] = {"accuracy": right[kind] / asked, "chance": truths[kind].most_common(1)[0][1] / asked,
                          "questions": asked}
    return {"accuracy": sum(right.values()) / len(references), "questions": len(references), "per_type": per_type}
