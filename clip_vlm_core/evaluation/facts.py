"""Per-fact accuracy for captions of the synthetic scenes, whose captions state known facts.

A synthetic caption is templated from facts (how many cars ahead, what is behind, ...); `parse_facts`
reads them back. Scoring the facts one by one says what the model has learnt to see, which n-gram
metrics blur, and it is what the trainer's proof test checks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any


def fact_accuracy(references: Sequence[str], predictions: Sequence[str]) -> dict[str, Any]:
    """{"facts": {fact: accuracy}, "fact_chance": {fact: share}, "exact_match": rate, "samples": n} over the
    samples whose reference parses as synthetic scene facts; {} when none does (real captions).

    A fact counts as right when the prediction states the reference's value for it; exact match means
    every fact of the reference is right. A fact's chance is the share of its commonest true value: what
    a model that never looks would score by always stating that value.
    """
    from clip_vlm_core.data.synthetic import parse_facts

    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    right: dict[str, int] = {}
    seen: dict[str, int] = {}
    values: dict[str, Counter] = {}
    exact = samples = 0
    for reference, prediction in zip(references, predictions, strict=True):
        truth = parse_facts(reference)
        if not truth:
            continue
        guess = parse_facts(prediction) or {}
        samples += 1
        all_right = True
        for fact, value in truth.items():
            seen[fact] = seen.get(fact, 0) + 1
            values.setdefault(fact, Counter())[value] += 1
            if guess.get(fact) == value:
                right[fact] = right.get(fact, 0) + 1
            else:
                all_right = False
        exact += all_right
    if samples == 0:
        return {}
    return {
        "facts": {fact: right.get(fact, 0) / seen[fact] for fact in sorted(seen)},
        "fact_chance": {fact: values[fact].most_common(1)[0][1] / seen[fact] for fact in sorted(seen)},
        "exact_match": exact / samples,
        "samples": samples,
    }
