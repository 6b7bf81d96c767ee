"""Validation: the validation items' loss weighed both ways, one of which is the training objective.

`optim.loss_weighting` says how training weighs its loss: "token" (every target token alike) or "sample"
(each item's mean over its tokens, items alike). Validation measures both, so the curves compare: the
training objective's figure picks best/ and stops early (train.py), the other is logged beside it.
"""

from __future__ import annotations

import torch

from clip_vlm_core.model.loss import sample_mean_loss, target_items, target_tokens, token_mean_loss
from clip_vlm_core.train_config import RunConfig

WEIGHTINGS = ("sample", "token")  # optim.loss_weighting's values: validation measures both


@torch.no_grad()
def validation_losses(model, dataset, collate, config: RunConfig, accelerator) -> dict[str, float]:
    """The validation items' loss both ways, across processes: "token", the mean over every target token;
    "sample", each item's mean over its tokens, averaged over items. The training objective
    (optim.loss_weighting) is the one that picks best/ and stops early; the other is logged beside it."""
    from torch.utils.data import DataLoader

    loader = accelerator.prepare_data_loader(
        DataLoader(dataset, batch_size=config.optim.batch_size, collate_fn=collate, shuffle=False,
                   generator=torch.Generator().manual_seed(0))  # leaves the global RNG (dropout) alone
    )
    model.eval()
    sums = {w: torch.zeros((), device=accelerator.device, dtype=torch.float64) for w in WEIGHTINGS}
    counts = {w: torch.zeros((), device=accelerator.device, dtype=torch.float64) for w in WEIGHTINGS}
    for batch in loader:
        out = model(**batch)
        tokens, items = target_tokens(batch["labels"]), target_items(batch["labels"])
        sums["token"] += token_mean_loss(out.logits, batch["labels"]).double() * tokens
        counts["token"] += tokens
        if items:
            sums["sample"] += sample_mean_loss(out.logits, batch["labels"]).double() * items
            counts["sample"] += items
    losses = {}
    for weighting in WEIGHTINGS:
        total, count = accelerator.reduce(sums[weighting], "sum"), accelerator.reduce(counts[weighting], "sum")
        losses[weighting] = (total / count.clamp(min=1)).item()
    return losses
