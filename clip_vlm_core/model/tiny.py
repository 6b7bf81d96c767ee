"""Tiny, randomly initialised stand-ins for Qwen2.5-VL and OpenCLIP, built from the real classes.

No machine of this project can download weights, so tests, the demo and benchmarks build these and then
load them back through exactly the code path users hit with real hub ids: `from_pretrained` on a
folder written by the libraries' own save functions. Everything is deterministic for a seed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from clip_vlm_core.config import DEFAULT_VIEWS, NUSCENES_CAMERAS

# The special tokens of Qwen2.5-VL's tokenizer, in its order; the chat template and the processor
# refer to them by name, so the tiny tokenizer must carry all of them.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2.5-VL-Instruct's chat template (chat_template.json of the released model).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Pixel budget of the tiny processor: a 1600x900 frame becomes 224x112 pixels, 32 visual tokens.
TINY_MIN_PIXELS = 28 * 28 * 4
TINY_MAX_PIXELS = 28 * 28 * 32
# Wider than Qwen's 0.02: a random tiny model then answers differently for different images, which the
# tests of batching and save/load need to be meaningful (at 0.02 every caption is the same newline run).
TINY_INIT_STD = 0.2
# Depth of the tiny language model. Two layers learnt the captions and most questions, but not the traffic
# light asked as "What does the traffic light show?" (0.45 even in training phrasings on training scenes,
# after 8,000 steps, while "Is the light red or green?" was always right): four layers answer it (1.00 by
# step 2,750). "Where is the bus?" was learnt by neither until the recipe weighed answers as much as captions
# and drew where-questions three times as often (training/configs/synthetic-tiny.yaml).
TINY_TEXT_LAYERS = 4


def _base_corpus() -> list[str]:
    """Text the tiny tokenizer's merges are learnt from: the chat scaffolding plus scene captions."""
    corpus = [
        "system\nYou are a helpful assistant.",
        "user\nassistant\n",
        " ".join(f"{camera}:" for camera in NUSCENES_CAMERAS),  # the prompt's view labels
        "Describe what the car's cameras see, front then back, in plain language.",
    ]
    try:  # the synthetic scenes' templated captions and questions, so that they tokenize into few tokens
        from clip_vlm_core.data.scene_questions import question_corpus
        from clip_vlm_core.data.synthetic import caption_corpus

        corpus += list(caption_corpus()) + question_corpus()
    except ImportError:
        pass
    return corpus


def build_tiny_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512):
    """Qwen2's tokenizer with a small vocabulary: NFC normalization, Qwen2's regex pre-tokenizer and
    byte-level BPE (merges learnt from `corpus`), Qwen2.5-VL's special tokens and chat template.

    The BPE is learnt under the same normalizer and pre-tokenizer that transformers' Qwen2Tokenizer
    builds around its vocabulary and merges (and rebuilds when a tokenizer folder is loaded), so the
    tiny tokenizer splits text as Qwen's does: digits one by one, punctuation apart from words.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        show_progress=False,
    )
    backend.train_from_iterator(list(corpus) if corpus is not None else _base_corpus(), trainer=trainer)
    learnt = json.loads(backend.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=learnt["vocab"],
        merges=[tuple(merge) for merge in learnt["merges"]],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        extra_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def build_tiny_processor(tokenizer=None):
    """Qwen2.5-VL's processor (image + video processors, tokenizer, chat template) at a tiny pixel budget."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    image_processor = Qwen2VLImageProcessor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
    video_processor = Qwen2VLVideoProcessor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def build_tiny_qwen(tokenizer, seed: int = 0, layers: int = TINY_TEXT_LAYERS):
    """A randomly initialised Qwen2_5_VLForConditionalGeneration of about 0.3 M parameters."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "tie_word_embeddings": True,
            "initializer_range": TINY_INIT_STD,
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "initializer_range": TINY_INIT_STD,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
        initializer_range=TINY_INIT_STD,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # Qwen2.5-VL-3B-Instruct's generation_config.json with the tiny vocabulary's ids: it stops on both
    # <|im_end|> and <|endoftext|> and penalises repeats, so tests meet what the released model does.
    from clip_vlm_core.model.full_size import QWEN25_VL_3B_GENERATION

    model.generation_config.update(**QWEN25_VL_3B_GENERATION)
    model.generation_config.update(
        bos_token_id=ids("<|endoftext|>"),
        pad_token_id=ids("<|endoftext|>"),
        eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")],
    )
    return model


def build_tiny_clip(seed: int = 0):
    """A randomly initialised OpenCLIP ViT (width 48, 2 layers, 64x64 input) and its model config."""
    import open_clip

    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 48, "head_width": 24, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 256, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg).eval()
    return model, model_cfg


def save_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny OpenCLIP as a folder that `open_clip.create_model('local-dir:...')` loads."""
    from safetensors.torch import save_file

    model, model_cfg = build_tiny_clip(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The same two files open_clip's `save_for_hf` writes (it also wants a text tokenizer we do not use).
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    preprocess_cfg = {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD)}
    _write_json(out_dir / "open_clip_config.json", {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "open_clip_model.safetensors")
    return out_dir


def save_tiny_base_models(out_dir: Path | str, seed: int = 0, corpus: Iterable[str] | None = None) -> dict[str, Path]:
    """Write `out_dir/qwen` (model + processor) and `out_dir/clip` (OpenCLIP folder); return their paths."""
    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(corpus)
    processor = build_tiny_processor(tokenizer)
    qwen = build_tiny_qwen(tokenizer, seed)
    qwen_dir, clip_dir = out_dir / "qwen", out_dir / "clip"
    qwen.save_pretrained(qwen_dir)
    processor.save_pretrained(qwen_dir)
    save_tiny_clip(clip_dir, seed)
    return {"qwen": qwen_dir, "clip": clip_dir}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
    os.chmod(path, 0o644)


def tiny_captioner_config(base: dict[str, Path], views: tuple[str, ...] = DEFAULT_VIEWS):
    """The CaptionerConfig of the tiny architecture: same recipe as full size, smaller everything."""
    from clip_vlm_core.config import CaptionerConfig

    return CaptionerConfig(
        qwen_model=str(base["qwen"]),
        clip_model=str(base["clip"]),
        clip_pretrained="",
        views=views,
        connector_layers=1,
        connector_heads=4,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
    )


def save_untrained_tiny_checkpoint(checkpoint: Path | str, base_dir: Path | str | None = None, seed: int = 0) -> Path:
    """Tiny base models (in `base_dir`, default `checkpoint/../base`) and an untrained captioner checkpoint
    that refers to them by relative path, so the pair can be moved together."""
    from clip_vlm_core.model.captioner import SceneCaptioner

    checkpoint = Path(checkpoint)
    base = save_tiny_base_models(Path(base_dir) if base_dir else checkpoint.parent / "base", seed)
    torch.manual_seed(seed)
    captioner = SceneCaptioner.build(tiny_captioner_config(base), device="cpu")
    captioner.save_pretrained(checkpoint, base_models_relative_to=checkpoint)
    return checkpoint
