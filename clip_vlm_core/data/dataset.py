"""Training batches for the captioner: a torch Dataset over a manifest, and its collate.

An item is one target for one keyframe: its caption (asked with the caption prompt), or, when the
manifest row carries question-answer pairs, the answer to one question (asked in place of the prompt).
A keyframe with ten questions gives eleven items over the same view images.

Two modes give the same batches:
- raw: each item is the sample's view images, instruction and target; collate runs the processor.
- cached: the frozen encoders' outputs (Qwen visual tokens per view, CLIP tokens) are computed once per
  keyframe, and every item's tokenized prompt + target beside them, in one safetensors file per keyframe,
  so training never runs the frozen vision towers again.

A model that sees more (context views, a history) gets them from the row: the context views' images, and
each view's newest `history_frames` past frames (model/inputs.py's HISTORY; a missing one stays None and
is masked). The manifest must hold at least that many (`data build --history K`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from clip_vlm_core.errors import UserError
from clip_vlm_core.images import load_image
from clip_vlm_core.model.inputs import HISTORY
from clip_vlm_core.model.loss import IGNORE_INDEX


@dataclass(frozen=True)
class TrainingItem:
    row: int  # index into the dataset's rows
    instruction: str | None  # None: the caption prompt; else a question
    target: str  # the caption, or the answer
    type: str | None = None  # the question's type (data.qa's `type`); None for a caption


class CaptionDataset(Dataset):
    """Rows of (view image paths, caption[, question-answer pairs]); items are {"sample_token",
    "images": {view: PIL}, "instruction": str | None, "target": str}, every caption first."""

    def __init__(self, rows: Sequence[Any], dataroot: Path, views: Sequence[str], questions: bool = True,
                 context_views: Sequence[str] = (), history_frames: int = 0) -> None:
        self.rows = list(rows)
        self.dataroot = Path(dataroot)
        self.views = tuple(views)
        self.context_views = tuple(context_views)
        self.history_frames = history_frames
        for row in self.rows[:1]:
            missing = [v for v in self.views + self.context_views if v not in row.views]
            if missing:
                raise UserError(f"manifest rows have no view(s) {missing}; they have {sorted(row.views)}")
            held = min(len(getattr(row, "history", {}).get(v, ())) for v in self.views + self.context_views)
            if held < history_frames:
                raise UserError(f"manifest rows hold {held} past frame(s) per view but the model takes {history_frames}: "
                                f"build the manifest with --history {history_frames} and the model's --history-stride")
        self.items = [TrainingItem(r, None, row.caption) for r, row in enumerate(self.rows)]
        if questions:
            self.items += [TrainingItem(r, pair.question, pair.answer, pair.type)
                           for r, row in enumerate(self.rows) for pair in getattr(row, "qa", ())]
        self.caption_indices = list(range(len(self.rows)))
        self.qa_indices = list(range(len(self.rows), len(self.items)))
        self.qa_types = [self.items[i].type for i in self.qa_indices]  # one per qa_indices entry
        self._row_items: list[list[int]] = [[] for _ in self.rows]
        for i, item in enumerate(self.items):
            self._row_items[item.row].append(i)

    def __len__(self) -> int:
        return len(self.items)

    def row_items(self, row: int) -> list[int]:
        """Indices of the row's items, its caption first."""
        return self._row_items[row]

    def images(self, row: int) -> dict[str, Any]:
        # image_path keeps the row's path inside the dataroot (a regular file); load_image, within the limits.
        record = self.rows[row]
        sample = {view: load_image(record.image_path(view, self.dataroot)) for view in self.views + self.context_views}
        if self.history_frames:  # each view's newest past frames, oldest first
            sample[HISTORY] = {}
            for view in self.views + self.context_views:
                frames = record.history[view]
                first = len(frames) - self.history_frames
                sample[HISTORY][view] = [None if frames[i] is None else
                                         load_image(record.past_image_path(view, i, self.dataroot))
                                         for i in range(first, len(frames))]
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        return {"sample_token": self.rows[item.row].sample_token, "images": self.images(item.row),
                "instruction": item.instruction, "target": item.target}


