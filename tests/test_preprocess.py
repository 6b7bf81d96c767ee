"""The captioner's inputs as tensor operations equal transformers' processor and OpenCLIP's transform.

References are the real classes: Qwen2VLImageProcessor with Qwen2.5-VL's released settings (patch 14,
merge 2, temporal patch 2, 3136..12845056 pixels, OpenAI CLIP mean/std, bicubic), Qwen2_5_VLProcessor
for the token ids, and open_clip.image_transform for CLIP's input.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

from clip_vlm_core.errors import UserError
from clip_vlm_core.images import EncodedImage
from clip_vlm_core.model import SceneCaptioner
from clip_vlm_core.model.image_decode import ImageDecodeError, decode_images
from clip_vlm_core.model.preprocess import ClipPixelSpec, ImagePreprocessor, QwenPixelSpec
from clip_vlm_core.model.tiny import QWEN_CHAT_TEMPLATE

RELEASED = {"min_pixels": 3136, "max_pixels": 12845056}
CAP_480_TOKENS = 401408  # 512 x 28 x 28: a 1600x900 frame becomes 840x448
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def camera_frame(seed: int, height: int = 900, width: int = 1600) -> np.ndarray:
    """Smooth shapes plus sensor noise: resizing such a frame exercises every filter tap."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 40 + 1, width // 40 + 1, 3), dtype=np.uint8)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)


def uint8_levels(a: torch.Tensor, b: torch.Tensor, std=OPENAI_STD) -> float:
    """The largest difference of two normalised [N, 3, ...] tensors, in uint8 levels of their channel."""
    diff = (a.float().flatten(2) - b.float().flatten(2)).abs()
    return float((diff * torch.tensor(std).view(1, 3, 1) * 255).max())


# -- Qwen pixels ----------------------------------------------------------------------------------
@pytest.mark.parametrize("max_pixels, grid", [(RELEASED["max_pixels"], [1, 64, 114]), (CAP_480_TOKENS, [1, 32, 60])],
                         ids=["released-1596x896", "max-pixels-840x448"])
def test_pixel_values_equal_the_released_processor_bit_for_bit(max_pixels, grid):
    processor = Qwen2VLImageProcessor(min_pixels=RELEASED["min_pixels"], max_pixels=max_pixels)
    frames = [camera_frame(1), camera_frame(2)]
    expected = processor([Image.fromarray(f) for f in frames], return_tensors="pt")
    ours = ImagePreprocessor(QwenPixelSpec.of(processor), ClipPixelSpec())([chw(f) for f in frames])
    assert ours["image_grid_thw"].tolist() == [grid, grid] == expected["image_grid_thw"].tolist()
    assert torch.equal(ours["pixel_values"], expected["pixel_values"])


def test_frames_of_different_sizes_keep_their_order():
    processor = Qwen2VLImageProcessor(**RELEASED)
    frames = [camera_frame(1), camera_frame(2, 480, 640), camera_frame(3), camera_frame(4, 30, 50)]
    expected = processor([Image.fromarray(f) for f in frames], return_tensors="pt")
    ours = ImagePreprocessor(QwenPixelSpec.of(processor), ClipPixelSpec())([chw(f) for f in frames])
    assert torch.equal(ours["image_grid_thw"], expected["image_grid_thw"])
    assert torch.equal(ours["pixel_values"], expected["pixel_values"])


def test_spec_reads_the_released_settings_from_the_processor():
    spec = QwenPixelSpec.of(Qwen2VLImageProcessor(**RELEASED))
    assert spec == QwenPixelSpec()
    assert spec.resized(900, 1600) == (896, 1596) and spec.tokens(900, 1600) == 1824


# -- CLIP pixels ----------------------------------------------------------------------------------
def test_clip_pixels_are_within_one_uint8_level_of_openclip():
    transform = open_clip.image_transform(224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                          std=open_clip.OPENAI_DATASET_STD, resize_mode="squash")
    frames = [camera_frame(5), camera_frame(6), camera_frame(7, 480, 640)]
    expected = torch.stack([transform(Image.fromarray(f)) for f in frames])
    ours = ImagePreprocessor(QwenPixelSpec(), ClipPixelSpec())([chw(f) for f in frames])["clip_pixels"]
    assert ours.shape == expected.shape == (3, 3, 224, 224)
    assert uint8_levels(ours, expected) <= 1.0 + 1e-4


# -- the captioner's prepare() against the processor path it replaced -------------------------------
@pytest.fixture
def embedded(embedded_captioner):
    return embedded_captioner  # loaded once for the session (conftest.py)


@pytest.fixture
def released(embedded):
    """The embedded model with Qwen2.5-VL's released processor settings (full-resolution frames)."""
    tokenizer = embedded.processor.tokenizer
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**RELEASED), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN_CHAT_TEMPLATE)
    return SceneCaptioner(embedded.model, processor, embedded.config, embedded.device, "released settings")


def processor_inputs(captioner: SceneCaptioner, batch, targets=None, instructions=None) -> dict[str, torch.Tensor]:
    """The captioner's prepare() as it was: PIL images through the processor and OpenCLIP's transform."""
    flat = [Image.fromarray(sample[view]) for sample in batch for view in captioner.views]
    texts = [captioner.inputs.prompt_text(None if instructions is None else instructions[i]) for i in range(len(batch))]
    if targets is not None:
        eos = captioner.processor.tokenizer.eos_token
        texts = [text + target.strip() + eos for text, target in zip(texts, targets, strict=True)]
    inputs = dict(captioner.processor(text=texts, images=flat, padding=True, return_tensors="pt"))
    inputs["clip_pixels"] = captioner.model.clip.preprocess(flat)
    if targets is not None:
        inputs["labels"] = captioner.inputs.labels(inputs["input_ids"], targets)
    return inputs


