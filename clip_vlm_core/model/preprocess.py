"""Camera frames to the model's pixel inputs as tensor operations, batched, on the model's device.

What transformers' Qwen2.5-VL image processor and OpenCLIP's transform do, done once for a whole
batch of views and pairs, from uint8 frames:

- Qwen: resize to the processor's grid (`smart_resize`: multiples of patch x merge within the
  min/max pixel budget), rescale and normalise, then the patch layout the vision tower reads
  (`pixel_values` [patches, C x temporal x patch x patch], `image_grid_thw` [images, 3]);
- CLIP: the whole frame squashed to the encoder's square input, normalised (`clip_pixels`).

The arithmetic is the processor's own (uint8 bicubic resize with antialiasing, then the fused
`(x - 255 mean) / (255 std)` in float32), so on the CPU `pixel_values` equal the processor's bit
for bit; CLIP's resize is torchvision's rather than PIL's and stays within one uint8 level of it
(tests/test_preprocess.py checks both). Frames are moved to the device as uint8, a quarter of the
bytes of the float tensors made from them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvF

# Qwen2.5-VL's released preprocessor_config.json (and OpenCLIP's OPENAI_DATASET_MEAN/STD).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_INTERPOLATIONS = {0: InterpolationMode.NEAREST_EXACT, 1: InterpolationMode.LANCZOS, 2: InterpolationMode.BILINEAR,
                   3: InterpolationMode.BICUBIC, 4: InterpolationMode.BOX, 5: InterpolationMode.HAMMING}


@dataclass(frozen=True)
class QwenPixelSpec:
    """The settings of a Qwen2-VL image processor that decide its output (defaults: the released 2.5-VL)."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 3136
    max_pixels: int = 12845056
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255
    interpolation: InterpolationMode = InterpolationMode.BICUBIC
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    @classmethod
    def of(cls, image_processor: Any) -> QwenPixelSpec:
        """Read the settings from a transformers Qwen2VLImageProcessor (as loaded with the model)."""
        ip, size = image_processor, image_processor.size
        resample = ip.resample
        return cls(
            patch_size=ip.patch_size,
            merge_size=ip.merge_size,
            temporal_patch_size=ip.temporal_patch_size,
            min_pixels=size["shortest_edge"],
            max_pixels=size["longest_edge"],
            mean=tuple(ip.image_mean),
            std=tuple(ip.image_std),
            rescale_factor=ip.rescale_factor,
            interpolation=resample if isinstance(resample, InterpolationMode) else _INTERPOLATIONS[int(resample)],
            do_resize=ip.do_resize,
            do_rescale=ip.do_rescale,
            do_normalize=ip.do_normalize,
        )

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the processor resizes a frame to (transformers' own smart_resize)."""
        if not self.do_resize:
            return height, width
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        factor = self.patch_size * self.merge_size
        return smart_resize(height, width, factor=factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def tokens(self, height: int, width: int) -> int:
        """Visual tokens one frame of this size becomes (image-pad tokens in the prompt)."""
        h, w = self.resized(height, width)
        return (h // self.patch_size) * (w // self.patch_size) // self.merge_size**2


@dataclass(frozen=True)
class ClipPixelSpec:
    """OpenCLIP's eval transform as the captioner builds it: squash to size x size, then normalise."""

    size: int = 224
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    interpolation: InterpolationMode = InterpolationMode.BICUBIC


class ImagePreprocessor:
    """uint8 frames ([3, H, W] tensors, any strides, any device) -> the model's pixel inputs on `device`."""

    def __init__(self, qwen: QwenPixelSpec, clip: ClipPixelSpec) -> None:
        self.qwen = qwen
        self.clip = clip
        self._scratch = threading.local()

    def __call__(
        self, images: Sequence[torch.Tensor], device: torch.device | str = "cpu", reuse_output: bool = False
    ) -> dict[str, torch.Tensor]:
        """`pixel_values`, `image_grid_thw` (Qwen, in image order) and `clip_pixels`, all on `device`.

        `reuse_output`: on the CPU, write `pixel_values` into this thread's buffer from the last call of
        the same size, which the caller must no longer hold (the captioner's own caption() does this):
        a fresh 68 MB tensor per pair costs more in page faults than filling it does.
        """
        device = torch.device(device)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"image {index} must be a [3, H, W] uint8 tensor, got {image.dtype} {tuple(image.shape)}")
            groups.setdefault((int(image.shape[1]), int(image.shape[2])), []).append(index)
        single = len(groups) == 1  # the usual case: one group, its tensors already in image order
        patches: list[torch.Tensor | None] = [None] * len(images)
        grids: list[list[int] | None] = [None] * len(images)
        clip: list[torch.Tensor | None] = [None] * len(images)
        # Frames of one size go through every step together: a pair of cameras is one batch of work.
        for (height, width), indices in groups.items():
            batch = self._stack_channels_last([images[i] for i in indices], device)
            qwen_pixels, grid = self._qwen(batch, height, width, reuse_output and single and device.type == "cpu")
            clip_pixels = self._clip(batch)
            per_image = qwen_pixels.shape[0] // len(indices)
            for n, i in enumerate(indices):
                patches[i] = qwen_pixels[n * per_image : (n + 1) * per_image]
                grids[i] = grid
                clip[i] = clip_pixels[n]
        return {
            "pixel_values": qwen_pixels if single else torch.cat(patches),
            "image_grid_thw": torch.tensor(grids, dtype=torch.long, device=device),
            "clip_pixels": clip_pixels if single else torch.stack(clip),
        }

    def clip_only(self, images: Sequence[torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor:
        """[n, 3, S, S] `clip_pixels` alone, for frames that have no Qwen tokens (context views, past frames)."""
        device = torch.device(device)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault((int(image.shape[1]), int(image.shape[2])), []).append(index)
        out = torch.empty((len(images), 3, self.clip.size, self.clip.size), dtype=torch.float32, device=device)
        for indices in groups.values():
            out[indices] = self._clip(self._stack_channels_last([images[i] for i in indices], device))
        return out

    def _qwen(self, batch: torch.Tensor, height: int, width: int, reuse: bool) -> tuple[torch.Tensor, list[int]]:
        """[n, 3, H, W] uint8 -> ([n x gh x gw, 3 x T x P x P] float32, [1, gh, gw])."""
        spec = self.qwen
        new_height, new_width = spec.resized(height, width)
        if (new_height, new_width) != (height, width):
            batch = tvF.resize(batch, [new_height, new_width], interpolation=spec.interpolation, antialias=True)
        n, c = batch.shape[:2]
        p, m, t = spec.patch_size, spec.merge_size, spec.temporal_patch_size
        gh, gw = new_height // p, new_width // p
        shape = (n * gh * gw, c, t, p * p)
        out = self._buffer("pixel_values", shape, torch.float32, batch.device) if reuse else None
        out = torch.empty(shape, dtype=torch.float32, device=batch.device) if out is None else out
        # The processor's layout: [image, row block, column block, merge row, merge column, channel,
        # (time), patch row, patch column], read straight from the uint8 frames into the first time step.
        blocks = batch.reshape(n, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        out.view(n, gh // m, gw // m, m, m, c, t, p, p)[:, :, :, :, :, :, 0].copy_(blocks)
        first = out[:, :, :1]
        mean, std = self._qwen_mean_std(batch.device)
        if mean is not None:
            first.sub_(mean.view(1, c, 1, 1)).div_(std.view(1, c, 1, 1))
        elif spec.do_rescale:
            first.mul_(spec.rescale_factor)
        # A still image is its own second frame in time: the processor repeats it, and so do we.
        for step in range(1, t):
            out[:, :, step : step + 1].copy_(first)
        return out.view(n * gh * gw, c * t * p * p), [1, gh, gw]

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """This thread's buffer of that shape, made on first use."""
        buffers = self._scratch.__dict__.setdefault("buffers", {})
        key = (name, shape, dtype, device)
        if key not in buffers:
            buffers.clear()  # one size at a time: a stream does not change its frame size
            buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return buffers[key]

    def _stack_channels_last(self, images: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
        """[n, 3, H, W] uint8 on `device`, stored channels-last: the layout decoders give (HxWx3) and the
        one torchvision's uint8 resize works in, so neither side pays for a transposition."""
        frames = [image.permute(1, 2, 0) for image in images]
        if all(frame.device.type == "cpu" for frame in frames):
            # numpy's copy is a plain memcpy; torch's runs as a parallel region, which on a busy CPU
            # was measured to wait for a descheduled thread for tens of milliseconds.
            stacked = torch.from_numpy(np.stack([frame.numpy() for frame in frames]))
        else:
            stacked = torch.stack([frame.to(device, non_blocking=True) for frame in frames])
        return stacked.to(device, non_blocking=True).permute(0, 3, 1, 2)

    def _qwen_mean_std(self, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        spec = self.qwen
        if not spec.do_normalize:
            return None, None
        mean, std = torch.tensor(spec.mean, device=device), torch.tensor(spec.std, device=device)
        if spec.do_rescale:  # the processor's fused form: (x - 255 mean) / (255 std), in float32
            return mean * (1.0 / spec.rescale_factor), std * (1.0 / spec.rescale_factor)
        return mean, std

    def _clip(self, batch: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] uint8 -> [n, 3, S, S] float32, as OpenCLIP's Resize + ToTensor + Normalize."""
        spec = self.clip
        small = tvF.resize(batch, [spec.size, spec.size], interpolation=spec.interpolation, antialias=True)
        pixels = small.to(torch.float32).div_(255.0)
        return tvF.normalize(pixels, list(spec.mean), list(spec.std), inplace=True)

