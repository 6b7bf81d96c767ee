"""The connector's memory over views and time (context views, a history per view): with neither, exactly
today's model; with them, CLIP tokens of every (view, frame) with a view and a time embedding, missing frames
masked, saved and checked like every connector tensor. Real transformers/open_clip classes, tiny models."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence
from transformers.modeling_outputs import BaseModelOutputWithPooling

from clip_vlm_core.config import CaptionerConfig
from clip_vlm_core.errors import UserError
from clip_vlm_core.model import SceneCaptioner
from clip_vlm_core.model.connector import FusionConnector
from clip_vlm_core.model.inputs import HISTORY
from clip_vlm_core.model.tiny import tiny_captioner_config

SIDES = ("CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
ASSETS = "clip_vlm_core/assets/samples/"
# Main's embedded model (before context views and histories existed) on the sample frames, greedy.
MAIN_CAPTION = ("It is daytime. A red truck is ahead in the left lane. The traffic light is green. Behind, a blue car "
                "follows in our lane.")
MAIN_CONNECTOR_TENSORS = {
    "cross_attn.in_proj_bias", "cross_attn.in_proj_weight", "cross_attn.out_proj.bias", "cross_attn.out_proj.weight",
    "encoder.layers.0.linear1.bias", "encoder.layers.0.linear1.weight", "encoder.layers.0.linear2.bias",
    "encoder.layers.0.linear2.weight", "encoder.layers.0.norm1.bias", "encoder.layers.0.norm1.weight",
    "encoder.layers.0.norm2.bias", "encoder.layers.0.norm2.weight", "encoder.layers.0.self_attn.in_proj_bias",
    "encoder.layers.0.self_attn.in_proj_weight", "encoder.layers.0.self_attn.out_proj.bias",
    "encoder.layers.0.self_attn.out_proj.weight", "gate", "proj.bias", "proj.weight", "query_norm.bias",
    "query_norm.weight", "view_embedding"}


def _two_view_fusion(model, visual: list[torch.Tensor], clip_tokens: torch.Tensor) -> list[torch.Tensor]:
    """Main's fusion path, written out as it was before this change (fusion.fuse + FusionConnector)."""
    c, views = model.connector, model.num_views
    batch = len(visual) // views
    per_sample = [torch.cat(visual[b * views : (b + 1) * views]) for b in range(batch)]
    tokens = clip_tokens.reshape(batch, views, *clip_tokens.shape[1:])
    context = c.proj(tokens.to(c.proj.weight.dtype)) + c.view_embedding[None, :, None, :]
    context = context.reshape(batch, views * tokens.shape[2], -1)
    context = c.encoder(context) if c.encoder is not None else context
    queries = pad_sequence([q.to(context.dtype) for q in per_sample], batch_first=True)
    attended, _ = c.cross_attn(c.query_norm(queries), context, context, need_weights=False)
    update = torch.tanh(c.gate) * attended
    fused = [q + update[i, : q.shape[0]].to(visual[0].dtype) for i, q in enumerate(per_sample)]
    out = []
    for b, sample in enumerate(fused):
        out.extend(torch.split(sample, [v.shape[0] for v in visual[b * views : (b + 1) * views]]))
    return out


def test_todays_embedded_checkpoint_loads_and_gives_main_s_logits_and_caption_bit_for_bit(embedded_captioner):
    captioner = embedded_captioner
    assert (captioner.config.context_views, captioner.config.history_frames) == ((), 0)
    assert set(captioner.model.connector.state_dict()) == MAIN_CONNECTOR_TENSORS
    sample = {view: Image.open(ASSETS + name).convert("RGB") for view, name in (("CAM_FRONT", "front.jpg"),
                                                                               ("CAM_BACK", "back.jpg"))}
    inputs = captioner.prepare([sample, {**sample, "CAM_BACK": sample["CAM_FRONT"]}], device=captioner.device)
    assert "clip_absent" not in inputs and inputs["clip_pixels"].shape[0] == 4
    model = captioner.model
    with torch.no_grad():
        now = model(**inputs).logits
        visual = model.encode_visual(inputs["pixel_values"], inputs["image_grid_thw"])
        fused = _two_view_fusion(model, visual, model.clip(inputs["clip_pixels"]))
        keys = ("input_ids", "attention_mask", "image_grid_thw", "mm_token_type_ids")
        before = model.qwen(**{k: inputs[k] for k in keys},
                            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=tuple(fused))}).logits
    assert torch.equal(now, before)
    assert captioner.caption([sample]) == [MAIN_CAPTION]