class RawCollator:
    """Collate raw items through the captioner's processor (labels on target tokens only)."""

    def __init__(self, captioner) -> None:
        self.captioner = captioner

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return self.captioner.prepare([i["images"] for i in items], targets=[i["target"] for i in items],
                                      instructions=[i["instruction"] for i in items])


class CachedEncoderDataset(Dataset):
    """Per-keyframe frozen-encoder outputs and per-item tokens, computed once into `cache_dir` (one
    safetensors file per keyframe, named for `encoder_cache_key` and its texts, so another model, precision,
    device or pixel budget, or changed captions or questions, re-encode)."""

    def __init__(self, raw: CaptionDataset, captioner, cache_dir: Path, show_progress: bool = True) -> None:
        self.raw = raw
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.key = encoder_cache_key(captioner)
        self.caption_indices, self.qa_indices, self.qa_types = raw.caption_indices, raw.qa_indices, raw.qa_types
        # Where each item's tokens sit in its keyframe's file.
        self._slot = {i: n for row in range(len(raw.rows)) for n, i in enumerate(raw.row_items(row))}
        todo = [row for row in range(len(raw.rows)) if not self._path(row).exists()]
        for row in tqdm(todo, desc="caching frozen encoders", unit="sample", disable=not show_progress or None):
            self._encode(row, captioner)

    def _path(self, row: int) -> Path:
        texts = [(self.raw.items[i].instruction, self.raw.items[i].target) for i in self.raw.row_items(row)]
        text_key = hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:12]
        return self.cache_dir / f"{self.raw.rows[row].sample_token}-{self.key}-{text_key}.safetensors"

    @torch.no_grad()
    def _encode(self, row: int, captioner) -> None:
        from safetensors.torch import save_file

        images = self.raw.images(row)
        items = [self.raw.items[i] for i in self.raw.row_items(row)]
        # Made on the model's device (decoded, resized and laid out there); the raw collator runs in
        # data-loader workers, which must not touch the GPU, so it keeps prepare()'s CPU default.
        inputs = captioner.prepare([images], targets=[items[0].target], instructions=[items[0].instruction],
                                   device=captioner.device)
        model = captioner.model
        visual = model.encode_visual(inputs["pixel_values"], inputs["image_grid_thw"])
        tensors = {
            "image_grid_thw": inputs["image_grid_thw"],
            "clip_tokens": model.clip(inputs["clip_pixels"]),
            **({"clip_absent": inputs["clip_absent"]} if "clip_absent" in inputs else {}),
            **{f"visual_{v}": t for v, t in enumerate(visual)},
            **_token_tensors(inputs, 0),
        }
        if len(items) > 1:
            tokens = _item_tokens(captioner, images, items[1:], inputs["image_grid_thw"].cpu())
            tensors.update({k: v for n in range(len(items) - 1) for k, v in _token_tensors(tokens, n, n + 1).items()})
        path = self._path(row)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        tmp.rename(path)  # a crash mid-write never leaves a cache file that looks complete

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        tensors = load_file(self._path(self.raw.items[index].row))
        slot = self._slot[index]
        item = {k: v for k, v in tensors.items() if "@" not in k}
        item.update({key: tensors[f"{key}@{slot}"] for key in _TOKEN_KEYS})
        return item


_TOKEN_KEYS = ("input_ids", "labels", "mm_token_type_ids")


def _token_tensors(inputs: dict[str, Any], row: int, slot: int | None = None) -> dict[str, torch.Tensor]:
    """One batch row's token tensors, unpadded (left padding removed), stored under `key@slot`."""
    keep = inputs["attention_mask"][row].bool()
    return {f"{key}@{row if slot is None else slot}": inputs[key][row][keep] for key in _TOKEN_KEYS}


def _item_tokens(captioner, images: dict[str, Any], items: list[TrainingItem], grid: torch.Tensor) -> dict:
    """Prompt + target tokens of a keyframe's other items. Only the token ids are needed, and they depend
    on the images only through their patch grid, so the processor is given the images already at the size
    it resizes them to (a fixed point of its resize): the same grid at a fraction of the cost. Checked: a
    different grid falls back to the full images."""
    patch = captioner.processor.image_processor.patch_size
    small = {view: images[view].resize((int(g[2]) * patch, int(g[1]) * patch))
             for view, g in zip(captioner.views, grid, strict=True)}
    # Context views and past frames give CLIP tokens only: no prompt token depends on them.
    small |= {view: images[view].resize((28, 28)) for view in captioner.config.context_views}
    images = {view: image for view, image in images.items() if view != HISTORY}
    batch_of = lambda views: [views] * len(items)  # noqa: E731
    kwargs = {"targets": [i.target for i in items], "instructions": [i.instruction for i in items]}
    tokens = captioner.prepare(batch_of(small), **kwargs)
    if not torch.equal(tokens["image_grid_thw"], grid.repeat(len(items), 1)):
        tokens = captioner.prepare(batch_of(images), **kwargs)
    return tokens


