"""Recipe mistakes are caught before any work starts, with the field named; resuming
with a recipe that changes the model is refused with the difference named, while steps, schedule and
logging may change (logged, and applied)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from clip_vlm_core.cli import main
from clip_vlm_core.errors import UserError
from clip_vlm_core.train import run_training
from clip_vlm_core.train_config import SECTIONS, load_run_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "training" / "configs" / "synthetic-tiny.yaml"

BAD_VALUES = [
    ("optim.lr_connector=-1", "optim.lr_connector must be greater than 0"),
    ("optim.lr_connector=0", "optim.lr_connector must be greater than 0"),
    ("optim.lr_lora=0", "optim.lr_lora must be greater than 0"),
    ("optim.lr_lora=.inf", "optim.lr_lora must be greater than 0 and at most 1"),
    ("optim.lr_lora=.nan", "got nan"),
    ("optim.lr_connector=5", "optim.lr_connector must be greater than 0 and at most 1"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be at least 0"),
    ("optim.max_steps=0", "optim.max_steps must be at least 1"),
    ("optim.max_steps=-10", "optim.max_steps must be at least 1"),
    ("optim.patience=-1", "optim.patience must be at least 0"),
    ("optim.grad_clip=0", "optim.grad_clip must be greater than 0"),
    ("optim.grad_clip=-1", "optim.grad_clip must be greater than 0"),
    ("optim.weight_decay=-0.01", "optim.weight_decay must be at least 0"),
    ("optim.weight_decay=2", "optim.weight_decay must be at least 0 and at most 1"),
    ("optim.eval_every=0", "optim.eval_every must be at least 1"),
    ("optim.save_every=0", "optim.save_every must be at least 1"),
    ("optim.log_every=-5", "optim.log_every must be at least 1"),
    ("optim.seed=-1", "optim.seed must be at least 0"),
    ("optim.batch_size=2.5", "'optim': batch_size must be an integer"),
    ("optim.mixed_precision=fp8", "optim.mixed_precision must be one of auto, no, bf16, fp16"),
    ("optim.init=no/such/checkpoint", "optim.init must be 'base', 'tiny' or a clip-vlm checkpoint folder"),
    ("optim.gradient_checkpointing=sometimes", "gradient_checkpointing must be true or false"),
    ("captioner.connector_dropout=1.0", "captioner.connector_dropout must be at least 0 and less than 1"),
    ("captioner.lora_dropout=-0.1", "captioner.lora_dropout must be at least 0 and less than 1"),
    ("captioner.lora_r=0", "captioner.lora_r must be at least 1"),
    ("captioner.lora_alpha=0", "captioner.lora_alpha must be at least 1"),
    ("captioner.connector_layers=-1", "captioner.connector_layers must be at least 0"),
    ("captioner.connector_heads=0", "captioner.connector_heads must be at least 1"),
    ("captioner.max_pixels=100", "captioner.max_pixels must be at least 3,136"),
    ("captioner.clip_tokens=all", "captioner.clip_tokens must be one of pooled, patch"),
    ("captioner.prompt=' '", "captioner.prompt is empty"),
    ("captioner.lora_targets='(unclosed'", "captioner.lora_targets is not a valid regular expression"),
    ("data.synthetic_scenes=-1", "data.synthetic_scenes must be at least 0"),
    ("data.synthetic_scenes=11", "data.synthetic_scenes must be at least 0 and at most 10"),
    ("data.synthetic_samples_per_scene=0", "data.synthetic_samples_per_scene must be at least 1"),
    ("data.num_workers=-1", "data.num_workers must be at least 0"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[case[0] for case in BAD_VALUES])
def test_bad_recipe_values_are_refused_with_the_field_named(override, message):
    with pytest.raises(UserError) as err:
        load_run_config(TINY, [override])
    assert message in str(err.value)


def test_pixel_budget_must_be_ordered():
    with pytest.raises(UserError, match=r"captioner.min_pixels \(200704\) must not exceed max_pixels \(100352\)"):
        load_run_config(TINY, ["captioner.min_pixels=200704", "captioner.max_pixels=100352"])


@pytest.mark.parametrize("override", ["optim.lr_connector=-1", "optim.warmup_steps=-3", "captioner.lora_dropout=1"])
def test_train_cli_refuses_before_the_run_folder_exists(override, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(TINY), f"run_dir={run_dir}", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clip-vlm train: error: ") and override.split("=")[0] in err and err.count("\n") == 1
    assert not run_dir.exists()


def test_every_numeric_recipe_field_declares_its_bounds():
    """A field added later (a QA mix ratio, ...) is validated by declaring it with bounded(...)."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            kind = str(f.type).replace(" | None", "")
            if kind in ("int", "float"):
                assert "bound" in f.metadata, f"{section}.{f.name} has no bounded(...) declaration"


def test_the_shipped_recipes_and_the_embedded_models_second_stage_pass_the_checks():
    import re

    from clip_vlm_core.model.checkpoint import default_model_path

    recipes = sorted((REPO / "training" / "configs").glob("*.yaml"))
    assert {r.name for r in recipes} == {"synthetic-tiny.yaml", "nuinteract-front-back.yaml",
                                         "nuinteract-front-back-qlora.yaml", "synthetic-tiny-surround.yaml",
                                         "synthetic-tiny-history.yaml", "nuinteract-surround-history.yaml"}
    for recipe in recipes:
        load_run_config(recipe, ["data.train_manifest=x.jsonl"])
    # `make embedded-model`'s second stage: the tiny recipe plus the Makefile's POLISH overrides, starting
    # from the first stage's checkpoint (any checkpoint will do here).
    polish = re.search(r"^POLISH = ((?:.*\\\n)*.*)$", (REPO / "Makefile").read_text(), re.M).group(1).split()
    polish = [o for o in polish if o != "\\" and not o.startswith("optim.init=")]
    assert "optim.max_steps=1500" in polish, polish
    load_run_config(TINY, [*polish, f"optim.init={default_model_path()}", "data.train_manifest=x.jsonl"])


