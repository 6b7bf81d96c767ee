"""`SceneCaptioner`: the one facade the node, the CLI, the trainer and the evaluator use.

Load once, then `caption([{view: image}, ...]) -> [str, ...]`. A checkpoint is a folder:

    clip_vlm_config.json    CaptionerConfig (base model ids or paths, views, prompt, connector/LoRA shape)
    connector.safetensors   the fusion connector
    adapter/                the PEFT LoRA adapter (standard PEFT format), when trained

Nothing is unpickled and no remote code runs.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clip_vlm_core.atomic import staged_dir
from clip_vlm_core.config import CaptionerConfig, DecodingConfig, load_json, save_json
from clip_vlm_core.errors import UserError
from clip_vlm_core.images import EncodedImage, ImageLike, pixels_problem, to_rgb
from clip_vlm_core.limits import check_batch, check_question
from clip_vlm_core.model.checkpoint_limits import (
    check_adapter,
    check_lora_finite,
    check_qwen_folder,
    load_connector_state,
)
from clip_vlm_core.model.clip_encoder import ClipViewEncoder, load_open_clip
from clip_vlm_core.model.connector import FusionConnector
from clip_vlm_core.model.fusion import MultiViewCaptionModel
from clip_vlm_core.model.image_decode import ImageDecodeError, decode_images
from clip_vlm_core.model.model_refs import (
    QWEN_HUB_FILES,
    ModelRef,
    classify_ref,
    embedded_assets,
    hub_snapshot,
    resolve_config_ref,
)
from clip_vlm_core.model.preprocess import ImagePreprocessor, QwenPixelSpec
from clip_vlm_core.model.prompt_ids import PromptTokens

# PEFT 0.21 asks transformers 5 a deprecated question on every adapter load; users cannot act on it.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

CONFIG_FILE = "clip_vlm_config.json"
CONNECTOR_FILE = "connector.safetensors"
ADAPTER_DIR = "adapter"

Sample = Mapping[str, ImageLike | torch.Tensor]
# One view's image on its way in: a [3, H, W] uint8 RGB tensor, or still encoded (decoded in a batch).
Frame = torch.Tensor | EncodedImage


def default_model_path() -> Path:
    """The embedded default model shipped inside the package (used when no model is named)."""
    return embedded_assets() / "default_model"


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was requested but no CUDA GPU is available")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU unless told otherwise."""
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise UserError(f"unknown dtype {dtype!r}: use one of {sorted(names)}")
    return names[dtype]


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _check_safetensors_only(folder: Path, what: str) -> None:
    """Unpickling weights can run code: a local model folder must hold safetensors, and nothing else is loaded."""
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise UserError(f"{what} folder {folder} holds pickled weights ({pickled[0]}) and no .safetensors file; "
                        f"clip-vlm loads safetensors weights only")


