"""The prompt's token ids, built once per (instruction, image sizes) and reused.

Qwen's processor writes every view's `<|image_pad|>` out as many times as the view has visual tokens
(1,824 for a 1600x900 frame) and tokenizes the result: at full resolution ~3,700 tokens of text per
pair on every call, although the prompt only changes when the instruction or the frame size does.
Here the chat text is tokenized with one placeholder per view, and each placeholder is then repeated
as ids. Placeholders are special tokens, which the tokenizer never merges with their neighbours, so
the ids are the processor's (tests/test_preprocess.py compares them).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from clip_vlm_core.errors import UserError

CACHE_SIZE = 64  # prompts kept: the caption prompt plus recent questions, per frame size


class PromptTokens:
    def __init__(self, processor: Any, prompt_text: Callable[[str | None], str], cache_size: int = CACHE_SIZE) -> None:
        """`prompt_text(instruction)` gives the chat-formatted prompt (None: the caption prompt)."""
        self.tokenizer = processor.tokenizer
        self.prompt_text = prompt_text
        self.image_token_id = int(processor.image_token_id)
        self.video_token_id = int(processor.video_token_id)
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str | None, tuple[int, ...]], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def ids(self, instruction: str | None, image_tokens: Sequence[int], target: str | None = None) -> torch.Tensor:
        """One sample's ids: its prompt (images holding `image_tokens` visual tokens each, in view order),
        then `target` and the end-of-turn token when training."""
        if target is not None:  # captions differ per sample: tokenized with the prompt, as the processor does
            text = self.prompt_text(instruction) + target.strip() + self.tokenizer.eos_token
            return self._expand(text, image_tokens)
        key = (instruction, tuple(image_tokens))
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        ids = self._expand(self.prompt_text(instruction), image_tokens)
        with self._lock:
            self._cache[key] = ids
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return ids

    def batch(self, rows: Sequence[torch.Tensor], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Rows left-padded to one length (generation appends on the right), as the processor pads them."""
        length = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for r, row in enumerate(rows):
            input_ids[r, length - len(row) :] = row
            attention_mask[r, length - len(row) :] = 1
        input_ids = input_ids.to(device, non_blocking=True)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask.to(device, non_blocking=True),
            "mm_token_type_ids": (input_ids == self.image_token_id).long(),
        }

    def _expand(self, text: str, image_tokens: Sequence[int]) -> torch.Tensor:
        ids = torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        placeholders = ids == self.image_token_id
        if int(placeholders.sum()) != len(image_tokens) or bool((ids == self.video_token_id).any()):
            raise UserError(
                f"the prompt must hold exactly one image placeholder per view ({len(image_tokens)}) and no video "
                f"placeholder; an instruction must not contain <|image_pad|> or <|video_pad|>: {text!r}"
            )
        repeats = torch.ones_like(ids)
        repeats[placeholders] = torch.tensor(list(image_tokens), dtype=torch.long)
        return ids.repeat_interleave(repeats)
