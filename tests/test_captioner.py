"""The captioner on tiny models built from the real Qwen2.5-VL and OpenCLIP classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clip_vlm_core.errors import UserError
from clip_vlm_core.model import SceneCaptioner
from clip_vlm_core.model.tiny import (
    tiny_captioner_config,
)


@pytest.fixture(scope="module")
def captioner(tiny_base):
    return SceneCaptioner.build(tiny_captioner_config(tiny_base), device="cpu")


def frames(seed: int, front_hw=(90, 160), back_hw=(90, 160)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "CAM_FRONT": rng.integers(0, 256, (*front_hw, 3), dtype=np.uint8),
        "CAM_BACK": rng.integers(0, 256, (*back_hw, 3), dtype=np.uint8),
    }


def plain_qwen_logits(captioner: SceneCaptioner, inputs: dict) -> torch.Tensor:
    qwen = captioner.model.base_qwen
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
    return qwen(**{k: inputs[k] for k in keys}).logits


def plain_qwen_caption(captioner: SceneCaptioner, inputs: dict, max_new_tokens: int) -> str:
    qwen = captioner.model.base_qwen
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
    out = qwen.generate(**{k: inputs[k] for k in keys}, max_new_tokens=max_new_tokens, do_sample=False)
    return captioner.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("views", [("CAM_FRONT",), ("CAM_FRONT", "CAM_BACK")])
def test_untrained_connector_reproduces_plain_qwen_logits_and_captions(tiny_base, views):
    captioner = SceneCaptioner.build(tiny_captioner_config(tiny_base, views=views), device="cpu")
    sample = {v: frames(3)[v] for v in views}
    inputs = captioner.prepare([sample])
    with torch.no_grad():
        fused = captioner.model(**inputs).logits
        plain = plain_qwen_logits(captioner, inputs)
    assert torch.equal(fused, plain)
    assert captioner.caption([sample], max_new_tokens=12) == [plain_qwen_caption(captioner, inputs, 12).strip()]


def test_open_gate_changes_the_logits(captioner):
    inputs = captioner.prepare([frames(4)])
    with torch.no_grad():
        before = captioner.model(**inputs).logits
        captioner.model.connector.gate.fill_(1.0)
        try:
            after = captioner.model(**inputs).logits
        finally:
            captioner.model.connector.gate.fill_(0.0)
    assert not torch.allclose(before, after)


def test_only_connector_and_lora_parameters_train(tiny_base):
    captioner = SceneCaptioner.build(tiny_captioner_config(tiny_base), device="cpu", trainable=True)
    trainable = [n for n, p in captioner.model.named_parameters() if p.requires_grad]
    assert trainable, "nothing would train"
    assert all(n.startswith("connector.") or ".lora_" in n for n in trainable)
    assert any(n.startswith("connector.") for n in trainable) and any(".lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable if ".lora_" in n), "LoRA must not touch the vision tower"
    counts = captioner.parameter_counts()
    print(f"tiny captioner parameters: {counts}")
    assert counts["trainable"] == sum(p.numel() for p in captioner.model.parameters() if p.requires_grad)
    assert 0 < counts["trainable"] < counts["total"]


def test_batched_greedy_captions_equal_one_at_a_time_with_mixed_sizes(captioner):
    batch = [frames(10), frames(11, (120, 200), (60, 240)), frames(12, (200, 120), (90, 160))]
    batched = captioner.caption(batch, max_new_tokens=16)
    single = [captioner.caption([sample], max_new_tokens=16)[0] for sample in batch]
    assert batched == single
    assert len(set(batched)) > 1, "different scenes should get different captions"


def test_beam_search_returns_one_caption_per_sample(captioner):
    out = captioner.caption([frames(1), frames(2)], max_new_tokens=8, num_beams=3)
    assert len(out) == 2 and all(isinstance(c, str) for c in out)


def test_labels_cover_only_the_caption_tokens(captioner):
    targets = ["A red car is ahead.", "Nothing is behind."]
    inputs = captioner.prepare([frames(1), frames(2)], targets=targets)
    tokenizer = captioner.processor.tokenizer
    for row, target in enumerate(targets):
        labelled = inputs["labels"][row][inputs["labels"][row] != -100]
        assert tokenizer.decode(labelled) == target + tokenizer.eos_token


def test_caption_loss_and_gradients_equal_transformers_full_logits_loss(tiny_base):
    """The loss computes logits only over the captions; it must equal transformers' loss over all logits."""
    captioner = SceneCaptioner.build(tiny_captioner_config(tiny_base), device="cpu", trainable=True)
    with torch.no_grad():
        captioner.model.connector.gate.fill_(0.5)  # so the connector's gradients are not all zero
    batch = [frames(1), frames(2, front_hw=(56, 84))]
    inputs = captioner.prepare(batch, targets=["a car is ahead.", "nothing is behind us on the road."])
    assert (inputs["attention_mask"] == 0).any(), "the batch must be left-padded"
    trainable = [p for p in captioner.model.parameters() if p.requires_grad]

    def loss_and_grads(loss_fn):
        for p in trainable:
            p.grad = None
        loss = loss_fn()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in trainable]

    def full_logits_loss():
        mm = captioner.model.encoder_outputs(inputs["image_grid_thw"], inputs["pixel_values"], inputs["clip_pixels"])
        keys = ("input_ids", "attention_mask", "image_grid_thw", "mm_token_type_ids", "labels")
        return captioner.model.qwen(**{k: inputs[k] for k in keys}, mm_encoder_outputs=mm).loss

    ours, our_grads = loss_and_grads(lambda: captioner.model(**inputs).loss)
    reference, reference_grads = loss_and_grads(full_logits_loss)
    torch.testing.assert_close(ours, reference)
    for got, expected in zip(our_grads, reference_grads, strict=True):
        torch.testing.assert_close(got, expected)
    assert any(g.abs().sum() > 0 for g in our_grads)