def _qwen_folder(ref: ModelRef, local_files_only: bool) -> Path:
    """The local folder a Qwen2.5-VL reference names (a hub id through the cache), checked whole
    (clip_vlm_core.model.checkpoint_limits) before transformers reads a byte of it."""
    what = "Qwen2.5-VL model"
    if ref.kind == "hub":
        folder = hub_snapshot(ref.value, what, local_files_only, QWEN_HUB_FILES)
    elif ref.kind == "folder":
        folder = ref.path
        if not folder.is_dir():
            raise UserError(f"{what} {folder} is a file, not a model folder")
    else:
        raise UserError(f"{what} {ref.value!r} is neither a local folder nor a hub id like 'org/name'")
    _check_safetensors_only(folder, what)
    check_qwen_folder(folder, what)
    return folder


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
        self._prompt_text = self._build_prompt_text()
        # Model inputs as tensor operations (model/preprocess.py, model/prompt_ids.py): the one path
        # the node, the CLI, evaluation and training all take.
        self.pixel_spec = QwenPixelSpec.of(processor.image_processor)
        self.pixels = ImagePreprocessor(self.pixel_spec, model.clip.pixel_spec)
        self.prompt_tokens = PromptTokens(processor, self._prompt_for)

    # -- loading ----------------------------------------------------------------------------------
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
    ) -> SceneCaptioner:
        """Assemble frozen Qwen + frozen CLIP + connector (+ LoRA when trainable or given an adapter)."""
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        # Where the models are, and whether they may be loaded at all, before seconds of library imports.
        qwen_ref = resolve_config_ref(config.qwen_model, base_dir, base_models_root, "Qwen2.5-VL base model")
        clip_ref = resolve_config_ref(config.clip_model, base_dir, base_models_root, "OpenCLIP model",
                                      open_clip_names=True)
        qwen_folder = _qwen_folder(qwen_ref, local_files_only)
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a per-tensor bar on every load; hub downloads keep theirs
        # Where the base models really are, so that saving this model again (best/ of a resumed run)
        # writes refs relative to the new folder, not the old folder's relative refs unchanged.
        config = dataclasses.replace(config, qwen_model=str(qwen_ref.path or qwen_ref.value),
                                     clip_model=str(clip_ref.path or clip_ref.value))
        try:
            qwen = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                qwen_folder, dtype=dtype, local_files_only=True, attn_implementation="sdpa", use_safetensors=True,
            )
            pixel_budget = {k: v for k, v in (("min_pixels", config.min_pixels), ("max_pixels", config.max_pixels)) if v}
            processor = AutoProcessor.from_pretrained(qwen_folder, local_files_only=True, **pixel_budget)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise UserError(f"cannot load Qwen2.5-VL from {qwen_ref.value!r}: {exc}") from None
        processor.tokenizer.padding_side = "left"  # generation appends on the right
        qwen.requires_grad_(False)

        clip = ClipViewEncoder(load_open_clip(clip_ref, config.clip_pretrained, local_files_only), config.clip_tokens)
        model = assemble_model(qwen, clip, config, trainable, connector_file, adapter_dir)
        model.clip.to(device=device, dtype=dtype)
        model.qwen.to(device)
        # The trainable connector keeps fp32 master weights when training; inference runs in `dtype`.
        model.connector.to(device=device, dtype=torch.float32 if trainable else dtype)
        model.train(False)
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
    ) -> SceneCaptioner:
        """Load a clip-vlm checkpoint folder, or a bare Qwen2.5-VL (hub id or folder) with an untrained
        connector, which captions exactly like that base model. No path: the embedded default model.
        `path` is read by the rule of clip_vlm_core.model.model_refs (a local path that does not exist is
        an error, never a hub id).

        Base models named by a folder in the checkpoint's config must lie inside `base_models_root`
        (default: $CLIP_VLM_BASE_MODELS, else the folder that holds the checkpoint)."""
        ref = classify_ref(path, "checkpoint")
        if ref.kind == "hub":  # a bare Qwen2.5-VL from the hub
            return cls.build(CaptionerConfig(qwen_model=ref.value), device, dtype, local_files_only, trainable=trainable)
        folder = default_model_path() if ref.kind == "embedded" else ref.path
        if not (folder / CONFIG_FILE).exists():
            if not folder.is_dir():
                raise UserError(f"checkpoint {folder} is a file, not a checkpoint folder")
            if any(folder.glob("connector*")):
                raise UserError(f"checkpoint {folder} has no {CONFIG_FILE}")
            if not (folder / "config.json").is_file():
                raise UserError(f"checkpoint {folder} is neither a clip-vlm checkpoint (no {CONFIG_FILE}) nor a "
                                f"Qwen2.5-VL model folder (no config.json)")
            config = CaptionerConfig(qwen_model=str(folder))  # a bare Qwen2.5-VL folder
            return cls.build(config, device, dtype, local_files_only, trainable=trainable)
        config = load_json(CaptionerConfig, folder / CONFIG_FILE)
        adapter = folder / ADAPTER_DIR
        return cls.build(
            config,
            device,
            dtype,
            local_files_only,
            base_dir=folder.resolve(),
            base_models_root=Path(base_models_root) if base_models_root else None,
            connector_file=folder / CONNECTOR_FILE,
            adapter_dir=adapter if adapter.exists() else None,
            trainable=trainable,
            name=folder.name if folder.resolve() != default_model_path() else "embedded-default",
        )

    def save_pretrained(self, out_dir: str | Path, base_models_relative_to: Path | None = None) -> Path:
        """Write the checkpoint folder atomically: a temporary folder beside it, renamed when complete."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        config = self.config
        # Local base models are always written relative to the checkpoint: loading refuses absolute paths.
        relative_to = base_models_relative_to or out_dir
        config = dataclasses.replace(
            config,
            qwen_model=_relative(config.qwen_model, relative_to),
            clip_model=_relative(config.clip_model, relative_to),
        )
        with staged_dir(out_dir) as tmp:
            save_json(config, tmp / CONFIG_FILE)
            state = {k: v.detach().float().cpu().contiguous() for k, v in self.model.connector.state_dict().items()}
            save_file(state, tmp / CONNECTOR_FILE)
            if hasattr(self.model.qwen, "peft_config"):
                self.model.qwen.save_pretrained(tmp / ADAPTER_DIR)
        return out_dir

    def with_prompt(self, prompt: str) -> SceneCaptioner:
        """The same loaded model asked a different instruction (`--prompt`, the node's `prompt`); the
        instruction passes the check every prompt does (CaptionerConfig: no chat-template tokens, ...)."""
        config = dataclasses.replace(self.config, prompt=prompt)
        return SceneCaptioner(self.model, self.processor, config, self.device, self.model_name, self.decoding)

    # -- inference --------------------------------------------------------------------------------
    def optimize_for_inference(self, **settings: Any) -> dict[str, Any]:
        """The GPU speed-ups of clip_vlm_core.model.inference (same captions); returns what is in effect.

        For captioning only: merged LoRA adapters are not for training.
        """
        from clip_vlm_core.model.inference import optimize_for_inference

        self.inference = optimize_for_inference(self.model, **settings)
        return self.inference

    @property
    def views(self) -> tuple[str, ...]:
        return self.config.views

    def _build_prompt_text(self, instruction: str | None = None) -> str:
        """The chat-formatted prompt: every view's image (labelled), then the instruction — the caption
        prompt by default, or a question about the scene — or the instruction first (instruction_first)."""
        text = {"type": "text", "text": self.config.prompt if instruction is None else instruction}
        content: list[dict[str, str]] = [text] if self.config.instruction_first else []
        for view in self.config.views:
            if self.config.label_views:
                content.append({"type": "text", "text": f"{view}: "})
            content.append({"type": "image"})
        if not self.config.instruction_first:
            content.append(text)
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _prompt_for(self, instruction: str | None) -> str:
        return self._prompt_text if instruction is None else self._build_prompt_text(instruction)

    def _instructions(self, count: int, instructions: Sequence[str | None] | None) -> list[str | None]:
        if instructions is None:
            return [None] * count
        if isinstance(instructions, str) or len(instructions) != count:
            raise UserError(f"give one instruction per sample: {count} sample(s), "
                            f"{1 if isinstance(instructions, str) else len(instructions)} instruction(s)")
        return list(instructions)

    def images_for(self, batch: Sequence[Sample]) -> list[list[Frame]]:
        """Check a batch against the model's views; per sample, in view order, each view's image as a
        [3, H, W] uint8 RGB tensor (a view of the caller's array where it can be) or still encoded."""
        if isinstance(batch, Mapping):
            raise UserError("caption() takes a list of samples ({view: image}), not a single sample")
        if len(batch) == 0:
            raise UserError("the batch is empty: give at least one sample of {view: image}")
        out = []
        for i, sample in enumerate(batch):
            unknown = sorted(set(sample) - set(self.views))
            if unknown:
                raise UserError(f"sample {i} has unknown view(s) {unknown}; this model reads {list(self.views)}")
            missing = [v for v in self.views if v not in sample]
            if missing:
                raise UserError(f"sample {i} has no image for view(s) {missing}; this model reads {list(self.views)}")
            out.append([_as_frame(sample[v], f"sample {i} view {v}") for v in self.views])
        return out

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
        frames = self.images_for(batch)
        instructions = self._instructions(len(frames), instructions)
        if targets is not None and (isinstance(targets, str) or len(targets) != len(frames)):
            raise ValueError(f"give one target caption per sample: {len(frames)} sample(s), {len(targets)} target(s)")
        flat = self._decoded([frame for sample in frames for frame in sample], device)
        views = len(self.views)
        tokens = [self.pixel_spec.tokens(int(image.shape[1]), int(image.shape[2])) for image in flat]
        rows = [
            self.prompt_tokens.ids(instruction, tokens[i * views : (i + 1) * views],
                                   None if targets is None else targets[i])
            for i, instruction in enumerate(instructions)
        ]
        inputs = self.prompt_tokens.batch(rows)
        if targets is not None:
            inputs["labels"] = self._caption_labels(inputs["input_ids"], targets)
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        return inputs | self.pixels(flat, device, reuse_output=reuse_output)

    def decode_frames(self, images: Sequence[EncodedImage]) -> list[torch.Tensor | ImageDecodeError]:
        """Encoded frames decoded on this captioner's device (JPEGs in one batch on a GPU), each a
        [3, H, W] uint8 tensor ready for caption(), or the ImageDecodeError that stopped it."""
        return decode_images(images, self.device)

    def _decoded(self, frames: list[Frame], device: torch.device) -> list[torch.Tensor]:
        encoded = [i for i, frame in enumerate(frames) if isinstance(frame, EncodedImage)]
        if not encoded:
            return frames  # type: ignore[return-value]
        decoded = decode_images([frames[i] for i in encoded], device)
        out = list(frames)
        for i, image in zip(encoded, decoded, strict=True):
            if isinstance(image, ImageDecodeError):
                views = len(self.views)
                raise UserError(f"sample {i // views} view {self.views[i % views]}: {image}")
            out[i] = image
        return out  # type: ignore[return-value]

    def _caption_labels(self, input_ids: torch.Tensor, targets: Sequence[str]) -> torch.Tensor:
        """Left padding puts each caption (and its end token) at the end of its row: label just those.

        A caption tokenizes the same alone as after the prompt because Qwen2's pre-tokenizer always
        splits after the prompt's final newline (no pattern joins a newline to a following non-space)
        and special tokens are atomic; tests/test_real_weights_settings.py checks punctuation, digits,
        unicode (NFD input included) and leading spaces with both the tiny and the embedded tokenizer.
        """
        tokenizer = self.processor.tokenizer
        labels = torch.full_like(input_ids, -100)
        for row, target in enumerate(targets):
            ids = tokenizer(target.strip() + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            span = input_ids[row, -len(ids) :]
            if span.tolist() != ids:  # the caption must tokenize the same alone as in context
                raise ValueError(f"caption tokens of row {row} not found at the end of its input")
            labels[row, -len(ids) :] = span
        return labels

    def decoding_in_effect(self, **overrides: Any) -> DecodingConfig:
        """The settings a caption() call with these overrides decodes with, every one resolved.

        Overrides left as None keep the captioner's own; unset `eos_token_ids` and `repetition_penalty`
        are the base model's, from its generation_config.json: all its EOS ids (plus the tokenizer's,
        which ends every training caption) and its penalty (1.0 where it sets none).
        """
        overrides = {key: value for key, value in overrides.items() if value is not None}
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(DecodingConfig)})
        if unknown:
            raise UserError(f"unknown decoding setting(s) {unknown}; see DecodingConfig")
        settings = dataclasses.replace(self.decoding, **overrides) if overrides else self.decoding
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
        self, batch: Sequence[Sample], instructions: Sequence[str | None] | None = None, **decoding: Any
    ) -> list[str]:
        """Describe each sample's scene in one caption (or answer its instruction, when one is given).
        Decoding overrides: see DecodingConfig; `decoding_in_effect()` says what they resolve to."""
        settings = self.decoding_in_effect(**decoding)
        if not isinstance(batch, Mapping) and len(batch):  # images_for() names the other mistakes
            check_batch(len(batch), settings.num_beams)
        inputs = self.prepare(batch, instructions=instructions, device=self.device, reuse_output=True)
        tokenizer = self.processor.tokenizer
        new_tokens = self.model.generate(**inputs, **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def ask(self, batch: Sequence[Sample], questions: Sequence[str], **decoding: Any) -> list[str]:
        """Answer one question per sample about its views (the same model, the question as instruction)."""
        if isinstance(questions, str):
            raise UserError("ask() takes one question per sample (a list), not a single string")
        texts = [check_question(q, f"question {i + 1}" if len(questions) > 1 else "the question")
                 for i, q in enumerate(questions)]
        return self.caption(batch, instructions=texts, **decoding)

    def to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        return {"trainable": trainable, "frozen": total - trainable, "total": total}


def assemble_model(
    qwen,
    clip: ClipViewEncoder,
    config: CaptionerConfig,
    trainable: bool,
    connector_file: Path | None = None,
    adapter_dir: Path | None = None,
    lora: bool | None = None,
) -> MultiViewCaptionModel:
    """Frozen Qwen + frozen CLIP + the connector (fresh or loaded), with LoRA when trainable or given.

    `lora=True` adds fresh (frozen, unless trainable) adapters to an untrainable model too, as a
    fine-tuned checkpoint would bring: the benchmark times inference with them.
    """
    width = qwen.config.text_config.hidden_size
    if width % config.connector_heads:
        raise UserError(f"captioner.connector_heads ({config.connector_heads}) must divide the language model's "
                        f"width ({width})")
    connector = FusionConnector(
        clip_dim=clip.token_dim,
        hidden_size=qwen.config.text_config.hidden_size,
        num_views=len(config.views),
        num_layers=config.connector_layers,
        num_heads=config.connector_heads,
        dropout=config.connector_dropout,
    )
    if connector_file is not None:  # read only once its header matches the connector the config builds
        connector.load_state_dict(load_connector_state(connector_file, connector))
    if adapter_dir is not None:
        qwen = _load_adapter(qwen, adapter_dir, trainable)
    elif trainable if lora is None else lora:
        from peft import LoraConfig, get_peft_model

        qwen = get_peft_model(
            qwen,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=config.lora_targets,
            ),
        )
        qwen.requires_grad_(False)
        if trainable:
            for name, param in qwen.named_parameters():
                param.requires_grad_(".lora_" in name)
    connector.requires_grad_(trainable)
    return MultiViewCaptionModel(qwen, clip, connector, len(config.views))


def _load_adapter(qwen, adapter_dir: Path, trainable: bool):
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"LoRA adapter folder {adapter_dir} has no adapter_config.json")
    check_adapter(adapter_dir, qwen)  # rank, targets and every tensor's shape, before PEFT reads a byte
    try:
        model = PeftModel.from_pretrained(qwen, str(adapter_dir), is_trainable=trainable)
    except Exception as exc:  # PEFT raises many types for a damaged adapter; all mean the same to a user
        raise UserError(f"LoRA adapter in {adapter_dir} cannot be loaded ({type(exc).__name__}: {exc})") from None
    check_lora_finite(model, adapter_dir)
    return model


def _as_frame(image: Any, name: str) -> Frame:
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


def _relative(ref: str, base: Path) -> str:
    """A local base-model folder written relative to `base`, so a checkpoint can move with its models."""
    path = Path(ref)
    return os.path.relpath(path.resolve(), base.resolve()) if path.exists() else ref