def collate_cached(items: list[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, Any]:
    """Left-pad the token rows (as the processor does) and gather the cached encoder outputs."""
    length = max(item["input_ids"].shape[0] for item in items)

    def left_pad(key: str, value: int) -> torch.Tensor:
        rows = [torch.nn.functional.pad(i[key], (length - i[key].shape[0], 0), value=value) for i in items]
        return torch.stack(rows)

    input_ids = left_pad("input_ids", pad_token_id)
    attention_mask = torch.stack(
        [torch.nn.functional.pad(torch.ones_like(i["input_ids"]), (length - i["input_ids"].shape[0], 0)) for i in items]
    )
    visual = [item[k] for item in items for k in sorted((k for k in item if k.startswith("visual_")), key=_view_index)]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": left_pad("labels", IGNORE_INDEX),
        "mm_token_type_ids": left_pad("mm_token_type_ids", 0),
        "image_grid_thw": torch.cat([i["image_grid_thw"] for i in items]),
        "visual_embeds": visual,
        "clip_tokens": torch.cat([i["clip_tokens"] for i in items]),
        **({"clip_absent": torch.cat([i["clip_absent"] for i in items])} if "clip_absent" in items[0] else {}),
    }


def _view_index(key: str) -> int:
    return int(key.split("_", 1)[1])


# Bump when what the cache holds changes for the same model and images: model/preprocess.py's resize or
# normalisation, or this file's layout of tensors.
ENCODER_CACHE_FORMAT = 2


def encoder_cache_key(captioner) -> str:
    """The one key a cached keyframe file is valid under: everything that changes what the frozen encoders
    output for an image, or the token ids stored beside them. A bf16 cache made on a GPU is therefore never
    read by an fp32 resume on a CPU, nor a cache of other base weights at the same path."""
    c, model = captioner.config, captioner.model
    qwen_folder = Path(getattr(model.base_qwen, "name_or_path", "") or c.qwen_model)
    clip_folder = Path(c.clip_model)
    parts = {
        "format": ENCODER_CACHE_FORMAT,
        # the base models: their files (names, sizes, times) where local, their names and tags otherwise
        "qwen": _files_fingerprint(qwen_folder) if qwen_folder.is_dir() else c.qwen_model,
        "clip": _files_fingerprint(clip_folder) if clip_folder.is_dir() else f"{c.clip_model}/{c.clip_pretrained}",
        "clip_tokens": c.clip_tokens,
        # how the numbers are computed: precision, the kind of device (GPU kernels round differently), and
        # the vision tower's attention kernel
        "dtype": str(next(model.clip.parameters()).dtype), "qwen_dtype": str(next(model.base_qwen.parameters()).dtype),
        "device": captioner.device.type,
        "vision_attention": str(model.base_qwen.model.visual.config._attn_implementation),
        # what the images become before the encoders: the pixel budget and both preprocessing specs
        "qwen_pixels": repr(captioner.pixel_spec), "clip_pixels": repr(model.clip.pixel_spec),
        # the token ids stored with them: the views and the prompt around them
        "views": list(c.views), "prompt": c.prompt, "label_views": c.label_views,
        "instruction_first": c.instruction_first,
    }
    if c.context_views or c.history_frames:  # what the CLIP tokens stored are of (absent: today's keys stay)
        parts |= {"context_views": list(c.context_views), "history_frames": c.history_frames,
                  "history_stride_s": c.history_stride_s}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _files_fingerprint(folder: Path) -> str:
    """The weights and configs of a model folder by name, size and modification time (no byte read)."""
    stats = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in folder.rglob("*") if p.suffix in (".safetensors", ".json", ".bin") and p.is_file())
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()