@pytest.fixture(scope="module")
def surround(tiny_base):
    """A tiny captioner: front and back full views, the four side cameras as context views, 2 past frames."""
    config = dataclasses.replace(tiny_captioner_config(tiny_base), context_views=SIDES, history_frames=2)
    return SceneCaptioner.build(config, device="cpu")


def _frame(seed: int, hw=(90, 160)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def _sample(seed: int, history: dict | None = None) -> dict:
    views = ("CAM_FRONT", "CAM_BACK", *SIDES)
    sample = {view: _frame(seed + k) for k, view in enumerate(views)}
    if history is not None:
        sample[HISTORY] = history
    return sample


def test_the_connector_gets_an_embedding_per_view_and_per_frame(surround):
    connector = surround.model.connector
    width = surround.model.base_qwen.config.text_config.hidden_size
    assert connector.view_embedding.shape == (6, width) and connector.time_embedding.shape == (3, width)


def test_clip_inputs_cover_every_view_and_frame_and_mark_the_missing_ones(surround):
    history = {"CAM_FRONT": [None, _frame(50)], "CAM_BACK_LEFT": [_frame(51), _frame(52)]}
    inputs = surround.prepare([_sample(1, history), _sample(2)])
    assert inputs["pixel_values"].shape[0] == inputs["image_grid_thw"].prod(dim=1).sum()  # Qwen: 2 views x 2
    assert inputs["image_grid_thw"].shape[0] == 4
    assert inputs["clip_pixels"].shape[0] == 2 * 6 * 3  # samples x (2 full + 4 context views) x 3 frames
    absent = inputs["clip_absent"]
    assert absent.shape == (2, 6, 3) and not absent[:, :, -1].any()  # current frames are all there
    assert absent[0, 0].tolist() == [True, False, False] and absent[0, 4].tolist() == [False, False, False]
    assert absent[0, 1, :2].all() and absent[1, :, :2].all()  # no history given: missing
    assert (inputs["clip_pixels"].reshape(2, 6, 3, -1)[absent] == 0).all()
    with torch.no_grad():  # the current frames' CLIP pixels are those of the two-view path
        plain = surround.inputs.pixels([torch.from_numpy(_frame(1)).permute(2, 0, 1)])["clip_pixels"]
    assert torch.equal(inputs["clip_pixels"][2], plain[0])


def test_past_frames_and_context_views_change_a_fused_caption_and_missing_ones_do_not_count(surround):
    connector = surround.model.connector
    with torch.no_grad():
        connector.gate.fill_(1.0)
        try:
            def logits(sample):
                return surround.model(**surround.prepare([sample])).logits

            none = logits(_sample(3))
            with_past = logits(_sample(3, {"CAM_FRONT": [_frame(60), _frame(61)]}))
            other_side = logits({**_sample(3), "CAM_BACK_RIGHT": _frame(99)})
            assert not torch.equal(none, with_past) and not torch.equal(none, other_side)
            assert torch.equal(none, logits(_sample(3, {"CAM_FRONT": [None, None]})))
        finally:
            connector.gate.zero_()


def test_a_masked_frame_s_tokens_do_not_reach_the_fused_tokens():
    torch.manual_seed(0)
    connector = FusionConnector(clip_dim=8, hidden_size=16, num_views=3, num_layers=1, num_heads=2, num_frames=4).eval()
    with torch.no_grad():
        connector.gate.fill_(1.0)
        visual = [torch.randn(5, 16), torch.randn(7, 16)]
        tokens = torch.randn(2, 3, 4, 1, 8)
        absent = torch.zeros(2, 3, 4, dtype=torch.bool)
        absent[0, 1, :2] = absent[1, 2, 0] = True
        changed = tokens.clone()
        changed[absent] = torch.randn(int(absent.sum()), 1, 8) * 100
        a, b = connector(visual, tokens, absent), connector(visual, changed, absent)
        assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b, strict=True))
        assert not torch.allclose(connector(visual, changed)[0], a[0])  # unmasked they would


