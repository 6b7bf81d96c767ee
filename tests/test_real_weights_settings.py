"""What the tiny model could not catch about the released weights, checked without them: the
CLIP activation each pretrained tag was trained with, decoding from the base model's own generation
config, the memory plan of a full-size recipe, Qwen's real tokenization, and which parameters decay."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import subprocess
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clip_vlm_core.cli import main
from clip_vlm_core.model import SceneCaptioner

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "clip_vlm_core" / "assets" / "samples"


# -- 1. OpenCLIP activation ------------------------------------------------------------------------
def built_activations(model: str, pretrained: str | None) -> set[str]:
    """Activation module types of the model load_open_clip builds for (model, tag), made on the meta
    device with the same create_model() arguments but no weights."""
    import open_clip
    from open_clip.transformer import QuickGELU

    from clip_vlm_core.model.clip_encoder import activation_for

    logging.disable(logging.WARNING)  # "no pretrained weights loaded": here that is the point
    try:
        with torch.device("meta"):
            built = open_clip.create_model(model, pretrained=None, device=torch.device("meta"),
                                           **activation_for(model, pretrained))
    finally:
        logging.disable(logging.NOTSET)
    return {type(m).__name__ for m in built.modules() if isinstance(m, torch.nn.GELU | QuickGELU)}


def test_every_openai_tag_is_built_with_quickgelu():
    """OpenAI trained every CLIP it released with QuickGELU; the plain configs (ViT-L-14, ...) say GELU."""
    import open_clip

    openai = sorted({name for name, tag in open_clip.list_pretrained() if tag == "openai"})
    assert {"ViT-L-14", "ViT-B-32", "RN50", "ViT-L-14-336"} <= set(openai)
    for name in openai:
        assert built_activations(name, "openai") == {"QuickGELU"}, name
    assert built_activations("ViT-L-14", None) == {"GELU"}, "without a tag the config's own activation stays"


def test_every_tag_trained_with_quickgelu_is_built_with_it_and_others_keep_gelu():
    """open_clip's registry marks the tags trained with QuickGELU (OpenAI's, MetaCLIP's, DFN's, ...)."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    quick = {name: tag for name, tag in open_clip.list_pretrained() if get_pretrained_cfg(name, tag).get("quick_gelu")}
    assert len(quick) >= 20
    for name, tag in sorted(quick.items()):
        assert built_activations(name, tag) == {"QuickGELU"}, f"{name}/{tag}"
    for name, tag in (("ViT-L-14", "laion2b_s32b_b82k"), ("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-B-16", "dfn2b")):
        expected = {"QuickGELU"} if get_pretrained_cfg(name, tag).get("quick_gelu") else {"GELU"}
        assert built_activations(name, tag) == expected, f"{name}/{tag}"


def test_full_size_recipe_builds_clip_with_quickgelu():
    from open_clip.transformer import QuickGELU

    from clip_vlm_core.model.full_size import assemble_random, full_size_captioner_config

    config = full_size_captioner_config()
    assert (config.clip_model, config.clip_pretrained) == ("ViT-L-14", "openai")
    with torch.device("meta"):
        model = assemble_random(config, trainable=False)
    kinds = {type(m) for m in model.clip.modules() if isinstance(m, torch.nn.GELU | QuickGELU)}
    assert kinds == {QuickGELU}


# -- 2. Decoding against the checkpoint's own defaults -----------------------------------------------
@pytest.fixture(scope="session")
def qwen_shaped_checkpoint(untrained_checkpoint) -> Path:
    """An untrained tiny checkpoint; its base model's generation_config.json is shaped like Qwen2.5-VL's (every
    tiny base model's is). The session's one (conftest.py)."""
    return untrained_checkpoint


@pytest.fixture(scope="module")
def qwen_shaped(qwen_shaped_checkpoint) -> SceneCaptioner:
    return SceneCaptioner.from_pretrained(qwen_shaped_checkpoint, device="cpu")


