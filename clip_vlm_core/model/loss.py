"""The caption loss: cross-entropy over target tokens only, averaged per token or per sample.

Labels mark target tokens with their id and everything else (prompt, images, padding) with IGNORE_INDEX.
Prompts are left-padded, so every row's target sits at its end and the model needs logits only for the
trailing columns: `logits` here are those trailing positions (`trailing_logits_needed` says how many),
and position t predicts label t + 1, as in any causal language model.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # the label of every position that is not a target token (torch's cross_entropy default)


def trailing_logits_needed(labels: torch.Tensor) -> int:
    """How many trailing positions' logits the loss reads: from just before the first labelled column on."""
    labelled = (labels != IGNORE_INDEX).any(dim=0)
    first = max(int(labelled.int().argmax()), 1) if bool(labelled.any()) else 1
    return labels.shape[1] - first + 1


def _aligned(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions [B, T, V] and the targets [B, T] they predict, for logits of the trailing positions."""
    if logits.shape[1] > labels.shape[1]:
        raise ValueError(f"{logits.shape[1]} positions of logits for {labels.shape[1]} labels")
    first = labels.shape[1] - logits.shape[1] + 1
    return logits[:, :-1].float(), labels[:, first:]


def token_mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean loss over every target token of the batch: a 40-token caption outweighs a 2-token answer."""
    predictions, targets = _aligned(logits, labels)
    return torch.nn.functional.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1),
                                             ignore_index=IGNORE_INDEX)


def sample_mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's mean loss over its target tokens, averaged over rows with targets: a short answer weighs
    as much as a long caption."""
    predictions, targets = _aligned(logits, labels)
    token_loss = torch.nn.functional.cross_entropy(predictions.transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                                   reduction="none")
    mask = targets != IGNORE_INDEX
    rows = mask.any(dim=1)
    return ((token_loss * mask).sum(dim=1)[rows] / mask.sum(dim=1)[rows]).mean()


def target_tokens(labels: torch.Tensor) -> torch.Tensor:
    """How many tokens the loss is taken over (a validation mean weighs each batch by it)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def target_items(labels: torch.Tensor) -> int:
    """How many rows have target tokens (a per-sample validation mean weighs each batch by it)."""
    return int((labels[:, 1:] != IGNORE_INDEX).any(dim=1).sum())