def test_a_surround_checkpoint_round_trips_and_a_mismatched_shape_is_refused(surround, tiny_base, tmp_path):
    sample = _sample(4, {"CAM_FRONT": [_frame(70), _frame(71)], "CAM_BACK_RIGHT": [None, _frame(72)]})
    with torch.no_grad():
        surround.model.connector.gate.fill_(0.5)
        try:
            path = surround.save_pretrained(tmp_path / "ckpt")
            before = surround.model(**surround.prepare([sample])).logits
        finally:
            surround.model.connector.gate.zero_()
    bases = Path(tiny_base["qwen"]).parent
    loaded = SceneCaptioner.from_pretrained(path, device="cpu", base_models_root=bases)
    assert (loaded.config.context_views, loaded.config.history_frames) == (SIDES, 2)
    with torch.no_grad():
        assert torch.equal(loaded.model(**loaded.prepare([sample])).logits, before)
    config = json.loads((path / "clip_vlm_config.json").read_text())
    (path / "clip_vlm_config.json").write_text(json.dumps({**config, "history_frames": 3}))
    with pytest.raises(UserError, match="time_embedding"):
        SceneCaptioner.from_pretrained(path, device="cpu", base_models_root=bases)


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda s: s.pop("CAM_BACK_LEFT"), "no image for context view CAM_BACK_LEFT"),
    (lambda s: s.__setitem__(HISTORY, {"CAM_FRONT": [None]}), "CAM_FRONT must have 2 past frame(s)"),
    (lambda s: s.__setitem__(HISTORY, {"CAM_SIDE": [None, None]}), "past frames for unknown view(s) ['CAM_SIDE']"),
    (lambda s: s.__setitem__(HISTORY, ["CAM_FRONT"]), "must map views to lists of past frames"),
    (lambda s: s.__setitem__("CAM_ROOF", _frame(1)), "unknown view(s) ['CAM_ROOF']"),
])
def test_a_sample_that_does_not_fit_the_model_is_one_clear_error(surround, change, fragment):
    sample = _sample(5)
    change(sample)
    with pytest.raises(UserError) as error:
        surround.prepare([sample])
    assert fragment in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("settings", "fragment"), [
    ({"context_views": ["CAM_FRONT"]}, "are full views already"),
    ({"context_views": ["CAM_FRONT_LEFT", "CAM_FRONT_LEFT"]}, "must be distinct"),
    ({"context_views": "CAM_FRONT_LEFT"}, "captioner.context_views must be a list"),
    ({"history_frames": 17}, "captioner.history_frames must be at least 0 and at most 16"),
    ({"history_stride_s": 0}, "captioner.history_stride_s must be greater than 0"),
])
def test_bad_surround_settings_are_refused(settings, fragment):
    with pytest.raises(UserError, match=fragment):
        CaptionerConfig(**settings)


# -- training batches from a six-camera manifest with a history ------------------------------------------------
@pytest.fixture(scope="module")
def surround_rows(surround_nuscenes, tmp_path_factory):
    from clip_vlm_core.data.manifest import build_manifest, load_manifest

    out = tmp_path_factory.mktemp("surround-manifest") / "m"
    build_manifest(surround_nuscenes, "v1.0-mini", surround_nuscenes / "nuinteract", ["CAM_FRONT", "CAM_BACK", *SIDES],
                   out, show_progress=False, qa=[surround_nuscenes / "qa_heldout.jsonl"], history=3)
    return load_manifest(out / "mini_train.jsonl"), surround_nuscenes


@pytest.fixture(scope="module")
def trainable_surround(tiny_base):
    config = dataclasses.replace(tiny_captioner_config(tiny_base), context_views=SIDES, history_frames=2)
    return SceneCaptioner.build(config, device="cpu", trainable=True)