def test_save_and_load_round_trip_keeps_logits_and_captions(tiny_base, tmp_path):
    captioner = SceneCaptioner.build(tiny_captioner_config(tiny_base), device="cpu", trainable=True)
    torch.manual_seed(1)
    with torch.no_grad():  # stand-in for training: open the gate, give LoRA non-zero weights
        captioner.model.connector.gate.fill_(0.7)
        for name, param in captioner.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    captioner.model.eval()
    # Beside its base models: a checkpoint's config may only name folders inside the folder holding it.
    checkpoint = captioner.save_pretrained(tiny_base["qwen"].parent / f"ckpt-{tmp_path.name}")
    assert {p.name for p in checkpoint.iterdir()} == {"clip_vlm_config.json", "connector.safetensors", "adapter"}
    loaded = SceneCaptioner.from_pretrained(checkpoint, device="cpu")
    inputs = captioner.prepare([frames(5)])
    with torch.no_grad():
        assert torch.equal(captioner.model(**inputs).logits, loaded.model(**inputs).logits)
    assert captioner.caption([frames(5)], max_new_tokens=12) == loaded.caption([frames(5)], max_new_tokens=12)
    with loaded.model.base_model_mode(), torch.no_grad():  # base mode: gate bypassed, adapters off
        assert torch.equal(loaded.model(**inputs).logits, plain_qwen_logits(loaded, inputs))


def test_a_loaded_base_model_runs_its_own_layers_and_switches_modes(untrained_checkpoint):
    """transformers 5.25 loads with hub kernels by default (code fetched at load time, swapped into layers); a
    checkpoint loads only its weights, and train()/eval() (which re-kernelize a model that uses them) just switch."""
    loaded = SceneCaptioner.from_pretrained(untrained_checkpoint, device="cpu", trainable=True)
    qwen = loaded.model.base_qwen
    assert qwen.use_kernels is False
    loaded.model.train()
    assert qwen.training and qwen.use_kernels is False
    loaded.model.eval()
    assert not qwen.training and len(loaded.caption([frames(6)], max_new_tokens=4)) == 1


def test_embedded_default_model_loads_without_arguments():
    captioner = SceneCaptioner.from_pretrained(device="cpu")
    assert captioner.views == ("CAM_FRONT", "CAM_BACK")
    assert len(captioner.caption([frames(0)], max_new_tokens=4)) == 1


