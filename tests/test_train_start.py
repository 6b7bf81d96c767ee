"""A training start that fails before its first step leaves the run folder as it found it, so that the same
command can be retried as it is (issue 28, item 5); an --overwrite that fails so puts the previous run back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_train import CONFIGS, tiny_overrides

from clip_vlm_core.cli import main

RECIPE = str(CONFIGS / "synthetic-tiny.yaml")


def _train(*args: str) -> int:
    return main(["train", "--config", RECIPE, "--no-progress", *args])


def _broken_manifest(synthetic_manifest: Path, tmp_path: Path) -> Path:
    """A copy of the manifest folder whose training manifest has no samples."""
    copy = tmp_path / "manifest"
    shutil.copytree(synthetic_manifest, copy)
    (copy / "mini_train.jsonl").write_text("")
    return copy


# Each is found once the run folder holds config.yaml, run_info.json and base/ (and, for the last, the
# encoder cache): while loading the data, or in the loop before the first step.
FAILURES = {
    "no training samples": (lambda m, t: (_broken_manifest(m, t), []), "has no samples"),
    "dataroot that is not a folder": (lambda m, t: (m, [f"data.dataroot={m / 'manifest.json'}"]), "is not a folder"),
    "an image missing": (lambda m, t: (m, [f"data.dataroot={_tree_missing_an_image(m, t)}"]), "does not exist"),
}


def _tree_missing_an_image(manifest: Path, tmp_path: Path) -> Path:
    """A copy of the manifest's nuScenes tree without one training image."""
    from clip_vlm_core.data.manifest import load_manifest, manifest_dataroot

    tree = tmp_path / "nuscenes"
    shutil.copytree(manifest_dataroot(manifest), tree)
    row = load_manifest(manifest / "mini_train.jsonl")[-1]
    (tree / next(iter(row.views.values())).path).unlink()
    return tree


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_a_start_that_fails_before_the_first_step_leaves_no_run_folder(case, synthetic_manifest, tmp_path, capsys):
    make, message = FAILURES[case]
    manifest, extra = make(synthetic_manifest, tmp_path)
    run_dir = tmp_path / "run"
    assert _train(*tiny_overrides(manifest, run_dir, max_steps=1), *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")], "no staging or set-aside left"


def test_the_same_command_then_runs_without_overwrite(synthetic_manifest, tmp_path, capsys):
    broken, run_dir = _broken_manifest(synthetic_manifest, tmp_path), tmp_path / "run"
    assert _train(*tiny_overrides(broken, run_dir, max_steps=1)) == 2
    shutil.copyfile(synthetic_manifest / "mini_train.jsonl", broken / "mini_train.jsonl")  # the user fixes the data
    assert _train(*tiny_overrides(broken, run_dir, max_steps=1)) == 0
    assert json.loads((run_dir / "latest" / "trainer_state.json").read_text())["step"] == 1


def test_a_folder_the_user_made_is_left_empty(synthetic_manifest, tmp_path):
    run_dir = tmp_path / "made"
    run_dir.mkdir()
    assert _train(*tiny_overrides(_broken_manifest(synthetic_manifest, tmp_path), run_dir, max_steps=1)) == 2
    assert run_dir.is_dir() and not list(run_dir.iterdir())


def test_a_failed_overwrite_puts_the_previous_run_back(synthetic_manifest, tmp_path):
    run_dir = tmp_path / "run"
    assert _train(*tiny_overrides(synthetic_manifest, run_dir, max_steps=1)) == 0
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    state = (run_dir / "latest" / "trainer_state.json").read_bytes()
    broken = _broken_manifest(synthetic_manifest, tmp_path)
    assert _train("--overwrite", *tiny_overrides(broken, run_dir, max_steps=1)) == 2
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before
    assert (run_dir / "latest" / "trainer_state.json").read_bytes() == state
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]
    # ... and an --overwrite that gets under way replaces it, leaving nothing set aside.
    assert _train("--overwrite", *tiny_overrides(synthetic_manifest, run_dir, max_steps=2)) == 0
    assert json.loads((run_dir / "latest" / "trainer_state.json").read_text())["step"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]
