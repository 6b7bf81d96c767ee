"""`SceneCaptioner`: the one facade the node, the CLI, the trainer and the evaluator use.

Load once, then `caption([{view: image}, ...]) -> [str, ...]`, or `ask(samples, questions)`. The frame
path of a caption, on one screen:

    inputs = self.prepare(batch, instructions, device)       # model/inputs.py: images -> tensors, prompt ids
    tokens = self.model.generate(**inputs, decoding=...)     # model/fusion.py: fused visual tokens -> Qwen
    return tokenizer.batch_decode(tokens)

What a checkpoint folder holds and how the model is assembled from it: model/checkpoint.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from clip_vlm_core.config import CaptionerConfig, DecodingConfig
from clip_vlm_core.errors import UserError
from clip_vlm_core.images import EncodedImage
from clip_vlm_core.limits import check_batch, check_question
from clip_vlm_core.model.checkpoint import (
    CheckpointParts,
    build_model,
    default_model_path,
    open_checkpoint,
    resolve_device,
    resolve_dtype,
    save_checkpoint,
)
from clip_vlm_core.model.fusion import MultiViewCaptionModel
from clip_vlm_core.model.image_decode import ImageDecodeError, decode_images
from clip_vlm_core.model.inputs import HISTORY, ClipTokens, ModelInputs, Sample, ViewImage

__all__ = ["HISTORY", "ClipTokens", "SceneCaptioner", "Sample", "ViewImage", "default_model_path", "resolve_device",
           "resolve_dtype"]


class SceneCaptioner:
    def __init__(
        self,
        model: MultiViewCaptionModel,
        processor: Any,
        config: CaptionerConfig,
        device: torch.device,
        name: str,
        decoding: DecodingConfig | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.config = config
        self.device = device
        self.model_name = name
        self.decoding = decoding or DecodingConfig()
        self.inference: dict[str, Any] = {}  # what optimize_for_inference() put in effect
        self.inputs = ModelInputs(processor, config, model.clip.pixel_spec)

    # -- loading and saving -----------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        config: CaptionerConfig,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        local_files_only: bool = False,
        base_dir: Path | None = None,
        base_models_root: Path | None = None,
        connector_file: Path | None = None,
        adapter_dir: Path | None = None,
        trainable: bool = False,
        name: str | None = None,
        quantize: str | None = None,
    ) -> SceneCaptioner:
        """Assemble frozen Qwen + frozen CLIP + connector (+ LoRA when trainable or given an adapter).
        `quantize` (none, nf4, int8) replaces the config's `quantize` (clip_vlm_core.model.quantize)."""
        device = resolve_device(device)
        if quantize is not None:
            config = dataclasses.replace(config, quantize=quantize)
        parts = CheckpointParts(config, base_dir, connector_file, adapter_dir, name)
        model, processor, config = build_model(parts, device, resolve_dtype(dtype, device), local_files_only,
                                               base_models_root, trainable)
        return cls(model, processor, config, device, name or str(config.qwen_model))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        local_files_only: bool = False,
        trainable: bool = False,
        base_models_root: str | Path | None = None,
        quantize: str | None = None,
    ) -> SceneCaptioner:
        """Load a clip-vlm checkpoint folder, or a bare Qwen2.5-VL (hub id or folder) with an untrained
        connector, which captions exactly like that base model. No path: the embedded default model.
        `path` is read by the rule of clip_vlm_core.model.model_refs (a local path that does not exist is
        an error, never a hub id).

        Base models named by a folder in the checkpoint's config must lie inside `base_models_root`
        (default: $CLIP_VLM_BASE_MODELS, else the folder that holds the checkpoint).

        `quantize` loads the language model otherwise than the checkpoint's config says: a QLoRA (nf4)
        checkpoint with "none" runs on a full-precision base, where optimize_for_inference(merge_lora=True)
        merges its adapters into the bf16 weights (clip_vlm_core.model.quantize)."""
        parts = open_checkpoint(path)
        return cls.build(parts.config, device, dtype, local_files_only, base_dir=parts.base_dir,
                         base_models_root=Path(base_models_root) if base_models_root else None,
                         connector_file=parts.connector_file, adapter_dir=parts.adapter_dir, trainable=trainable,
                         name=parts.name, quantize=quantize)

    def save_pretrained(self, out_dir: str | Path, base_models_relative_to: Path | None = None) -> Path:
        """Write the checkpoint folder atomically (model/checkpoint.py)."""
        return save_checkpoint(self.model, self.config, Path(out_dir), base_models_relative_to)

    def with_prompt(self, prompt: str) -> SceneCaptioner:
        """The same loaded model asked a different instruction (`--prompt`, the node's `prompt`); the
        instruction passes the check every prompt does (CaptionerConfig: no chat-template tokens, ...)."""
        config = dataclasses.replace(self.config, prompt=prompt)
        return SceneCaptioner(self.model, self.processor, config, self.device, self.model_name, self.decoding)

    def optimize_for_inference(self, **settings: Any) -> dict[str, Any]:
        """The GPU speed-ups of clip_vlm_core.model.inference (same captions); returns what is in effect.

        For captioning only: merged LoRA adapters are not for training.
        """
        from clip_vlm_core.model.inference import optimize_for_inference

        self.inference = optimize_for_inference(self.model, **settings)
        return self.inference

    # -- inputs -----------------------------------------------------------------------------------
    @property
    def views(self) -> tuple[str, ...]:
        return self.config.views

    @property
    def pixel_spec(self):
        return self.inputs.pixel_spec

    @property
    def prompt_tokens(self):
        return self.inputs.prompt_tokens

    def images_for(self, batch: Sequence[Sample]) -> list[list[ViewImage]]:
        """Check a batch against the model's views; per sample, in view order, each view's image as a
        [3, H, W] uint8 RGB tensor (a view of the caller's array where it can be) or still encoded."""
        return self.inputs.images_for(batch)

    def prepare(
        self,
        batch: Sequence[Sample],
        targets: Sequence[str] | None = None,
        instructions: Sequence[str | None] | None = None,
        device: torch.device | str | None = None,
        *,
        reuse_output: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Model inputs for a batch; with `targets`, also `labels` covering the target tokens only.

        `instructions` gives each sample its own instruction (a question) in place of the caption
        prompt; None (for the batch or a sample) keeps the prompt. The inputs are made on `device`
        (default: the CPU, as a data loader's worker needs them): encoded frames are decoded there
        (on a GPU, JPEGs in one batch), resized and normalised there. `reuse_output`: for a caller that
        drops the inputs before its next call, as caption() does (see ImagePreprocessor).
        """
        device = torch.device("cpu") if device is None else torch.device(device)
        return self.inputs.build(batch, targets, instructions, device, reuse_output)

    def decode_frames(self, images: Sequence[EncodedImage]) -> list[torch.Tensor | ImageDecodeError]:
        """Encoded frames decoded on this captioner's device (JPEGs in one batch on a GPU), each a
        [3, H, W] uint8 tensor ready for caption(), or the ImageDecodeError that stopped it."""
        return decode_images(images, self.device)

    def to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    # -- captions and answers -----------------------------------------------------------------------
    def decoding_in_effect(self, decoding: DecodingConfig | None = None, **overrides: Any) -> DecodingConfig:
        """The settings a caption() call with this `decoding` (default: the captioner's own) and these
        overrides decodes with, every one resolved.

        Unset `eos_token_ids` and `repetition_penalty` are the base model's, from its generation_config.json:
        all its EOS ids (plus the tokenizer's, which ends every training caption) and its penalty (1.0 where
        it sets none).
        """
        settings = (decoding or self.decoding).with_overrides(**overrides)
        generation = self.model.base_qwen.generation_config
        eos = settings.eos_token_ids
        if eos is None:
            own = generation.eos_token_id
            eos = [own] if isinstance(own, int) else list(own or [])
            tokenizer_eos = self.processor.tokenizer.eos_token_id
            eos += [tokenizer_eos] if tokenizer_eos is not None and tokenizer_eos not in eos else []
        vocab = self.model.base_qwen.config.text_config.vocab_size
        if any(i >= vocab for i in eos):
            raise UserError(f"eos_token_ids {list(eos)} name tokens outside the model's vocabulary of {vocab}")
        penalty = settings.repetition_penalty
        if penalty is None:
            penalty = generation.repetition_penalty if generation.repetition_penalty is not None else 1.0
        return dataclasses.replace(settings, eos_token_ids=tuple(eos), repetition_penalty=float(penalty))

    def caption(
        self,
        batch: Sequence[Sample],
        instructions: Sequence[str | None] | None = None,
        decoding: DecodingConfig | None = None,
        **overrides: Any,
    ) -> list[str]:
        """Describe each sample's scene in one caption (or answer its instruction, when one is given).

        `decoding`: how to decode (default: the captioner's own); `overrides` are a shorthand for a few of
        its fields (`caption(batch, max_new_tokens=8)`). `decoding_in_effect()` says what they resolve to."""
        settings = self.decoding_in_effect(decoding, **overrides)
        if not isinstance(batch, Mapping) and len(batch):  # images_for() names the other mistakes
            check_batch(len(batch), settings.num_beams)
        inputs = self.prepare(batch, instructions=instructions, device=self.device, reuse_output=True)
        tokenizer = self.processor.tokenizer
        new_tokens = self.model.generate(**inputs, decoding=settings, pad_token_id=tokenizer.pad_token_id)
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def ask(self, batch: Sequence[Sample], questions: Sequence[str], decoding: DecodingConfig | None = None,
            **overrides: Any) -> list[str]:
        """Answer one question per sample about its views (the same model, the question as instruction)."""
        if isinstance(questions, str):
            raise UserError("ask() takes one question per sample (a list), not a single string")
        texts = [check_question(q, f"question {i + 1}" if len(questions) > 1 else "the question")
                 for i, q in enumerate(questions)]
        return self.caption(batch, instructions=texts, decoding=decoding, **overrides)

    @property
    def clip_views(self) -> tuple[str, ...]:
        """The views whose CLIP tokens the model reads: its full views, then its context views."""
        return (*self.config.views, *self.config.context_views)

    def last_clip_tokens(self) -> list[dict[str, ClipTokens]]:
        """Per sample of the last caption()/ask() call, each view's current-frame CLIP tokens (`clip_views`),
        to be given again as a past frame (HISTORY) without encoding it again. Empty for a model without
        context views or a history (it keeps nothing), and after a call that failed or ran in base-model mode."""
        tokens, self.model.last_clip_tokens = self.model.last_clip_tokens, None
        if tokens is None:
            return []
        views, frames = self.clip_views, self.config.history_frames + 1
        per_sample = tokens.reshape(-1, len(views), frames, *tokens.shape[1:])
        return [{view: ClipTokens(sample[v, -1].clone()) for v, view in enumerate(views)} for sample in per_sample]

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        return {"trainable": trainable, "frozen": total - trainable, "total": total}