def test_a_row_gives_its_context_views_and_newest_past_frames(surround_rows, trainable_surround):
    from clip_vlm_core.data.dataset import CaptionDataset

    rows, root = surround_rows
    config = trainable_surround.config
    dataset = CaptionDataset(rows, root, config.views, context_views=config.context_views, history_frames=2)
    sample = dataset.images(3)  # the 4th keyframe of its scene: a full history
    assert set(sample) == {"CAM_FRONT", "CAM_BACK", *SIDES, HISTORY}
    assert all(len(frames) == 2 and all(f is not None for f in frames) for frames in sample[HISTORY].values())
    newest = Image.open(root / rows[3].history["CAM_FRONT"][-1].path).convert("RGB")
    assert np.array_equal(np.asarray(sample[HISTORY]["CAM_FRONT"][-1]), np.asarray(newest))
    assert sample[HISTORY]["CAM_BACK"] and dataset.images(0)[HISTORY]["CAM_BACK"] == [None, None]  # scene start
    with pytest.raises(UserError, match="build the manifest with --history 4"):
        CaptionDataset(rows, root, config.views, context_views=config.context_views, history_frames=4)


def test_cached_and_raw_surround_batches_give_the_same_loss(surround_rows, trainable_surround, tmp_path):
    from clip_vlm_core.data.dataset import CachedEncoderDataset, CaptionDataset, RawCollator, collate_cached

    rows, root = surround_rows
    captioner, config = trainable_surround, trainable_surround.config
    dataset = CaptionDataset(rows[:3], root, config.views, context_views=config.context_views, history_frames=2)
    cached = CachedEncoderDataset(dataset, captioner, tmp_path / "cache", show_progress=False)
    indices = [0, 2, 4]  # captions and a question; keyframes with no, part of and a full history
    raw = RawCollator(captioner)([dataset[i] for i in indices])
    fast = collate_cached([cached[i] for i in indices], captioner.processor.tokenizer.pad_token_id)
    assert torch.equal(raw["clip_absent"], fast["clip_absent"]) and raw["clip_absent"].shape == (3, 6, 3)
    for key in ("input_ids", "labels", "image_grid_thw"):
        assert torch.equal(raw[key], fast[key]), key
    with torch.no_grad():
        captioner.model.connector.gate.fill_(1.0)
        try:
            torch.testing.assert_close(captioner.model(**raw).loss, captioner.model(**fast).loss)
        finally:
            captioner.model.connector.gate.zero_()


# -- evaluation ablations: --blank-history, --blank-view of a side camera ------------------------------------------
@pytest.fixture(scope="module")
def surround_eval(surround_nuscenes, tiny_base, tmp_path_factory):
    """A surround manifest (history 2, held-out questions) and a tiny surround checkpoint with its gate open."""
    from clip_vlm_core.data.manifest import build_manifest

    out = tmp_path_factory.mktemp("surround-eval") / "m"
    build_manifest(surround_nuscenes, "v1.0-mini", surround_nuscenes / "nuinteract", ["CAM_FRONT", "CAM_BACK", *SIDES],
                   out, show_progress=False, qa=[surround_nuscenes / "qa_heldout.jsonl"], history=2)
    config = dataclasses.replace(tiny_captioner_config(tiny_base), context_views=SIDES, history_frames=2)
    torch.manual_seed(1)
    captioner = SceneCaptioner.build(config, device="cpu")
    with torch.no_grad():
        captioner.model.connector.gate.fill_(2.0)
    checkpoint = tiny_base["qwen"].parent.parent / "surround"
    captioner.save_pretrained(checkpoint, base_models_relative_to=checkpoint)
    return out / "mini_val.jsonl", checkpoint, captioner