def assert_same_inputs(ours: dict, expected: dict) -> None:
    assert sorted(ours) == sorted(expected)
    for key, value in expected.items():
        if key == "clip_pixels":
            assert uint8_levels(ours[key], value) <= 1.0 + 1e-4
        else:
            assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"instructions": ["What colour is the car ahead?", None]},
     {"targets": ["It is night. A red bus is ahead.", "It is daytime."]}],
    ids=["caption-prompt", "per-sample-question", "training-labels"],
)
def test_prepare_at_full_resolution_equals_the_processor_path(released, kwargs):
    batch = [{"CAM_FRONT": camera_frame(8), "CAM_BACK": camera_frame(9)},
             {"CAM_FRONT": camera_frame(10, 480, 640), "CAM_BACK": camera_frame(11)}]
    ours = released.prepare(batch, **kwargs)
    assert_same_inputs(ours, processor_inputs(released, batch, **kwargs))
    assert int((ours["input_ids"][0] == released.prompt_tokens.image_token_id).sum()) == 2 * 1824


def test_prepare_with_the_embedded_models_own_processor_equals_it(embedded):
    batch = [{"CAM_FRONT": camera_frame(12), "CAM_BACK": camera_frame(13)}]
    assert_same_inputs(embedded.prepare(batch, targets=["A bus."]), processor_inputs(embedded, batch, targets=["A bus."]))


def test_jpeg_bytes_give_the_inputs_of_the_frames_opencv_decodes(released):
    arrays = {"CAM_FRONT": camera_frame(14), "CAM_BACK": camera_frame(15)}
    encoded = {view: EncodedImage.checked(jpeg(a)) for view, a in arrays.items()}
    decoded = {view: cv2.cvtColor(cv2.imdecode(np.frombuffer(e.data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
               for view, e in encoded.items()}
    ours, expected = released.prepare([encoded]), released.prepare([decoded])
    assert all(torch.equal(ours[k], expected[k]) for k in expected)


def test_a_frame_that_cannot_be_decoded_is_named(released):
    good = EncodedImage.checked(jpeg(camera_frame(16, 90, 160)))
    corrupt = EncodedImage(good.data[:200] + bytes(300) + good.data[-2:], good.width, good.height)
    with pytest.raises(UserError, match="sample 0 view CAM_BACK: JPEG cannot be decoded"):
        released.prepare([{"CAM_FRONT": good, "CAM_BACK": corrupt}])


def test_reused_output_is_one_buffer_per_thread_and_plain_prepare_is_fresh(released):
    batch = [{"CAM_FRONT": camera_frame(17), "CAM_BACK": camera_frame(18)}]
    first = released.prepare(batch, reuse_output=True)["pixel_values"]
    second = released.prepare(batch, reuse_output=True)["pixel_values"]
    fresh = released.prepare(batch)["pixel_values"]
    assert first.data_ptr() == second.data_ptr() != fresh.data_ptr()
    assert torch.equal(second, fresh)


# -- prompt ids -------------------------------------------------------------------------------------
def test_prompt_ids_are_built_once_per_instruction_and_frame_size(released):
    tokens = released.prompt_tokens
    caption = tokens.ids(None, (1824, 1824))
    assert tokens.ids(None, (1824, 1824)) is caption
    assert tokens.ids(None, (480, 480)) is not caption
    question = tokens.ids("Is the light green?", (1824, 1824))
    assert question is not caption and tokens.ids("Is the light green?", (1824, 1824)) is question


def test_an_instruction_holding_an_image_placeholder_is_refused(released):
    sample = {"CAM_FRONT": camera_frame(19, 90, 160), "CAM_BACK": camera_frame(20, 90, 160)}
    with pytest.raises(UserError, match="must not contain <\\|image_pad\\|>"):
        released.prepare([sample], instructions=["what is in <|image_pad|>?"])


# -- decoding (the GPU path's wiring, with torchvision's own decoder on the CPU) ----------------------
@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_batched_jpeg_decoder_decodes_jpegs_and_the_cpu_decoder_the_rest():
    from torchvision.io import ImageReadMode, decode_jpeg

    frame = camera_frame(21, 90, 160)
    good = EncodedImage.checked(jpeg(frame))
    other = EncodedImage.checked(png(frame))
    corrupt = EncodedImage(good.data[:200] + bytes(300) + good.data[-2:], good.width, good.height)
    batches: list[int] = []

    def torchvision_decoder(data: list[torch.Tensor]) -> list[torch.Tensor]:
        batches.append(len(data))
        return decode_jpeg(data, mode=ImageReadMode.RGB, device="cpu")

    out = decode_images([good, other, corrupt, good], "cpu", jpeg_decoder=torchvision_decoder)
    # One call for the three JPEGs; the corrupt one fails it, so each is tried alone, then on the CPU.
    assert batches == [3, 1, 1, 1]
    assert isinstance(out[2], ImageDecodeError)
    assert torch.equal(out[1], chw(frame))  # the PNG, losslessly, through OpenCV
    cpu = decode_images([good], "cpu")[0]
    assert out[0].shape == (3, 90, 160) and (out[0].int() - cpu.int()).abs().max() <= 2
    assert torch.equal(out[0], out[3])


def test_encoded_frame_whose_stated_size_lies_is_refused_before_decoding():
    bomb = png(np.zeros((9000, 9000, 3), np.uint8))
    out = decode_images([EncodedImage(bomb, 64, 64)], "cpu")
    assert isinstance(out[0], ImageDecodeError) and "over the limit" in str(out[0])
    with pytest.raises(UserError, match="over the limit"):
        EncodedImage.checked(bomb)
