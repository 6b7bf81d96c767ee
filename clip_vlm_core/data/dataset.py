"""Training batches for the captioner: a torch Dataset over a manifest, and its collate.

Two modes give the same batches:
- raw: each item is the sample's view images and caption; collate runs the captioner's processor.
- cached: the frozen encoders' outputs (Qwen visual tokens per view, CLIP tokens) and the tokenized
  prompt + caption are computed once per sample and stored as safetensors, so training never runs the
  frozen vision towers again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from clip_vlm_core.errors import UserError
from clip_vlm_core.images import load_image


class CaptionDataset(Dataset):
    """Rows of (view image paths, caption); items are {"images": {view: PIL}, "caption": str}."""

    def __init__(self, rows: Sequence[Any], dataroot: Path, views: Sequence[str]) -> None:
        self.rows = list(rows)
        self.dataroot = Path(dataroot)
        self.views = tuple(views)
        for row in self.rows[:1]:
            missing = [v for v in self.views if v not in row.views]
            if missing:
                raise UserError(f"manifest rows have no view(s) {missing}; they have {sorted(row.views)}")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        # image_path keeps the row's path inside the dataroot (a regular file); load_image, within the limits.
        images = {view: load_image(row.image_path(view, self.dataroot)) for view in self.views}
        return {"sample_token": row.sample_token, "images": images, "caption": row.caption}


class RawCollator:
    """Collate raw items through the captioner's processor (labels on caption tokens only)."""

    def __init__(self, captioner) -> None:
        self.captioner = captioner

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return self.captioner.prepare([i["images"] for i in items], targets=[i["caption"] for i in items])


class CachedEncoderDataset(Dataset):
    """Per-sample frozen-encoder outputs, computed once into `cache_dir` (one safetensors file each)."""

    def __init__(self, raw: CaptionDataset, captioner, cache_dir: Path, show_progress: bool = True) -> None:
        self.raw = raw
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.key = _cache_key(captioner)
        todo = [i for i in range(len(raw)) if not self._path(i).exists()]
        for i in tqdm(todo, desc="caching frozen encoders", unit="sample", disable=not show_progress or None):
            self._encode(i, captioner)

    def _path(self, index: int) -> Path:
        return self.cache_dir / f"{self.raw.rows[index].sample_token}-{self.key}.safetensors"

    @torch.no_grad()
    def _encode(self, index: int, captioner) -> None:
        from safetensors.torch import save_file

        item = self.raw[index]
        # Made on the model's device (decoded, resized and laid out there); the raw collator runs in
        # data-loader workers, which must not touch the GPU, so it keeps prepare()'s CPU default.
        inputs = captioner.prepare([item["images"]], targets=[item["caption"]], device=captioner.device)
        model = captioner.model
        visual = model.encode_visual(inputs["pixel_values"], inputs["image_grid_thw"])
        tensors = {
            "input_ids": inputs["input_ids"][0],
            "labels": inputs["labels"][0],
            "mm_token_type_ids": inputs["mm_token_type_ids"][0],
            "image_grid_thw": inputs["image_grid_thw"],
            "clip_tokens": model.clip(inputs["clip_pixels"]),
            **{f"visual_{v}": t for v, t in enumerate(visual)},
        }
        path = self._path(index)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        tmp.rename(path)  # a crash mid-write never leaves a cache file that looks complete

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(self._path(index))


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
        "labels": left_pad("labels", -100),
        "mm_token_type_ids": left_pad("mm_token_type_ids", 0),
        "image_grid_thw": torch.cat([i["image_grid_thw"] for i in items]),
        "visual_embeds": visual,
        "clip_tokens": torch.cat([i["clip_tokens"] for i in items]),
    }


def _view_index(key: str) -> int:
    return int(key.split("_", 1)[1])


def _cache_key(captioner) -> str:
    """Cached outputs are only valid for the same base models, views, prompt and pixel budget."""
    c = captioner.config
    text = "|".join(map(str, (c.qwen_model, c.clip_model, c.clip_pretrained, c.clip_tokens, c.views, c.prompt,
                               c.label_views, c.min_pixels, c.max_pixels)))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