def test_blanking_the_history_blackens_every_past_frame_and_nothing_else(surround_eval):
    from clip_vlm_core.data.manifest import manifest_dataroot
    from clip_vlm_core.evaluate import _images_for, _load_samples

    split, _, captioner = surround_eval
    views = ("CAM_FRONT", "CAM_BACK", *SIDES)
    sample = _load_samples(split, views, None, manifest_dataroot(split), history_frames=2)[-1]  # a full history
    plain, blanked = _images_for(sample, ()), _images_for(sample, (), blank_history=True)
    side = _images_for(sample, ("CAM_BACK_LEFT",))
    for view in views:
        assert np.asarray(blanked[view]).any() and np.array_equal(np.asarray(blanked[view]), np.asarray(plain[view]))
        assert all(frame is not None and np.asarray(frame).any() for frame in plain[HISTORY][view])
        assert all(not np.asarray(frame).any() and frame.size == (1600, 900) for frame in blanked[HISTORY][view])
    assert not np.asarray(side["CAM_BACK_LEFT"]).any() and not any(np.asarray(f).any() for f in side[HISTORY]["CAM_BACK_LEFT"])
    assert np.asarray(side["CAM_FRONT_LEFT"]).any()


@pytest.mark.slow
@pytest.mark.parametrize("ablation", [["--blank-history"], ["--blank-view", "CAM_FRONT_LEFT"]])
def test_eval_cli_runs_the_ablations_of_a_surround_model_and_records_them(surround_eval, tiny_base, tmp_path, ablation):
    from clip_vlm_core.cli import main

    split, checkpoint, _ = surround_eval
    common = ["eval", "--manifest", str(split), "--checkpoint", str(checkpoint), "--max-new-tokens", "4",
              "--skip-questions", "--base-models-root", str(tiny_base["qwen"].parent.parent)]
    assert main([*common, *ablation, "--out", str(tmp_path / "ablated")]) == 0
    metrics = json.loads((tmp_path / "ablated" / "metrics.json").read_text())
    assert metrics["blank_history"] == (ablation == ["--blank-history"]) and metrics["samples"] == 6
    assert metrics["blank_views"] == ([] if ablation == ["--blank-history"] else ["CAM_FRONT_LEFT"])
    report = (tmp_path / "ablated" / "report.html").read_text()
    assert ("past frames blanked to black" in report) == (ablation == ["--blank-history"])


def test_blanking_a_history_the_model_does_not_have_is_one_clear_error(embedded_captioner, synthetic_manifest, tmp_path):
    from clip_vlm_core.evaluate import evaluate_manifest

    with pytest.raises(UserError, match="cannot blank the history: this model takes no past frames"):
        evaluate_manifest(synthetic_manifest / "mini_val.jsonl", embedded_captioner, tmp_path / "e", blank_history=True)
    assert not (tmp_path / "e").exists()


# -- the tiny surround recipe, end to end ------------------------------------------------------------------------
@pytest.mark.slow
def test_the_tiny_surround_recipe_trains_on_its_own_six_camera_drive_and_saves_a_checkpoint_that_loads(tmp_path):
    from clip_vlm_core.data.manifest import load_manifest, read_manifest_meta
    from clip_vlm_core.train import run_training
    from clip_vlm_core.train_config import load_run_config

    recipe = Path(__file__).resolve().parents[1] / "training/configs/synthetic-tiny-surround.yaml"
    run_dir = tmp_path / "run"
    overrides = [f"run_dir={run_dir}", "data.synthetic_scenes=2", "data.synthetic_samples_per_scene=3",
                 "optim.max_steps=2", "optim.batch_size=2", "optim.eval_every=2", "optim.save_every=2",
                 "optim.warmup_steps=0", "data.qa_per_caption=0.5"]
    run_training(load_run_config(recipe, overrides), show_progress=False)
    meta = read_manifest_meta(run_dir / "data" / "manifest")
    assert meta["cameras"] == ["CAM_FRONT", "CAM_BACK", *SIDES] and meta["history"]["frames"] == 3
    row = load_manifest(run_dir / "data" / "manifest" / "mini_train.jsonl")[2]
    assert row.caption.startswith("Front: ") and "The vehicle ahead " in row.caption and "Front left: " in row.caption
    assert {pair.type for pair in row.qa} >= {"front.motion", "back.motion", "back_left.vehicle_type"}
    best = next(p for p in (run_dir / "best", run_dir / "latest") if p.is_dir())
    loaded = SceneCaptioner.from_pretrained(best, device="cpu", base_models_root=run_dir)
    assert (loaded.config.context_views, loaded.config.history_frames) == (SIDES, 3)
    assert loaded.model.connector.time_embedding.shape[0] == 4