def test_images_in_any_common_form_are_accepted(captioner):
    from PIL import Image

    rgb = frames(6)["CAM_FRONT"]
    forms = [rgb, rgb[:, :, 0], rgb[:, :, :1], np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
             Image.fromarray(rgb).convert("L"), Image.fromarray(rgb).convert("RGBA"), Image.fromarray(rgb).convert("P")]
    for form in forms:
        assert len(captioner.caption([{"CAM_FRONT": form, "CAM_BACK": rgb}], max_new_tokens=2)) == 1


@pytest.mark.parametrize(
    "batch, message",
    [
        ([], "the batch is empty"),
        ([{"CAM_FRONT": np.zeros((9, 9, 3), np.uint8)}], "no image for view(s) ['CAM_BACK']"),
        ([{**frames(0), "CAM_LEFT": np.zeros((9, 9, 3), np.uint8)}], "unknown view(s) ['CAM_LEFT']"),
        ([{**frames(0), "CAM_BACK": np.zeros((0, 9, 3), np.uint8)}], "zero size"),
        ([{**frames(0), "CAM_BACK": np.zeros((9, 9, 3), np.float32)}], "uint8"),
        ([{**frames(0), "CAM_BACK": np.zeros((9, 9, 2), np.uint8)}], "HxWx3"),
    ],
)
def test_bad_batches_are_one_clear_sentence(captioner, batch, message):
    with pytest.raises(UserError, match=None) as err:
        captioner.caption(batch)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.fixture
def saved_checkpoint(untrained_checkpoint):
    return untrained_checkpoint  # made once for the session (conftest.py); copied before it is damaged


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: (c / "clip_vlm_config.json").unlink(), "has no clip_vlm_config.json"),
        (lambda c: (c / "clip_vlm_config.json").write_text("{not json"), "not valid JSON"),
        (lambda c: (c / "clip_vlm_config.json").write_text('{"qwen_modle": "x"}'), "unknown key(s) ['qwen_modle']"),
        (lambda c: (c / "connector.safetensors").unlink(), "connector.safetensors is missing"),
        (lambda c: (c / "connector.safetensors").write_bytes(b"\x00" * 20), "connector.safetensors is corrupt"),
        (lambda c: (c / "adapter").mkdir(), "has no adapter_config.json"),
    ],
)
def test_damaged_checkpoint_is_one_clear_error(saved_checkpoint, tmp_path, damage, message):
    import shutil

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(saved_checkpoint, checkpoint)
    shutil.copytree(saved_checkpoint.parent / "base", tmp_path / "base")
    damage(checkpoint)
    with pytest.raises(UserError) as err:
        SceneCaptioner.from_pretrained(checkpoint, device="cpu")
    assert message in str(err.value)


def test_an_instruction_per_sample_replaces_the_prompt_for_that_sample_only(captioner):
    question = "What colour is the vehicle ahead?"
    mixed = captioner.caption([frames(1), frames(2)], instructions=[None, question], max_new_tokens=8)
    assert mixed[0] == captioner.caption([frames(1)], max_new_tokens=8)[0]
    assert mixed[1] == captioner.with_prompt(question).caption([frames(2)], max_new_tokens=8)[0]
    assert captioner.ask([frames(2)], [question], max_new_tokens=8) == [mixed[1]]


def test_instruction_labels_cover_the_answer_only(captioner):
    question, answer = "Is anything behind?", "no"
    inputs = captioner.prepare([frames(1)], targets=[answer], instructions=[question])
    labelled = inputs["labels"][0][inputs["labels"][0] != -100]
    tokenizer = captioner.processor.tokenizer
    assert tokenizer.decode(labelled) == answer + tokenizer.eos_token
    assert question in tokenizer.decode(inputs["input_ids"][0])


@pytest.mark.parametrize("questions", [["a", "b"], "Is anything behind?", [""], ["  "]])
def test_ask_refuses_questions_that_do_not_match_the_batch(captioner, questions):
    with pytest.raises(UserError, match="question|instruction"):
        captioner.ask([frames(1)], questions)