# -- resuming ----------------------------------------------------------------------------------------
def overrides(manifest: Path, run_dir: Path, *more: str) -> list[str]:
    return [f"run_dir={run_dir}", f"data.train_manifest={manifest / 'mini_train.jsonl'}",
            f"data.val_manifest={manifest / 'mini_val.jsonl'}", "data.synthetic_scenes=0", "optim.max_steps=6",
            "optim.batch_size=2", "optim.log_every=1", "optim.eval_every=3", "optim.save_every=3",
            "optim.warmup_steps=2", "captioner.lora_r=16", "optim.lr_lora=0.003", *more]  # pinned: the recipe may change


@pytest.fixture(scope="module")
def interrupted_run(synthetic_manifest, tmp_path_factory) -> Path:
    """A tiny run stopped at step 2 of 6, its latest/ saved."""
    run_dir = tmp_path_factory.mktemp("resume") / "run"
    run_training(load_run_config(TINY, overrides(synthetic_manifest, run_dir)), show_progress=False, stop_after=2)
    assert (run_dir / "latest" / "recipe.yaml").is_file()
    return run_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and "tensorboard" not in p.parts}


@pytest.mark.parametrize(("changes", "words"), [
    (["captioner.lora_r=8"], ["changes the model's shape", "captioner.lora_r 16 -> 8"]),
    (["captioner.connector_heads=2", "captioner.views=[CAM_FRONT]"],
     ["the model's shape", "captioner.connector_heads 4 -> 2", "captioner.views ['CAM_FRONT', 'CAM_BACK'] -> ['CAM_FRONT']"]),
    (["captioner.clip_tokens=patch"], ["captioner.clip_tokens 'pooled' -> 'patch'"]),
    (["optim.init=base"], ["optim.init 'tiny' -> 'base'"]),
    (["captioner.prompt=Describe the road."], ["settings its checkpoint was trained with", "captioner.prompt"]),
])
def test_resuming_with_a_recipe_that_changes_the_model_is_refused(interrupted_run, synthetic_manifest, changes,
                                                                  words, capsys):
    before = snapshot(interrupted_run)
    argv = ["train", "--config", str(TINY), "--resume", "latest", "--no-progress",
            *overrides(synthetic_manifest, interrupted_run, *changes)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clip-vlm train: error: cannot resume {interrupted_run / 'latest'}")
    assert all(w in err for w in words), err
    assert snapshot(interrupted_run) == before  # nothing written: config.yaml, latest/, best/ as they were


def test_resuming_with_changed_steps_schedule_and_logging_is_allowed_logged_and_applied(
        interrupted_run, synthetic_manifest, caplog):
    caplog.set_level("INFO", logger="clip_vlm_core")
    changed = ["optim.max_steps=4", "optim.lr_lora=0.001", "optim.eval_every=2"]
    config = load_run_config(TINY, overrides(synthetic_manifest, interrupted_run, *changed))
    summary = run_training(config, resume="latest", show_progress=False)
    assert summary["step"] == 4
    assert ("resuming with changed settings: optim.eval_every 3 -> 2, optim.lr_lora 0.003 -> 0.001, "
            "optim.max_steps 6 -> 4") in caplog.text
    history = json.loads((interrupted_run / "latest" / "trainer_state.json").read_text())["history"]
    # after step 3 the new rate on the new cosine schedule, half-way from warm-up (step 2) to step 4:
    # 0.001 x 0.5; the saved one (0.003) would give 0.0015
    assert [h["lr_lora"] for h in history if h["step"] == 3 and "lr_lora" in h] == [pytest.approx(5e-4)]


# -- a bare camera name where a list of views belongs ----------------------------------------------------
VIEWS_REFUSED = "views must be a list of camera names, got 'CAM_FRONT'"


@pytest.mark.parametrize("where", ["override", "recipe file"])
def test_a_bare_camera_name_as_the_recipes_views_is_refused_before_anything_is_written(where, tmp_path, capsys):
    """YAML reads `views: CAM_FRONT` as a string, which a tuple() would turn into its letters."""
    run_dir = tmp_path / "run"
    if where == "override":
        argv = ["train", "--config", str(TINY), f"run_dir={run_dir}", "captioner.views=CAM_FRONT"]
    else:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(f"run_dir: {run_dir}\ncaptioner:\n  views: CAM_FRONT\ndata:\n  synthetic_scenes: 1\n")
        argv = ["train", "--config", str(recipe)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("clip-vlm train: error: ") and VIEWS_REFUSED in err and "Traceback" not in err
    assert not run_dir.exists()


def test_a_checkpoint_whose_views_are_a_bare_camera_name_is_refused_before_any_model_loads(tmp_path, capsys):
    from hostile_files import copy_embedded, edit_json

    checkpoint = copy_embedded(tmp_path)
    edit_json(checkpoint / "clip_vlm_config.json", views="CAM_FRONT")
    image = REPO / "clip_vlm_core" / "assets" / "samples" / "front.jpg"
    assert main(["caption", "--checkpoint", str(checkpoint), "--view", f"CAM_FRONT={image}"]) == 2
    err = capsys.readouterr().err
    assert VIEWS_REFUSED in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["CAM_FRONT", 3])
def test_the_nodes_views_parameter_as_a_bare_name_is_refused_in_one_sentence(value):
    from clip_vlm_core.stream import validate_parameters

    with pytest.raises(UserError, match=rf"parameter views={value!r} must be a list of strings"):
        validate_parameters({"views": value})