# -- the cost of seeing more -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_surround_times_each_layout_stage_by_stage_and_counts_the_full_size_cost(tmp_path, capsys):
    from clip_vlm_core.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "surround", "--history", "2", "--iters", "1", "--warmup", "0", "--max-new-tokens", "2",
                 "--patch", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    measured, full = report["measured_ms"], report["full_size"]
    assert list(measured) == ["2 views", "2 views + history 2", "2 + 4 context", "2 + 4 context + history 2",
                              "2 views + history 2, patch", "2 + 4 context + history 2, patch"]
    assert [row["clip_frames"] for row in measured.values()] == [2, 6, 6, 18, 6, 18]
    assert all(row[stage] > 0 for row in measured.values() for stage in ("decode", "encoders", "generation"))
    assert measured["2 views"]["ratio"] == 1.0 and report["environment"]["cpu_cores"] >= 1
    # Full size: context views and past frames add CLIP tokens only; the language model's prompt stays.
    assert full["2 + 4 context + history 2"]["prompt_tokens"] == full["2 views"]["prompt_tokens"] == 1020
    assert full["6 full views"]["qwen_visual_tokens"] == 2880 and full["2 + 4 context + history 2"]["clip_memory_tokens"] == 18
    assert full["2 views + history 2"]["ratio_cached"] == pytest.approx(1.0, abs=0.001)
    assert full["2 + 4 context"]["ratio"] < 1.1 < full["6 full views"]["ratio"]
    assert "full size (Qwen2.5-VL-3B" in capsys.readouterr().out


@pytest.mark.parametrize("history", [1, 3, 8])
def test_full_size_arithmetic_counts_patch_tokens_in_the_memory_and_nowhere_else(history):
    from clip_vlm_core.bench.surround import CLIP_TOKENS_PER_IMAGE, full_size_arithmetic

    rows = full_size_arithmetic(history)
    for layout, frames_read in (("2 views", 2 * (history + 1)), ("2 + 4 context", 6 * (history + 1))):
        pooled, patch = rows[f"{layout} + history {history}"], rows[f"{layout} + history {history}, patch"]
        assert pooled["clip_memory_tokens"] == frames_read
        assert patch["clip_memory_tokens"] == frames_read * CLIP_TOKENS_PER_IMAGE
        # The same frames through CLIP and the same prompt: only the connector's work grows.
        assert (patch["clip_gflops"], patch["prompt_tokens"], patch["language_model_gflops"]) == \
               (pooled["clip_gflops"], pooled["prompt_tokens"], pooled["language_model_gflops"])
        assert patch["connector_gflops"] > pooled["connector_gflops"] and patch["ratio"] > pooled["ratio"]


