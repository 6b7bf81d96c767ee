"""QLoRA: the frozen language model in 4 (or 8) bits through real bitsandbytes layers, LoRA over it through
PEFT, an 8-bit AdamW, the frozen encoders released once cached, and the memory estimate training prints."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from clip_vlm_core.cli import main
from clip_vlm_core.config import CaptionerConfig, load_json
from clip_vlm_core.errors import UserError
from clip_vlm_core.model import SceneCaptioner
from clip_vlm_core.model.quantize import quantized_layers
from clip_vlm_core.model.tiny import tiny_captioner_config
from clip_vlm_core.train import run_training
from clip_vlm_core.train_config import load_run_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"


def _frames(seed: int = 0) -> dict[str, Image.Image]:
    generator = torch.Generator().manual_seed(seed)
    return {view: Image.fromarray(torch.randint(0, 255, (90, 160, 3), generator=generator, dtype=torch.uint8).numpy())
            for view in ("CAM_FRONT", "CAM_BACK")}


def _overrides(manifest: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"run_dir={run_dir}", f"data.train_manifest={manifest / 'mini_train.jsonl'}",
            f"data.val_manifest={manifest / 'mini_val.jsonl'}", "data.synthetic_scenes=0", "optim.batch_size=2",
            "optim.log_every=1", "optim.eval_every=8", "optim.save_every=8", "optim.warmup_steps=0",
            "optim.max_steps=8", *extra]


@pytest.mark.parametrize("mode, layer", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_quantize_replaces_only_the_language_models_linear_layers(tiny_base, mode, layer):
    config = dataclasses.replace(tiny_captioner_config(tiny_base), quantize=mode)
    captioner = SceneCaptioner.build(config, device="cpu", trainable=True)
    model = captioner.model
    kinds = {name: type(m).__name__ for name, m in model.named_modules()}
    quantized = [name for name, kind in kinds.items() if kind == layer]
    # 7 projections in each of the tiny model's 4 decoder layers, every one of them, and nothing else
    assert len(quantized) == 7 * model.base_qwen.config.text_config.num_hidden_layers
    assert all(".language_model.layers." in name for name in quantized)
    assert not any(kind.startswith("Linear") and kind != "Linear" for name, kind in kinds.items()
                   if ".visual." in name or name.startswith(("clip.", "connector.")))
    assert quantized_layers(model)[mode] == len(quantized)
    # LoRA sits on the quantized layers and is what trains, with the connector, in fp32
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("connector.") for n in trainable)
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    batch = captioner.prepare([_frames()], targets=["a red car ahead"])
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for n, p in trainable.items() if ".lora_B" in n)


@pytest.mark.parametrize("value", ["fp4", "4bit", "NF4", 4])
def test_unknown_quantize_is_one_sentence(value):
    with pytest.raises(UserError, match=r"^captioner\.quantize must be one of none, nf4, int8, got"):
        CaptionerConfig(quantize=value)


@pytest.mark.parametrize("value", ["sgd", "adam8bit", "AdamW"])
def test_unknown_optimizer_is_one_sentence(synthetic_manifest, tmp_path, value, capsys):
    code = main(["train", "--config", str(CONFIGS / "synthetic-tiny.yaml"),
                 *_overrides(synthetic_manifest, tmp_path / "r", f"optim.optimizer={value}")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("clip-vlm train: error: optim.optimizer must be one of adamw, adamw8bit")
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_tiny_recipe_trains_with_a_4bit_base_and_its_checkpoint_captions(synthetic_manifest, tmp_path, caplog):
    """The suite's QLoRA run: nf4 base, 8-bit AdamW, encoder cache, stopped and resumed; the loss falls,
    best/ loads quantized (as trained) and merged into a full-precision base, and both caption."""
    run_dir = tmp_path / "qlora"
    config = load_run_config(CONFIGS / "synthetic-tiny.yaml", _overrides(
        synthetic_manifest, run_dir, "captioner.quantize=nf4", "optim.optimizer=adamw8bit"))
    with caplog.at_level(logging.INFO, logger="clip_vlm_core"):
        first = run_training(config, show_progress=False, stop_after=4)
    assert first["step"] == 4
    # latest/ holds AdamW8bit's uint8 state and the LoRA of a 4-bit base: its checks accept them on resume
    assert run_training(config, resume="latest", show_progress=False)["step"] == 8
    history = json.loads((run_dir / "latest" / "trainer_state.json").read_text())["history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 8 and min(losses[-3:]) < losses[0], losses
    # printed at the start: the total estimate with weights by storage, and the encoders released
    log = caplog.text
    assert "memory estimate: ~" in log and "nf4" in log and "optimizer state" in log
    assert "vision tower and OpenCLIP released" in log

    best = run_dir / "best"
    assert load_json(CaptionerConfig, best / "clip_vlm_config.json").quantize == "nf4"
    quantized = SceneCaptioner.from_pretrained(best, device="cpu")
    assert quantized_layers(quantized.model)["nf4"] > 0
    merged = SceneCaptioner.from_pretrained(best, device="cpu", quantize="none")
    applied = merged.optimize_for_inference(merge_lora=True)
    assert applied["lora"] == "merged into the weights" and quantized_layers(merged.model) == {"nf4": 0, "int8": 0}
    frames = [_frames(1), _frames(2)]
    for captioner in (quantized, merged):
        captions = captioner.caption(frames, max_new_tokens=6)
        assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    # the adapters learnt against the 4-bit weights: on the full-precision base they give nearly the same
    # next-token distribution (quantization error only), and the same loss to within a few percent
    batch = quantized.prepare([frames[0]], targets=["a car"])
    with torch.no_grad():
        q_loss, m_loss = quantized.model(**batch).loss.item(), merged.model(**batch).loss.item()
    assert m_loss == pytest.approx(q_loss, rel=0.1)


def test_a_qlora_checkpoint_holds_what_any_checkpoint_holds(tiny_base, tmp_path):
    """The header checks accept what a QLoRA checkpoint writes: LoRA and connector tensors in fp32, nothing
    of the quantized base (no packed weights, no quantization state)."""
    from safetensors import safe_open

    config = dataclasses.replace(tiny_captioner_config(tiny_base), quantize="nf4")
    out = SceneCaptioner.build(config, device="cpu", trainable=True).save_pretrained(tmp_path / "ck")
    with safe_open(out / "adapter" / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
        assert keys and all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in keys)
        assert {f.get_tensor(k).dtype for k in keys} == {torch.float32}
    loaded = SceneCaptioner.from_pretrained(out, device="cpu", base_models_root=tiny_base["qwen"].parent)
    assert loaded.config.quantize == "nf4" and quantized_layers(loaded.model)["nf4"] > 0


def test_a_checkpoint_adapter_with_quantized_base_weights_is_refused(tiny_base, tmp_path):
    """Nothing more: an adapter file that carries a 4-bit base weight or its quantization state is not a
    LoRA adapter, and is refused from its header in one sentence."""
    from safetensors.torch import load_file, save_file

    config = dataclasses.replace(tiny_captioner_config(tiny_base), quantize="nf4")
    out = SceneCaptioner.build(config, device="cpu", trainable=True).save_pretrained(tmp_path / "ck")
    weights = out / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    name = next(iter(tensors)).split(".lora_")[0]
    for extra in ({f"{name}.base_layer.weight": torch.zeros(64, 1, dtype=torch.uint8)},
                  {f"{name}.base_layer.weight.absmax": torch.ones(4)},
                  {f"{name}.base_layer.weight.quant_state.bitsandbytes__nf4": torch.zeros(8, dtype=torch.uint8)}):
        save_file({**tensors, **extra}, weights)
        with pytest.raises(UserError, match="no LoRA weight of a module its target_modules names"):
            SceneCaptioner.from_pretrained(out, device="cpu", base_models_root=tiny_base["qwen"].parent)


def test_release_frozen_encoders_frees_their_parameters(tiny_base):
    from clip_vlm_core.train_setup import release_frozen_encoders

    captioner = SceneCaptioner.build(tiny_captioner_config(tiny_base), device="cpu", trainable=True)
    model = captioner.model
    encoders = [p for m in (model.base_qwen.model.visual, model.clip) for p in m.parameters()]
    size = sum(p.numel() * p.element_size() for p in encoders)
    assert release_frozen_encoders(model) == size > 0
    assert all(p.device.type == "meta" for m in (model.base_qwen.model.visual, model.clip) for p in m.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.device.type == "cpu" for p in trainable)
    assert all(p.device.type == "cpu" for p in model.base_qwen.model.language_model.parameters())


def test_resume_refuses_another_optimizer_and_accepts_a_run_saved_before_the_setting(synthetic_manifest, tmp_path):
    import yaml

    run_dir = tmp_path / "r"
    config = load_run_config(CONFIGS / "synthetic-tiny.yaml", _overrides(synthetic_manifest, run_dir,
                                                                        "optim.max_steps=2", "optim.save_every=2"))
    run_training(config, show_progress=False)
    # latest/ written before captioner.quantize and optim.optimizer existed: they had their defaults then
    for recipe in (run_dir / "latest" / "recipe.yaml", run_dir / "config.yaml"):
        if recipe.is_file():
            saved = yaml.safe_load(recipe.read_text())
            saved["captioner"].pop("quantize")
            saved["optim"].pop("optimizer")
            recipe.write_text(yaml.safe_dump(saved))
    more = load_run_config(CONFIGS / "synthetic-tiny.yaml", _overrides(synthetic_manifest, run_dir,
                                                                      "optim.max_steps=3", "optim.save_every=2"))
    assert run_training(more, resume="latest", show_progress=False)["step"] == 3
    other = load_run_config(CONFIGS / "synthetic-tiny.yaml", _overrides(
        synthetic_manifest, run_dir, "optim.max_steps=4", "optim.optimizer=adamw8bit"))
    with pytest.raises(UserError, match=r"optim\.optimizer 'adamw' -> 'adamw8bit'"):
        run_training(other, resume="latest", show_progress=False)


def test_qlora_recipe_is_the_front_back_recipe_with_a_4bit_base():
    bf16 = load_run_config(CONFIGS / "nuinteract-front-back.yaml")
    qlora = load_run_config(CONFIGS / "nuinteract-front-back-qlora.yaml")
    assert qlora.captioner.quantize == "nf4" and qlora.optim.optimizer == "adamw8bit"
    assert dataclasses.replace(qlora.captioner, quantize="none") == bf16.captioner
    assert qlora.optim.batch_size * qlora.optim.grad_accum_steps == bf16.optim.batch_size * bf16.optim.grad_accum_steps


def test_memory_estimate_counts_4bit_weights_at_half_a_byte_and_8bit_adam_at_two():
    from clip_vlm_core.memory_estimate import NF4_BYTES, estimate_memory
    from clip_vlm_core.model.full_size import (
        full_size_captioner_config,
        full_size_parameter_counts,
        qwen25_vl_3b_config,
    )

    config = full_size_captioner_config()
    with torch.device("meta"):
        from clip_vlm_core.model.full_size import assemble_random

        model = assemble_random(config, trainable=True, dtype=torch.bfloat16)
    text = qwen25_vl_3b_config().text_config
    common = dict(batch=8, tokens=1000, checkpointing=True, lora_r=16, activation_element_bytes=2)
    bf16 = estimate_memory(model, text, **common)
    qlora = estimate_memory(model, text, quantize="nf4", optimizer="adamw8bit", encoders_released=True, **common)
    counts = full_size_parameter_counts(config)
    trainable = counts["total"]["trainable"]
    assert bf16.trainable_parameters == qlora.trainable_parameters == trainable
    assert bf16.optimizer == 8 * trainable and qlora.optimizer < 2.1 * trainable
    frozen = counts["total"]["frozen"]
    assert bf16.weight_bytes == pytest.approx(2 * frozen, rel=0.01)  # bf16: 2 bytes each
    # the language model's decoder linears at ~0.52 byte; embeddings, vision tower gone (released), CLIP gone
    linears = sum(m.weight.numel() for n, m in model.base_qwen.model.language_model.named_modules()
                  if type(m) is torch.nn.Linear and ".lora_" not in n)
    assert qlora.weights["nf4"] == pytest.approx(linears * NF4_BYTES)
    assert qlora.total < 12 * 2**30 < bf16.total


@pytest.mark.parametrize("quantize", [None, "nf4", "none"])
def test_caption_cli_runs_a_qlora_checkpoint_quantized_or_on_a_full_precision_base(tiny_base, tmp_path, capsys,
                                                                                   quantize):
    config = dataclasses.replace(tiny_captioner_config(tiny_base), quantize="nf4")
    checkpoint = SceneCaptioner.build(config, device="cpu", trainable=True).save_pretrained(tmp_path / "ck")
    views = []
    for view, image in _frames(3).items():
        image.save(tmp_path / f"{view}.jpg")
        views += ["--view", f"{view}={tmp_path / f'{view}.jpg'}"]
    flags = [] if quantize is None else ["--quantize", quantize]
    code = main(["caption", "--checkpoint", str(checkpoint), "--base-models-root", str(tiny_base["qwen"].parent),
                 "--device", "cpu", "--max-new-tokens", "4", *views, *flags])
    assert code == 0 and capsys.readouterr().out.strip()


def test_caption_cli_refuses_an_unknown_quantize_in_one_sentence(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["caption", "--view", "CAM_FRONT=x.jpg", "--quantize", "fp4"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and "--quantize: invalid choice: 'fp4'" in err


def test_a_command_whose_library_is_missing_says_so_and_the_others_still_run():
    """The GPU machine has no rosbags: `clip-vlm bench` must still run there, and `clip-vlm bag` say why not."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['rosbags'] = None; from clip_vlm_core.cli import main; "
            "print('bench', main(['bench', 'memory', '--batch', '0'])); print('bag', main(['bag', 'info', 'x']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bench 2" in done.stdout and "bag 2" in done.stdout
    assert "clip-vlm bench: error: --batch must be 1 to" in done.stderr
    assert "clip-vlm bag: error: this command needs the Python package 'rosbags', which is not installed" in done.stderr
