"""What TensorBoard shows of a run beyond its curves: the recipe as hyperparameters, and at each validation
the captions of a few fixed validation keyframes beside their references, and the validation questions'
exact-match accuracy (overall and per type) when the validation data has questions.

The model answers from what the loop trains on: raw images, or the frozen encoders' cached outputs when
`data.cache_encoders` keeps the encoders unloaded (the prompt is the cached item's tokens before its
target). Greedy, as `clip-vlm caption` decodes.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from clip_vlm_core.model.loss import IGNORE_INDEX

log = logging.getLogger(__name__)

CAPTIONS_SHOWN = 4  # validation keyframes whose captions are shown at each validation
QUESTIONS_SCORED = 64  # validation questions answered at each validation (the first, in a fixed order)
CAPTION_TOKENS = 64
ANSWER_TOKENS = 16


def hparams(config) -> dict[str, Any]:
    """The recipe flattened to TensorBoard's hparams values (numbers, text, booleans)."""
    flat = {}
    for key, value in config.to_dict().items():
        for name, v in (value.items() if isinstance(value, dict) else [(None, value)]):
            label = f"{key}.{name}" if name else key
            flat[label] = v if isinstance(v, bool | int | float | str) else str(v)
    return flat


def _items(val_set) -> tuple[Any, list[int], list[int]]:
    """The dataset holding the items, and the indices of its captions and questions that validation scores."""
    base, indices = (val_set.dataset, list(val_set.indices)) if hasattr(val_set, "indices") else \
        (val_set, list(range(len(val_set))))
    captions, questions = set(getattr(base, "caption_indices", indices)), set(getattr(base, "qa_indices", []))
    return base, [i for i in indices if i in captions], [i for i in indices if i in questions]


@torch.no_grad()
def _generate(run, base, index: int, max_new_tokens: int) -> tuple[str, str, str]:
    """(instruction, reference, generated text) for validation item `index` of `base`."""
    captioner, model = run.captioner, run.accelerator.unwrap_model(run.model)
    item, source = base[index], getattr(base, "raw", base).items[index]  # the cache's raw item: its words
    tokenizer = captioner.processor.tokenizer
    decoding = captioner.decoding_in_effect(max_new_tokens=max_new_tokens)
    if "images" in item:  # raw items: the captioner's own path
        text = captioner.caption([item["images"]], instructions=[item["instruction"]], decoding=decoding)[0]
        return source.instruction or "(caption)", source.target, text
    ids, labels = item["input_ids"], item["labels"]
    targets = (labels != IGNORE_INDEX).nonzero()
    first = int(targets[0]) if len(targets) else len(ids)
    prompt = ids[:first].to(captioner.device)[None]
    visual = [item[k].to(captioner.device) for k in sorted((k for k in item if k.startswith("visual_")),
                                                          key=lambda k: int(k.split("_", 1)[1]))]
    grid = item["image_grid_thw"].to(captioner.device)
    absent = item["clip_absent"].to(captioner.device) if "clip_absent" in item else None
    mm = model.encoder_outputs(grid, visual_embeds=visual, clip_tokens=item["clip_tokens"].to(captioner.device),
                               clip_absent=absent)
    out = model.qwen.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), image_grid_thw=grid,
                              mm_token_type_ids=item["mm_token_type_ids"][:first].to(captioner.device)[None],
                              mm_encoder_outputs=mm, pad_token_id=tokenizer.pad_token_id, **decoding.generate_kwargs())
    return source.instruction or "(caption)", source.target, \
        tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True).strip()


def log_samples(run, step: int) -> dict[str, float]:
    """Captions and question accuracy to TensorBoard (main process); returns the accuracy scalars logged."""
    from clip_vlm_core.evaluation.qa import answers_match, qa_accuracy

    if not run.accelerator.is_main_process or run.val_set is None or not len(run.val_set):
        return {}
    base, captions, questions = _items(run.val_set)
    was_training = run.model.training
    run.model.eval()
    try:
        rows = [_generate(run, base, i, CAPTION_TOKENS) for i in captions[:CAPTIONS_SHOWN]]
        answers = [(base.qa_types[base.qa_indices.index(i)], *_generate(run, base, i, ANSWER_TOKENS))
                   for i in questions[:QUESTIONS_SCORED]]
    finally:
        run.model.train(was_training)
    writer = run.accelerator.get_tracker("tensorboard", unwrap=True)
    text = "\n\n".join(f"**reference:** {ref}\n\n**model:** {got}" for _, ref, got in rows)
    writer.add_text("samples/captions", text, step)
    metrics = {}
    if answers:
        kinds, _, references, predictions = zip(*answers, strict=True)
        score = qa_accuracy(kinds, references, predictions)  # as `clip-vlm eval` scores them
        metrics["val/question_accuracy"] = score["accuracy"]
        for kind, figures in score["per_type"].items():
            metrics[f"val/question_accuracy/{kind}"] = figures["accuracy"]
        shown = "\n\n".join(f"{'✓' if answers_match(ref, got) else '✗'} *{q}* — reference: {ref}; model: {got}"
                            for _, q, ref, got in answers[:CAPTIONS_SHOWN * 2])
        writer.add_text("samples/answers", shown, step)
        run.accelerator.log(metrics, step=step)
        log.info("step %d validation questions: %.1f %% right (%d answered)", step,
                 100 * metrics["val/question_accuracy"], len(answers))
    return metrics