def test_a_manifest_whose_history_the_model_cannot_use_is_refused_before_any_caption(surround, surround_nuscenes,
                                                                                       synthetic_manifest, tmp_path):
    from clip_vlm_core.data.manifest import build_manifest
    from clip_vlm_core.evaluate import evaluate_manifest

    with pytest.raises(UserError, match="takes 2 past frame\\(s\\) per view but manifest .* holds 0; build it with "
                                        "--history 2 --history-stride 0.5"):
        evaluate_manifest(synthetic_manifest / "mini_val.jsonl", surround, tmp_path / "a")
    build_manifest(surround_nuscenes, "v1.0-mini", surround_nuscenes / "nuinteract", ["CAM_FRONT", "CAM_BACK", *SIDES],
                   tmp_path / "m", show_progress=False, history=2, history_stride_s=1.0)
    with pytest.raises(UserError, match="holds past frames 1 s apart but the model's are 0.5 s apart"):
        evaluate_manifest(tmp_path / "m" / "mini_val.jsonl", surround, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- starting a model that sees more from one that learnt its full views ------------------------------------------
@pytest.mark.parametrize(("context", "frames"), [(SIDES, 3), ((), 2), (SIDES[:1], 0)])
def test_init_weights_takes_a_two_view_checkpoint_s_trained_weights_where_they_fit(tiny_base, context, frames):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from clip_vlm_core.model.checkpoint import default_model_path
    from clip_vlm_core.train_setup import load_fitting_weights

    shipped = json.loads((default_model_path() / "clip_vlm_config.json").read_text())  # its LoRA and connector sizes
    sizes = {k: shipped[k] for k in ("lora_r", "lora_alpha", "connector_layers", "connector_heads")}
    config = dataclasses.replace(tiny_captioner_config(tiny_base), context_views=context, history_frames=frames, **sizes)
    torch.manual_seed(0)
    captioner = SceneCaptioner.build(config, device="cpu", trainable=True)
    before = {k: v.clone() for k, v in captioner.model.connector.state_dict().items()}
    said = load_fitting_weights(captioner, "embedded:default")
    source = load_file(default_model_path() / "connector.safetensors")
    own = captioner.model.connector.state_dict()
    for name, tensor in source.items():
        if name == "view_embedding":  # the full views' rows; a context view's stays as built
            assert torch.equal(own[name][:2], tensor) and torch.equal(own[name][2:], before[name][2:])
        else:
            assert torch.equal(own[name], tensor), name
    if frames:
        assert torch.equal(own["time_embedding"], before["time_embedding"])  # the two-view model has none
    lora = get_peft_model_state_dict(captioner.model.qwen)
    trained = load_file(default_model_path() / "adapter" / "adapter_model.safetensors")
    assert trained and all(torch.equal(lora[k], v) for k, v in trained.items())
    assert f"of {len(own)} connector tensors and {len(trained)} LoRA tensors taken" in said


@pytest.mark.parametrize("runs_folder", [False, True], ids=["no-runs-folder", "runs-folder"])
def test_init_weights_that_name_nothing_or_nothing_that_fits_are_one_sentence(tmp_path, tiny_base, monkeypatch,
                                                                               runs_folder):
    from clip_vlm_core.train_config import load_run_config
    from clip_vlm_core.train_setup import load_fitting_weights

    recipe = Path(__file__).resolve().parents[1] / "training/configs/synthetic-tiny-surround.yaml"
    # Run from a folder with and without runs/: a clean clone has none, so runs/gone reads as a hub-shaped id.
    monkeypatch.chdir(tmp_path)
    if runs_folder:
        (tmp_path / "runs").mkdir()
    for value in ("runs/gone", "./gone", "org/model", "/no/such/run"):
        with pytest.raises(UserError, match=f"^optim.init_weights {re.escape(value)} does not exist"):
            load_run_config(recipe, [f"optim.init_weights={value}"])
        with pytest.raises(UserError, match=f"^optim.init_weights {re.escape(value)} does not exist"):
            load_fitting_weights(None, value)
    (tmp_path / "plain").mkdir()
    for value in (str(tmp_path / "plain"), "plain"):
        with pytest.raises(UserError, match="optim.init_weights must be a clip-vlm checkpoint"):
            load_run_config(recipe, [f"optim.init_weights={value}"])
    # Another LoRA rank and connector width: nothing fits.
    config = dataclasses.replace(tiny_captioner_config(tiny_base), lora_r=4, connector_heads=2, connector_layers=2)
    captioner = SceneCaptioner.build(config, device="cpu", trainable=True)
    import safetensors.torch as st

    from clip_vlm_core.model.checkpoint import default_model_path

    folder = tmp_path / "other"
    (folder / "adapter").mkdir(parents=True)
    (folder / "clip_vlm_config.json").write_text((default_model_path() / "clip_vlm_config.json").read_text())
    st.save_file({"proj.weight": torch.zeros(3, 3)}, folder / "connector.safetensors")
    with pytest.raises(UserError, match="none of its weights fit this recipe's model"):
        load_fitting_weights(captioner, str(folder))
