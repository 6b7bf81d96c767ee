"""`CaptionQAMix`: which items one training epoch visits, captions and questions mixed at a set ratio.

An epoch is every caption once plus `qa_per_caption` question-answer items per caption, drawn without
replacement (cycling through all of them before any repeats), all shuffled together. The ratio is the
recipe's `data.qa_per_caption`: a keyframe has one caption and often ten or more questions, so training
on every item would drown the captions in answers.

Question types may weigh more or less than their share of the file (the recipe's `data.qa_type_weights`,
passed here as one weight per question item): a type that takes many examples to learn ("where is the
bus?" compares the question's vehicle with both views) can be drawn more often without more data. The items
of one weight then share `qa_count * w * n / sum(w * n)` draws (n: how many items have weight w), cycled
through as above, so no item is drawn twice before every item of its weight is drawn once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class CaptionQAMix(Sampler[int]):
    def __init__(self, caption_indices: Sequence[int], qa_indices: Sequence[int], qa_per_caption: float,
                 generator: torch.Generator, qa_weights: Sequence[float] | None = None) -> None:
        self.captions = list(caption_indices)
        self.questions = list(qa_indices)
        self.qa_count = round(qa_per_caption * len(self.captions)) if self.questions else 0
        self.generator = generator
        self.weights = None
        if qa_weights is not None:
            weights = [float(w) for w in qa_weights]
            if len(weights) != len(self.questions):
                raise ValueError(f"{len(weights)} question weights for {len(self.questions)} questions")
            if any(not math.isfinite(w) or w < 0 for w in weights) or (self.questions and not sum(weights)):
                raise ValueError("question weights must be finite, at least 0, and not all 0")
            if len(set(weights)) > 1:  # equal weights draw exactly as no weights do
                self.weights = torch.tensor(weights, dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.captions) + self.qa_count

    def __iter__(self) -> Iterator[int]:
        # Drawn here, not in __init__, as RandomSampler does: with no questions the order is exactly
        # RandomSampler's, and a resumed run that rebuilds the loader draws the same order again.
        chosen = list(self.captions)
        if self.qa_count:
            chosen += [self.questions[i] for i in self._draw_questions().tolist()]
        for i in torch.randperm(len(chosen), generator=self.generator).tolist():
            yield chosen[i]

    def _draw_questions(self) -> torch.Tensor:
        """`qa_count` question positions. Unweighted: all items form one class that takes every draw. Weighted:
        each weight class (the items of one weight) gets its share `qa_count * w * n / sum(w * n)` (largest
        remainders rounded up). Each class is cycled through in random order, never repeating an item before
        all of its class are drawn."""
        if self.weights is None:
            classes, counts = [torch.arange(len(self.questions))], [self.qa_count]
        else:
            classes = [torch.nonzero(self.weights == w).flatten() for w in torch.unique(self.weights)]
            shares = torch.stack([self.weights[c].sum() for c in classes])
            quota = self.qa_count * shares / shares.sum()
            floor = quota.floor().long()
            short = self.qa_count - int(floor.sum())
            floor[torch.argsort(quota - floor, descending=True, stable=True)[:short]] += 1
            counts = floor.tolist()
        drawn = []
        for members, count in zip(classes, counts, strict=True):
            if count:
                rounds = -(-count // len(members))
                order = torch.cat([torch.randperm(len(members), generator=self.generator) for _ in range(rounds)])
                drawn.append(members[order[:count]])
        return torch.cat(drawn)
