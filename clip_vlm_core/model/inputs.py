"""Model inputs: a batch of samples ({view: image}) and their instructions -> the tensors the model takes.

One path for the node, the CLI, evaluation and training: each view's image is taken as a [3, H, W] uint8
tensor without a copy where it can be (or kept encoded and decoded in one batch on the model's device),
resized and normalised as tensor operations (model/preprocess.py), and the chat prompt's token ids are
assembled around each image's visual tokens (model/prompt_ids.py). With target captions, `labels` cover
the caption tokens only.

A model that sees more (CaptionerConfig.context_views, history_frames) also takes, per sample, each context
view's image under its name and the past frames of every view under HISTORY: {view: [oldest, ..., newest]},
history_frames entries a view, None where a frame is missing (not yet seen; a view without an entry has
none). Those frames get CLIP pixels only (`clip_pixels` per sample, per view of views + context_views, per
frame oldest first, the current one last) and `clip_absent` marks the missing ones. A past frame may also be
given as its `ClipTokens`, kept from an earlier call (the node's history, clip_vlm_core.stream.history): it is
not encoded again, its tokens go in as `clip_cached` at the slots `clip_cached_at` name, and `clip_pixels`
then holds the other slots only.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from clip_vlm_core.config import CaptionerConfig
from clip_vlm_core.errors import UserError
from clip_vlm_core.images import EncodedImage, ImageLike, pixels_problem, to_rgb
from clip_vlm_core.model.image_decode import ImageDecodeError, decode_images
from clip_vlm_core.model.loss import IGNORE_INDEX
from clip_vlm_core.model.preprocess import ImagePreprocessor, QwenPixelSpec
from clip_vlm_core.model.prompt_ids import PromptTokens

Sample = Mapping[str, ImageLike | torch.Tensor]
HISTORY = "@history"  # a sample's past frames ('@' is in no camera name)
# One view's image on its way in: a [3, H, W] uint8 RGB tensor, or still encoded (decoded in a batch).
ViewImage = torch.Tensor | EncodedImage


@dataclass(frozen=True)
class ClipTokens:
    """One frame's CLIP tokens ([T, C], as the model's CLIP encoder gave them), kept to be reused as a past
    frame without encoding that frame again (SceneCaptioner.last_clip_tokens gives them)."""

    tokens: torch.Tensor


class ModelInputs:
    def __init__(self, processor: Any, config: CaptionerConfig, clip_pixel_spec: Any) -> None:
        self.processor = processor
        self.config = config
        self.views = config.views
        self.pixel_spec = QwenPixelSpec.of(processor.image_processor)
        self.pixels = ImagePreprocessor(self.pixel_spec, clip_pixel_spec)
        self._caption_prompt = self._chat_prompt(config.prompt)
        self.prompt_tokens = PromptTokens(processor, self.prompt_text)

    # -- the prompt --------------------------------------------------------------------------------
    def prompt_text(self, instruction: str | None) -> str:
        """The chat-formatted prompt around `instruction` (None: the caption prompt)."""
        return self._caption_prompt if instruction is None else self._chat_prompt(instruction)

    def _chat_prompt(self, instruction: str) -> str:
        """Every view's image (labelled), then the instruction, or the instruction first (instruction_first)."""
        text = {"type": "text", "text": instruction}
        content: list[dict[str, str]] = [text] if self.config.instruction_first else []
        for view in self.views:
            if self.config.label_views:
                content.append({"type": "text", "text": f"{view}: "})
            content.append({"type": "image"})
        if not self.config.instruction_first:
            content.append(text)
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # -- the batch ---------------------------------------------------------------------------------
    def images_for(self, batch: Sequence[Sample]) -> list[list[ViewImage]]:
        """Check a batch against the model's views; per sample, in view order, each view's image as a
        [3, H, W] uint8 RGB tensor (a view of the caller's array where it can be) or still encoded."""
        if isinstance(batch, Mapping):
            raise UserError("caption() takes a list of samples ({view: image}), not a single sample")
        if len(batch) == 0:
            raise UserError("the batch is empty: give at least one sample of {view: image}")
        out = []
        for i, sample in enumerate(batch):
            unknown = sorted(set(sample) - set(self.views) - set(self.config.context_views) - {HISTORY})
            if unknown:
                raise UserError(f"sample {i} has unknown view(s) {unknown}; this model reads {list(self.views)}")
            missing = [v for v in self.views if v not in sample]
            if missing:
                raise UserError(f"sample {i} has no image for view(s) {missing}; this model reads {list(self.views)}")
            out.append([_as_view_image(sample[v], f"sample {i} view {v}") for v in self.views])
        return out

    def build(self, batch: Sequence[Sample], targets: Sequence[str] | None, instructions: Sequence[str | None] | None,
              device: torch.device, reuse_output: bool) -> dict[str, torch.Tensor]:
        """The model's inputs for a batch, made on `device` (SceneCaptioner.prepare says what each argument
        means)."""
        images = self.images_for(batch)
        instructions = _one_per_sample(len(images), instructions)
        if targets is not None and (isinstance(targets, str) or len(targets) != len(images)):
            raise ValueError(f"give one target caption per sample: {len(images)} sample(s), {len(targets)} target(s)")
        flat = self._decoded([image for sample in images for image in sample], device)
        views = len(self.views)
        tokens = [self.pixel_spec.tokens(int(image.shape[1]), int(image.shape[2])) for image in flat]
        rows = [self.prompt_tokens.ids(instruction, tokens[i * views : (i + 1) * views],
                                       None if targets is None else targets[i])
                for i, instruction in enumerate(instructions)]
        inputs = self.prompt_tokens.batch(rows)
        if targets is not None:
            inputs["labels"] = self.labels(inputs["input_ids"], targets)
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        pixels = self.pixels(flat, device, reuse_output=reuse_output)
        if self.config.context_views or self.config.history_frames:
            pixels |= self._clip_memory(batch, pixels["clip_pixels"], device)
        return inputs | pixels

    def _clip_memory(self, batch: Sequence[Sample], current: torch.Tensor, device: torch.device
                     ) -> dict[str, torch.Tensor]:
        """CLIP pixels of every (view, frame) of each sample, and which frames are missing ([B, V', F]); past
        frames given as ClipTokens are left out of the pixels and given as `clip_cached` at `clip_cached_at`."""
        views, context = self.views, self.config.context_views
        frames = self.config.history_frames + 1
        slots: list[int | ViewImage | None] = []  # an int: that full view's current frame, already in `current`
        for i, sample in enumerate(batch):
            history = _history_of(sample, (*views, *context), frames - 1, i)
            for v, view in enumerate((*views, *context)):
                slots += history[view]
                if view in views:
                    slots.append(i * len(views) + v)
                else:
                    if view not in sample:
                        raise UserError(f"sample {i} has no image for context view {view}; this model reads "
                                        f"{list(context)} beside {list(views)}")
                    slots.append(_as_view_image(sample[view], f"sample {i} view {view}"))
        absent = torch.tensor([slot is None for slot in slots], device=device).reshape(len(batch), -1, frames)
        cached_at = [k for k, slot in enumerate(slots) if isinstance(slot, ClipTokens)]
        out: dict[str, torch.Tensor] = {}
        if cached_at:
            out["clip_cached"] = torch.stack([slots[k].tokens for k in cached_at]).to(device)
            out["clip_cached_at"] = torch.tensor(cached_at, dtype=torch.long, device=device)
            slots = [slot for slot in slots if not isinstance(slot, ClipTokens)]
        extra = [k for k, slot in enumerate(slots) if slot is not None and not isinstance(slot, int)]
        decoded = self._decoded([slots[k] for k in extra], device, what="a context view or past frame")
        clip = torch.zeros((len(slots), *current.shape[1:]), dtype=current.dtype, device=device)
        if extra:
            clip[extra] = self.pixels.clip_only(decoded, device)
        own = [k for k, slot in enumerate(slots) if isinstance(slot, int)]
        clip[own] = current[[slots[k] for k in own]]
        return out | {"clip_pixels": clip, "clip_absent": absent}

    def labels(self, input_ids: torch.Tensor, targets: Sequence[str]) -> torch.Tensor:
        """Left padding puts each caption (and its end token) at the end of its row: label just those.

        A caption tokenizes the same alone as after the prompt because Qwen2's pre-tokenizer always
        splits after the prompt's final newline (no pattern joins a newline to a following non-space)
        and special tokens are atomic; tests/test_real_weights_settings.py checks punctuation, digits,
        unicode (NFD input included) and leading spaces with both the tiny and the embedded tokenizer.
        """
        tokenizer = self.processor.tokenizer
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, target in enumerate(targets):
            ids = tokenizer(target.strip() + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            span = input_ids[row, -len(ids) :]
            if span.tolist() != ids:  # the caption must tokenize the same alone as in context
                raise ValueError(f"caption tokens of row {row} not found at the end of its input")
            labels[row, -len(ids) :] = span
        return labels

    def _decoded(self, images: list[ViewImage], device: torch.device, what: str | None = None) -> list[torch.Tensor]:
        encoded = [i for i, image in enumerate(images) if isinstance(image, EncodedImage)]
        if not encoded:
            return images  # type: ignore[return-value]
        decoded = decode_images([images[i] for i in encoded], device)
        out = list(images)
        for i, image in zip(encoded, decoded, strict=True):
            if isinstance(image, ImageDecodeError):
                views = len(self.views)
                raise UserError(f"{what}: {image}" if what else f"sample {i // views} view {self.views[i % views]}: {image}")
            out[i] = image
        return out  # type: ignore[return-value]


def _history_of(sample: Sample, views: Sequence[str], frames: int, index: int) -> dict[str, list[ViewImage | None]]:
    """Each view's `frames` past frames in the sample, oldest first (None where missing): a view without an
    entry, or a sample without HISTORY, has none yet."""
    given = sample.get(HISTORY) or {}
    if not isinstance(given, Mapping):
        raise UserError(f"sample {index} {HISTORY} must map views to lists of past frames, got {type(given).__name__}")
    unknown = sorted(set(given) - set(views))
    if unknown:
        raise UserError(f"sample {index} has past frames for unknown view(s) {unknown}; this model reads {list(views)}")
    out = {}
    for view in views:
        past = given.get(view, [None] * frames)
        if isinstance(past, str | bytes) or not isinstance(past, Sequence) or len(past) != frames:
            raise UserError(f"sample {index} view {view} must have {frames} past frame(s), oldest first (None where "
                            f"missing), got {len(past) if isinstance(past, Sequence) else type(past).__name__}")
        out[view] = [frame if frame is None or isinstance(frame, ClipTokens)
                     else _as_view_image(frame, f"sample {index} view {view} past frame {j}")
                     for j, frame in enumerate(past)]
    return out


def _one_per_sample(count: int, instructions: Sequence[str | None] | None) -> list[str | None]:
    if instructions is None:
        return [None] * count
    if isinstance(instructions, str) or len(instructions) != count:
        raise UserError(f"give one instruction per sample: {count} sample(s), "
                        f"{1 if isinstance(instructions, str) else len(instructions)} instruction(s)")
    return list(instructions)


def _as_view_image(image: Any, name: str) -> ViewImage:
    """One view's image as a [3, H, W] uint8 RGB tensor without copying where it can (an HxWx3 array, a
    PIL RGB image), or as given when still encoded; anything else goes through to_rgb's checks."""
    if isinstance(image, EncodedImage):
        return image
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise UserError(f"{name} as a tensor must be [3, H, W] uint8 RGB, got {image.dtype} {tuple(image.shape)}")
        array_shape = (int(image.shape[1]), int(image.shape[2]))
    elif isinstance(image, Image.Image) and image.mode == "RGB":
        array_shape = (image.height, image.width)
        image = np.asarray(image)
    elif isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        array_shape = image.shape[:2]
    else:  # other modes, channel counts and types: converted (or refused) in one place
        image = np.asarray(to_rgb(image, name))
        array_shape = image.shape[:2]
    problem = pixels_problem(array_shape[1], array_shape[0])
    if problem is not None:
        raise UserError(f"{name} {problem}")
    if isinstance(image, torch.Tensor):
        return image
    if any(stride < 0 for stride in image.strides):  # e.g. a BGR array flipped to RGB as a view
        image = np.ascontiguousarray(image)
    with warnings.catch_warnings():  # a read-only array (np.asarray of PIL) is only ever read here
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(image).permute(2, 0, 1)
