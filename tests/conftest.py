"""Fixtures shared across the suite: a synthetic nuScenes tree and its manifest, made once per session;
the `ros` marker, and the ROS 2 distro of the run, said at its start and at its end (a CI log shows which ran)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from ros_distro import describe_running_distro  # noqa: E402


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "ros: runs rclpy or the node over real DDS; `make test` and `make test-slow` "
                                       "run these under every tested ROS 2 distro (Kilted in .venv, Jazzy in .venv-jazzy)")


def pytest_report_header(config) -> str:
    return f"ROS 2 distro: {describe_running_distro()}"


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.write_line(f"ROS 2 distro of this run: {describe_running_distro()}")


@pytest.fixture(scope="session")
def synthetic_nuscenes(tmp_path_factory) -> Path:
    """2 scenes x 4 keyframes (one train, one val scene), seed 0; captions in <root>/nuinteract."""
    from clip_vlm_core.data.synthetic import generate_synthetic_nuscenes

    root = tmp_path_factory.mktemp("synthetic") / "nuscenes"
    generate_synthetic_nuscenes(root, scenes=2, samples_per_scene=4, seed=0, show_progress=False)
    return root


@pytest.fixture(scope="session")
def surround_nuscenes(tmp_path_factory) -> Path:
    """The six-camera drive world (`data synth --cameras all`): 2 scenes x 6 keyframes, 2 sweeps between
    keyframes, seed 0; captions in <root>/nuinteract."""
    from clip_vlm_core.data.synthetic import generate_synthetic_nuscenes

    root = tmp_path_factory.mktemp("surround") / "nuscenes"
    generate_synthetic_nuscenes(root, scenes=2, samples_per_scene=6, sweeps=2, seed=0, show_progress=False,
                                cameras="all")
    return root


@pytest.fixture(scope="session")
def manifest_of(synthetic_nuscenes, tmp_path_factory):
    """`manifest_of(views, qa_file)`: the manifest folder of `synthetic_nuscenes` for these camera views, with the
    questions of <root>/`qa_file` if given; built once per (views, qa_file) for the session. Read-only."""
    from clip_vlm_core.data.manifest import build_manifest

    built: dict[tuple, Path] = {}

    def make(views=("CAM_FRONT", "CAM_BACK"), qa_file: str | None = None) -> Path:
        key = (tuple(views), qa_file)
        if key not in built:
            out = tmp_path_factory.mktemp("manifest") / "manifest"
            build_manifest(synthetic_nuscenes, "v1.0-mini", synthetic_nuscenes / "nuinteract", list(views), out,
                           show_progress=False, qa=[synthetic_nuscenes / qa_file] if qa_file else ())
            built[key] = out
        return built[key]

    return make


@pytest.fixture(scope="session")
def synthetic_manifest(manifest_of) -> Path:
    """The manifest folder of `synthetic_nuscenes` (CAM_FRONT + CAM_BACK)."""
    return manifest_of()


@pytest.fixture(scope="session")
def scene_bags(tmp_path_factory) -> list[Path]:
    """Three bags written by `clip-vlm bag convert` from synthetic scenes (keyframes and 2 sweeps between them,
    front and back cameras): 10 frame pairs each. Read-only: copy one to change it."""
    from clip_vlm_core.cli import main
    from clip_vlm_core.data.synthetic import generate_synthetic_nuscenes

    root = tmp_path_factory.mktemp("scene_bags")
    generate_synthetic_nuscenes(root / "nuscenes", scenes=3, samples_per_scene=4, sweeps=2, seed=3, show_progress=False)
    assert main(["bag", "convert", "--dataroot", str(root / "nuscenes"), "--all", "--sweeps",
                 "--out", str(root / "bags")]) == 0
    return sorted((root / "bags").iterdir())


@pytest.fixture(scope="session")
def ray_local():
    """Ray on this machine for the label tests, started once: 2 CPUs, no dashboard, quiet. Only the tests that
    take this fixture start Ray; nothing else in the suite imports it."""
    import logging

    ray = pytest.importorskip("ray")
    # address="local": a Ray of its own, whatever `ray start` runs (or left behind) on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray
    ray.shutdown()


# -- models shared across the session, read-only --------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> dict[str, Path]:
    """The tiny random base models (seed 0: Qwen2.5-VL and OpenCLIP classes), built once; read, never written."""
    from clip_vlm_core.model.tiny import save_tiny_base_models

    return save_tiny_base_models(tmp_path_factory.mktemp("tiny_base") / "base", seed=0)


@pytest.fixture(scope="session")
def _embedded_session():
    from clip_vlm_core.model import SceneCaptioner

    return SceneCaptioner.from_pretrained(None, device="cpu")


@pytest.fixture
def embedded_captioner(_embedded_session):
    """The embedded default model on the CPU, loaded once for the session. Read-only: a test that changes it
    (fast decoding, merged adapters, base-model mode) must undo that, and this checks it did."""
    captioner = _embedded_session
    yield captioner
    model = captioner.model
    assert model.fast_decoder is None and model.fusion_enabled and not captioner.inference, \
        "a test left the shared embedded captioner changed"
    assert not any(getattr(m, "merged", False) for m in model.qwen.modules()), "a test left LoRA merged"
    assert model.base_qwen.model.visual.config._attn_implementation == "sdpa", "a test left varlen attention on"


@pytest.fixture(scope="session")
def untrained_checkpoint(tiny_base) -> Path:
    """An untrained captioner checkpoint of `tiny_base` (seed 0), beside it: its config names ../base/qwen and
    ../base/clip, so checkpoint and base models move together. Read-only."""
    import torch

    from clip_vlm_core.model import SceneCaptioner
    from clip_vlm_core.model.tiny import tiny_captioner_config

    checkpoint = tiny_base["qwen"].parent.parent / "untrained"
    torch.manual_seed(0)
    return SceneCaptioner.build(tiny_captioner_config(tiny_base), device="cpu").save_pretrained(
        checkpoint, base_models_relative_to=checkpoint)
