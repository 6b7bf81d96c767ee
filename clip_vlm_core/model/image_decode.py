"""Encoded frames (JPEG, PNG, ...) to uint8 [3, H, W] RGB tensors, on the GPU where one is used.

On a GPU, the JPEGs of a batch are decoded in one `torchvision.io.decode_jpeg(..., device="cuda")`
call (nvJPEG); what that cannot decode (a PNG, a JPEG nvJPEG refuses, a library that fails) is
decoded on the CPU by OpenCV (libjpeg-turbo, libpng) and uploaded. On the CPU, OpenCV decodes
everything. A frame that no decoder can read comes back as an `ImageDecodeError` in its place, so
a stream can count that one frame as bad and caption the rest.

EXIF orientation is ignored on every path, as nvJPEG and PIL do, so a frame decodes to the same
pixels wherever it is decoded.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

from clip_vlm_core.errors import UserError
from clip_vlm_core.images import EncodedImage, check_encoded

log = logging.getLogger(__name__)

# A batched JPEG decoder: encoded bytes (1-D uint8 CPU tensors) -> [3, H, W] uint8 RGB tensors.
JpegDecoder = Callable[[list[torch.Tensor]], list[torch.Tensor]]


class ImageDecodeError(ValueError):
    """An encoded frame that cannot be decoded; the message is one short phrase."""


def decode_images(
    images: Sequence[EncodedImage], device: torch.device | str, jpeg_decoder: JpegDecoder | None = None
) -> list[torch.Tensor | ImageDecodeError]:
    """Each frame as a [3, H, W] uint8 RGB tensor (on `device` when decoded there, else on the CPU),
    or the error that stopped it. `jpeg_decoder` overrides the batched JPEG decoder (default: nvJPEG
    on a CUDA device, none on the CPU)."""
    device = torch.device(device)
    if jpeg_decoder is None and device.type == "cuda":
        jpeg_decoder = _nvjpeg(device)
    out: list[torch.Tensor | ImageDecodeError | None] = [None] * len(images)
    for i, image in enumerate(images):
        # The header was read when the frame came in; read it again here, so bytes whose stated size
        # was never checked (or was stated wrong) are refused before a decoder allocates for them.
        try:
            if check_encoded(image.data, "compressed image") != (image.width, image.height):
                out[i] = ImageDecodeError(f"compressed image is not the {image.width}x{image.height} it was said to be")
        except UserError as exc:
            out[i] = ImageDecodeError(str(exc))
    jpegs = [i for i, image in enumerate(images) if out[i] is None and image.is_jpeg]
    if jpeg_decoder is not None and jpegs:
        for i, tensor in zip(jpegs, _decode_batch([images[i] for i in jpegs], jpeg_decoder), strict=True):
            out[i] = tensor
    for i, image in enumerate(images):
        if out[i] is None:
            out[i] = _decode_on_cpu(image)
            if jpeg_decoder is not None and i in jpegs and isinstance(out[i], torch.Tensor):
                _warn_once(f"the batched JPEG decoder failed on a frame the CPU decoder reads ({image.width}x"
                           f"{image.height}); such frames are decoded on the CPU")
    return out  # type: ignore[return-value]


def _nvjpeg(device: torch.device) -> JpegDecoder:
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(data: list[torch.Tensor]) -> list[torch.Tensor]:
        # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec, which this project
        # does not depend on; should they go, the CPU decoder below takes every frame.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    return decode


def _decode_batch(images: list[EncodedImage], decoder: JpegDecoder) -> list[torch.Tensor | None]:
    """The batched decoder's result per frame, None where it failed (the CPU decoder tries those)."""
    data = [torch.frombuffer(bytearray(image.data), dtype=torch.uint8) for image in images]
    try:
        decoded: list[torch.Tensor | None] = list(decoder(data))
    except RuntimeError as exc:
        # One bad frame fails the whole batch call: decode one by one to find it, keep the others.
        log.debug("batched JPEG decoding failed (%s); decoding frame by frame", exc)
        decoded = []
        for single in data:
            try:
                decoded.append(decoder([single])[0])
            except RuntimeError:
                decoded.append(None)
    return [t if t is not None and tuple(t.shape) == (3, im.height, im.width) else None
            for t, im in zip(decoded, images, strict=True)]


def _decode_on_cpu(image: EncodedImage) -> torch.Tensor | ImageDecodeError:
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION  # 8-bit RGB whatever the file holds
    array = cv2.imdecode(np.frombuffer(image.data, np.uint8), flags)
    if array is None or array.ndim != 3 or array.shape[:2] != (image.height, image.width):
        return ImageDecodeError(f"{'JPEG' if image.is_jpeg else 'compressed image'} cannot be decoded")
    return torch.from_numpy(array).permute(2, 0, 1)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)
