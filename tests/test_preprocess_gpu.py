"""GPU-only checks of preprocessing on the device: skipped where there is no CUDA device (CI has none).

On a GPU, torchvision resizes uint8 frames in float and rounds back, and nvJPEG decodes JPEGs with
its own IDCT: each may differ from the CPU by a level. Run with `python -m pytest
tests/test_preprocess_gpu.py` (scripts/bench-gpu.sh runs it in its gpu-tests step).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2VLImageProcessor

from clip_vlm_core.images import EncodedImage
from clip_vlm_core.model import SceneCaptioner
from clip_vlm_core.model.image_decode import decode_images
from clip_vlm_core.model.preprocess import ClipPixelSpec, ImagePreprocessor, QwenPixelSpec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def camera_frame(seed: int, height: int = 900, width: int = 1600) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 40 + 1, width // 40 + 1, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def jpeg(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=90)
    return out.getvalue()


def levels(a: torch.Tensor, b: torch.Tensor) -> float:
    diff = (a.float().cpu().reshape(a.shape[0], 3, -1) - b.float().cpu().reshape(b.shape[0], 3, -1)).abs()
    return float((diff * torch.tensor(OPENAI_STD).view(1, 3, 1) * 255).max())


def test_pixels_on_the_gpu_are_within_one_uint8_level_of_the_cpu():
    processor = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056)
    pixels = ImagePreprocessor(QwenPixelSpec.of(processor), ClipPixelSpec())
    frames = [torch.from_numpy(camera_frame(seed)).permute(2, 0, 1) for seed in (1, 2)]
    cpu, gpu = pixels(frames, "cpu"), pixels(frames, "cuda")
    assert gpu["pixel_values"].device.type == "cuda" and torch.equal(gpu["image_grid_thw"].cpu(), cpu["image_grid_thw"])
    assert levels(gpu["pixel_values"], cpu["pixel_values"]) <= 1.0 + 1e-4
    assert levels(gpu["clip_pixels"], cpu["clip_pixels"]) <= 1.0 + 1e-4


def test_nvjpeg_decodes_a_batch_on_the_gpu_close_to_the_cpu_decoder():
    images = [EncodedImage.checked(jpeg(camera_frame(seed))) for seed in (3, 4, 5)]
    on_gpu, on_cpu = decode_images(images, "cuda"), decode_images(images, "cpu")
    for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
        assert isinstance(gpu, torch.Tensor) and gpu.device.type == "cuda" and gpu.shape == cpu.shape
        # Two IDCTs and chroma upsamplers: a few levels apart at most, on average far less than one.
        diff = (gpu.cpu().int() - cpu.int()).abs()
        assert int(diff.max()) <= 4 and float(diff.float().mean()) < 0.5


def test_captions_from_jpeg_bytes_on_the_gpu_equal_the_cpus():
    from clip_vlm_core.model.checkpoint import default_model_path

    samples = default_model_path().parent / "samples"  # drawn scenes the embedded model describes surely
    encoded = {view: EncodedImage.checked((samples / f"{name}.jpg").read_bytes())
               for view, name in (("CAM_FRONT", "front"), ("CAM_BACK", "back"))}
    gpu = SceneCaptioner.from_pretrained(None, device="cuda", dtype="float32")
    inputs = gpu.prepare([encoded], device="cuda")
    assert all(t.device.type == "cuda" for t in inputs.values())
    cpu = SceneCaptioner.from_pretrained(None, device="cpu")
    reference = cpu.prepare([encoded])
    assert torch.equal(inputs["input_ids"].cpu(), reference["input_ids"])
    assert levels(inputs["clip_pixels"], reference["clip_pixels"]) <= 5.0  # decoder differences included
    assert gpu.caption([encoded], max_new_tokens=48) == cpu.caption([encoded], max_new_tokens=48)
