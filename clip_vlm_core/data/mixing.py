"""`CaptionQAMix`: which items one training epoch visits, captions and questions mixed at a set ratio.

An epoch is every caption once plus `qa_per_caption` question-answer items per caption, drawn without
replacement (cycling through all of them before any repeats), all shuffled together. The ratio is the
recipe's `data.qa_per_caption`: a keyframe has one caption and often ten or more questions, so training
on every item would drown the captions in answers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class CaptionQAMix(Sampler[int]):
    def __init__(self, caption_indices: Sequence[int], qa_indices: Sequence[int], qa_per_caption: float,
                 generator: torch.Generator) -> None:
        self.captions = list(caption_indices)
        self.questions = list(qa_indices)
        self.qa_count = round(qa_per_caption * len(self.captions)) if self.questions else 0
        self.generator = generator

    def __len__(self) -> int:
        return len(self.captions) + self.qa_count

    def __iter__(self) -> Iterator[int]:
        # Drawn here, not in __init__, as RandomSampler does: with no questions the order is exactly
        # RandomSampler's, and a resumed run that rebuilds the loader draws the same order again.
        chosen = list(self.captions)
        if self.qa_count:
            rounds = -(-self.qa_count // len(self.questions))
            order = torch.cat([torch.randperm(len(self.questions), generator=self.generator) for _ in range(rounds)])
            chosen += [self.questions[i] for i in order[: self.qa_count].tolist()]
        for i in torch.randperm(len(chosen), generator=self.generator).tolist():
            yield chosen[i]