def test_tiny_base_model_carries_a_generation_config_shaped_like_qwens(qwen_shaped_checkpoint):
    saved = json.loads((qwen_shaped_checkpoint.parent / "base" / "qwen" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [2, 0] and saved["repetition_penalty"] == 1.05
    assert (saved["do_sample"], saved["top_k"], saved["top_p"], saved["temperature"]) == (True, 1, 0.001, 0.1)


def test_unset_decoding_settings_come_from_the_base_models_generation_config(qwen_shaped):
    settings = qwen_shaped.decoding_in_effect()
    tokenizer = qwen_shaped.processor.tokenizer
    assert settings.eos_token_ids == (tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                      tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    assert settings.repetition_penalty == 1.05
    # Qwen's own "sampling with top_k 1" is greedy decoding; clip-vlm decodes greedily unless asked
    assert settings.do_sample is False and settings.num_beams == 1


def test_each_decoding_setting_can_be_overridden(qwen_shaped):
    settings = qwen_shaped.decoding_in_effect(repetition_penalty=1.0, eos_token_ids=(2,), max_new_tokens=5,
                                              do_sample=True, top_k=7, top_p=0.9, temperature=0.5)
    assert (settings.repetition_penalty, settings.eos_token_ids, settings.max_new_tokens) == (1.0, (2,), 5)
    kwargs = settings.generate_kwargs()
    assert (kwargs["top_k"], kwargs["top_p"], kwargs["temperature"], kwargs["eos_token_id"]) == (7, 0.9, 0.5, [2])


def test_sampling_passes_top_k_so_the_models_top_k_1_does_not_make_it_greedy(qwen_shaped):
    image = {view: np.full((56, 56, 3), 100, np.uint8) for view in qwen_shaped.views}
    captions = set()
    for seed in range(4):
        torch.manual_seed(seed)
        captions.add(qwen_shaped.caption([image], do_sample=True, max_new_tokens=8)[0])
    assert len(captions) > 1, "sampling gave the same caption every time: the model's top_k 1 applied"
    assert qwen_shaped.decoding_in_effect(do_sample=True).generate_kwargs()["top_k"] == 0


def test_caption_log_records_the_settings_in_effect(qwen_shaped_checkpoint, tmp_path):
    log = tmp_path / "playground.jsonl"
    views = [f"--view=CAM_FRONT={SAMPLES / 'front.jpg'}", f"--view=CAM_BACK={SAMPLES / 'back.jpg'}"]
    common = ["caption", *views, "--checkpoint", str(qwen_shaped_checkpoint), "--max-new-tokens", "4", "--log", str(log)]
    assert main(common) == 0
    assert main([*common, "--repetition-penalty", "1.0", "--eos-token-ids", "2"]) == 0
    first, second = (json.loads(line)["decoding"] for line in log.read_text().splitlines())
    assert first == {"max_new_tokens": 4, "min_new_tokens": 0, "num_beams": 1, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
                     "top_k": 0, "repetition_penalty": 1.05, "eos_token_ids": [2, 0]}
    assert (second["repetition_penalty"], second["eos_token_ids"]) == (1.0, [2])


def test_ask_log_records_the_settings_in_effect_as_caption_does(qwen_shaped_checkpoint, tmp_path):
    log = tmp_path / "ask.jsonl"
    views = [f"--view=CAM_FRONT={SAMPLES / 'front.jpg'}", f"--view=CAM_BACK={SAMPLES / 'back.jpg'}"]
    assert main(["ask", *views, "--checkpoint", str(qwen_shaped_checkpoint), "--max-new-tokens", "4",
                 "--question", "Is it day?", "--log", str(log)]) == 0
    (record,) = (json.loads(line) for line in log.read_text().splitlines())
    assert (record["decoding"]["repetition_penalty"], record["decoding"]["eos_token_ids"]) == (1.05, [2, 0])


NODE = REPO / ".venv" / "bin" / "caption_node"


@pytest.mark.skipif(not NODE.exists(), reason="caption_node is not installed: run `make venv`")
def test_node_logs_the_decoding_settings_in_effect_at_start_up(qwen_shaped_checkpoint):
    env = {**os.environ, "ROS_DOMAIN_ID": str(random.randint(1, 200)), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "PYTHONUNBUFFERED": "1"}
    params = {"model": qwen_shaped_checkpoint, "max_new_tokens": 12, "top_k": 5}
    argv = [str(NODE), "--ros-args", *(a for k, v in params.items() for a in ("-p", f"{k}:={v}"))]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any("captioning " in line for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    decoding = [line for line in lines if "decoding: " in line]
    assert decoding, "".join(lines)
    assert ("decoding: max_new_tokens 12, min_new_tokens 0, num_beams 1, do_sample False, temperature 1.0, top_p 1.0, top_k 5, "
            "repetition_penalty 1.05, eos_token_ids (2, 0)") in decoding[0]


def test_embedded_model_decodes_with_its_base_generation_config_but_greedily(embedded_captioner):
    """The shipped model's base was built with Qwen's generation config (both stop ids, penalty 1.05, and
    sampling settings): the first two apply, sampling is not inherited."""
    captioner = embedded_captioner
    tokenizer = captioner.processor.tokenizer
    settings = captioner.decoding_in_effect()
    stops = tuple(tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    assert (settings.eos_token_ids, settings.repetition_penalty) == (stops, 1.05)
    assert settings.do_sample is False and settings.num_beams == 1


# -- 3. Memory by default ----------------------------------------------------------------------------
def test_recipe_pixel_budget_gives_480_tokens_per_1600x900_view():
    """Qwen2.5-VL's own image processor at the recipe's max_pixels, on a nuScenes-sized frame."""
    from transformers import Qwen2VLImageProcessor

    from clip_vlm_core.train_memory import sample_shape

    recipe = yaml.safe_load((REPO / "training/configs/nuinteract-front-back.yaml").read_text())
    budget = recipe["captioner"]["max_pixels"]
    processor = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=budget)
    frame = np.zeros((900, 1600, 3), np.uint8)
    grid = processor(images=[frame, frame], return_tensors="pt")["image_grid_thw"]
    shape = sample_shape(1000, grid, ("CAM_FRONT", "CAM_BACK"), patch=14, merge=2)
    assert (shape.views["CAM_FRONT"].width, shape.views["CAM_FRONT"].height, shape.views["CAM_FRONT"].tokens) == (
        840, 448, 480)
    comment = (REPO / "training/configs/nuinteract-front-back.yaml").read_text()
    assert "480 visual tokens per view" in comment and "510" not in comment


def test_activation_estimate_matches_the_measured_8_mib_per_token():
    """The layer-by-layer count (clip_vlm_core.memory_estimate) against the ~8 MiB per token measured for
    Qwen2.5-VL-3B with LoRA in bf16 without checkpointing: within 20 %."""
    from clip_vlm_core.memory_estimate import activation_bytes
    from clip_vlm_core.model.full_size import qwen25_vl_3b_config

    per_sample = activation_bytes(qwen25_vl_3b_config().text_config, tokens=3695, batch=1, lora_r=16,
                                  element_bytes=2, checkpointing=False)
    assert per_sample / 3695 / 2**20 == pytest.approx(8, rel=0.2)


def test_gradient_checkpointing_is_auto_by_default_and_the_plan_is_logged(synthetic_manifest, tmp_path, caplog):
    from clip_vlm_core.train import run_training
    from clip_vlm_core.train_config import OptimConfig, load_run_config

    assert OptimConfig().gradient_checkpointing is None  # auto: on a GPU
    overrides = [f"run_dir={tmp_path / 'run'}", f"data.train_manifest={synthetic_manifest / 'mini_train.jsonl'}",
                 "data.synthetic_scenes=0", "optim.max_steps=1", "optim.batch_size=2", "optim.warmup_steps=0"]
    caplog.set_level("INFO", logger="clip_vlm_core")
    run_training(load_run_config(REPO / "training/configs/synthetic-tiny.yaml", overrides), show_progress=False)
    text = caplog.text
    assert "pixel budget 3,136 to 25,088 pixels per image" in text
    assert re.search(r"CAM_FRONT \d+x\d+ px -> \d+ tokens, CAM_BACK \d+x\d+ px -> \d+ tokens; [\d,]+ tokens per", text)
    assert "gradient checkpointing off (auto: no GPU)" in text and "activation memory without" in text


# -- 4. The real tokenizer ---------------------------------------------------------------------------
CAPTIONS = [
    "It's 5 p.m.: 3 cars ahead, 12 km/h; the light is red!",
    "   Leading spaces, and trailing ones   ",
    "Café, naïve façade — 日本語の標識 😀 ahead.",
    unicodedata.normalize("NFD", "Crème brûlée van (NFD input) turns left."),
    '"Quoted" [brackets] {braces} <angle> 100% #1 @stop',
    "1234567890 0.5 -3 +4 1,000,000",
    "'s an apostrophe first, and don't split contractions",
    "- a dash first\nand a newline inside\tand a tab",
]


def test_tiny_tokenizer_is_qwen2s_normalizer_and_pre_tokenizer():
    from transformers import Qwen2Tokenizer

    from clip_vlm_core.model.tiny import build_tiny_tokenizer

    tiny = build_tiny_tokenizer()
    reference = Qwen2Tokenizer()  # what transformers builds around any Qwen2 vocabulary
    backend, qwen = tiny.backend_tokenizer, reference.backend_tokenizer
    assert str(backend.normalizer) == str(qwen.normalizer) == "NFC()"
    assert str(backend.pre_tokenizer) == str(qwen.pre_tokenizer) and "Split" in str(qwen.pre_tokenizer)
    words = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str("Lane 12, ok")]
    assert words == ["Lane", "Ġ", "1", "2", ",", "Ġok"]  # digits one by one, as Qwen splits them
    assert tiny("e\u0301")["input_ids"] == tiny("\u00e9")["input_ids"]  # NFC


def test_saved_and_loaded_tiny_tokenizer_tokenizes_the_same(qwen_shaped, tmp_path):
    from clip_vlm_core.model.tiny import build_tiny_tokenizer

    tiny = build_tiny_tokenizer()
    loaded = qwen_shaped.processor.tokenizer
    for text in CAPTIONS:
        assert loaded(text)["input_ids"] == tiny(text)["input_ids"], text


@pytest.mark.parametrize("which", ["qwen-shaped", "embedded"])
def test_caption_labels_cover_exactly_each_caption_and_its_end_token(which, qwen_shaped, embedded_captioner):
    captioner = qwen_shaped if which == "qwen-shaped" else embedded_captioner
    tokenizer = captioner.processor.tokenizer
    rng = np.random.default_rng(0)
    batch = [{v: rng.integers(0, 255, (60 + 10 * i, 90, 3), dtype=np.uint8) for v in captioner.views}
             for i in range(len(CAPTIONS))]
    instructions = [None, "What is ahead?", "  Is the light red? ", None, "Wie viele Autos? 3?", None, "é?", None]
    inputs = captioner.prepare(batch, targets=CAPTIONS, instructions=instructions)
    for row, caption in enumerate(CAPTIONS):
        labels = inputs["labels"][row]
        labelled = labels[labels != -100].tolist()
        assert labelled[-1] == tokenizer.eos_token_id
        expected = unicodedata.normalize("NFC", caption.strip())
        assert tokenizer.decode(labelled[:-1]) == expected, row
        # the labelled span is the end of the row: the caption tokens exactly where the model reads them
        assert inputs["input_ids"][row, -len(labelled):].tolist() == labelled


# -- 5. Weight decay ---------------------------------------------------------------------------------
def test_only_weight_matrices_get_weight_decay(qwen_shaped_checkpoint):
    from clip_vlm_core.train_config import OptimConfig
    from clip_vlm_core.train_setup import parameter_groups

    captioner = SceneCaptioner.from_pretrained(qwen_shaped_checkpoint, device="cpu", trainable=True)
    model = captioner.model
    names = {id(p): n for n, p in model.named_parameters()}
    groups = parameter_groups(model, OptimConfig(weight_decay=0.1))
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    kept = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decayed | kept == trainable and not decayed & kept
    assert {"connector.gate", "connector.view_embedding", "connector.query_norm.weight", "connector.query_norm.bias",
            "connector.proj.bias", "connector.cross_attn.in_proj_bias",
            "connector.encoder.layers.0.norm1.weight"} <= kept
    assert {"connector.proj.weight", "connector.cross_attn.in_proj_weight", "connector.cross_attn.out_proj.weight",
            "connector.encoder.layers.0.linear1.weight"} <= decayed
    assert all(p.ndim >= 2 for g in groups if g["weight_decay"] > 0 for p in g["params"])
    lora = {n for n in decayed if ".lora_" in n}
    assert lora and all(n.endswith(("lora_A.default.weight", "lora_B.default.weight")) for n in lora)
    assert [g["lr"] for g in groups] == [1e-3, 1e-3, 2e-4]  # connector (decay, no decay), LoRA
