"""`data build --history K --history-stride S`: each view's past frames from the sample_data chain, and the
named per-view target of more than two cameras; built from real-format data through the real devkit."""

from __future__ import annotations

import json
import shutil

import pytest

from clip_vlm_core.cli import main
from clip_vlm_core.data.history import NO_EARLIER_FRAME, NO_FRAME_NEAR, pick_past
from clip_vlm_core.data.manifest import build_manifest, load_manifest, sha256_file, verify_manifest
from clip_vlm_core.data.nuinteract import view_label
from clip_vlm_core.data.scene_facts import parse_facts
from clip_vlm_core.errors import UserError
from tests.intact import assert_one_sentence

SIX = ["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]


def _frames(now_us: int, period_us: int, n: int) -> list[tuple[str, int]]:
    """A chain's n frames before `now_us`, newest first, `period_us` apart."""
    return [(f"f{k}", now_us - k * period_us) for k in range(1, n + 1)]


def test_past_frames_are_the_nearest_to_each_stride_oldest_first():
    sweeps = _frames(10_000_000, 83_333, 30)  # ~12 Hz
    picked = pick_past(sweeps, 10_000_000, 3, 0.1)
    assert picked == [("f4", ""), ("f2", ""), ("f1", "")]  # -0.33, -0.17, -0.08 s: nearest to -0.3, -0.2, -0.1
    keyframes = _frames(10_000_000, 500_000, 5)
    assert pick_past(keyframes, 10_000_000, 4, 0.5) == [("f4", ""), ("f3", ""), ("f2", ""), ("f1", "")]


def test_a_past_frame_before_the_chain_or_between_its_frames_is_missing_with_its_reason():
    assert pick_past(_frames(10_000_000, 500_000, 1), 10_000_000, 3, 0.5) == [
        (None, NO_EARLIER_FRAME), (None, NO_EARLIER_FRAME), ("f1", "")]
    assert pick_past([], 10_000_000, 2, 0.5) == [(None, NO_EARLIER_FRAME)] * 2
    # Keyframes only (2 Hz) and a 0.1 s stride: nothing within 0.05 s of -0.1 or -0.2 s.
    assert pick_past(_frames(10_000_000, 500_000, 4), 10_000_000, 2, 0.1) == [(None, NO_FRAME_NEAR)] * 2


def test_no_frame_serves_twice():
    sparse = [("a", 9_000_000), ("b", 7_000_000)]  # 1 s and 3 s back; stride 0.8 s: -0.8, -1.6 (b too far)
    picked = pick_past(sparse, 10_000_000, 2, 0.8)
    assert [token for token, _ in picked].count("a") == 1 and picked[1] == ("a", "")


@pytest.fixture(scope="module")
def history_manifest(surround_nuscenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("history") / "m"
    report = build_manifest(surround_nuscenes, "v1.0-mini", surround_nuscenes / "nuinteract", SIX, out,
                            show_progress=False, history=3, history_stride_s=0.5)
    return out, report


def test_every_view_gets_its_k_past_frames_oldest_first_with_their_offsets(history_manifest, surround_nuscenes):
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes("v1.0-mini", str(surround_nuscenes), verbose=False)
    out, _ = history_manifest
    rows = load_manifest(out)
    assert len(rows) == 12
    for row in rows:
        assert set(row.history) == set(SIX)
        sample = nusc.get("sample", row.sample_token)
        for cam, frames in row.history.items():
            assert len(frames) == 3
            # Walk the chain back by hand: past frame j is the keyframe j before (0.5 s stride, keyframes 0.5 s apart).
            sd, chain = nusc.get("sample_data", sample["data"][cam]), []
            while sd["prev"]:
                sd = nusc.get("sample_data", sd["prev"])
                chain.append(sd)
            keyframes = [sd for sd in chain if sd["is_key_frame"]][:3][::-1]
            expected = [None] * (3 - len(keyframes)) + [sd["filename"] for sd in keyframes]
            assert [f and f.path for f in frames] == expected, (row.sample_token, cam)
            present = [f for f in frames if f]
            assert [f.offset_s for f in present] == sorted(f.offset_s for f in present)
            for j, frame in zip(range(3, 0, -1), frames, strict=True):
                if frame:
                    assert frame.offset_s == pytest.approx(-0.5 * j, abs=1e-6)
                    assert frame.sha256 == sha256_file(surround_nuscenes / frame.path)


def test_missing_past_frames_are_counted_and_the_rows_kept(history_manifest):
    out, report = history_manifest
    # Two scenes: their first keyframe has no past, their second one, and so on: (3 + 2 + 1) per view and scene.
    assert report.history_missing == {NO_EARLIER_FRAME: 2 * 6 * (3 + 2 + 1)} and report.history_slots == 12 * 6 * 3
    assert "history: 3 past frames per view, 72 of 216 missing" in report.summary()
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["history"] == {"frames": 3, "stride_s": 0.5, "past_frames": 216, "missing": {NO_EARLIER_FRAME: 72}}


def test_sweeps_serve_a_fine_stride_and_a_deleted_sweep_is_a_counted_gap(surround_nuscenes, tmp_path, capsys):
    tree = tmp_path / "tree"
    shutil.copytree(surround_nuscenes, tree)
    victim = sorted((tree / "sweeps" / "CAM_FRONT").iterdir())[4]
    victim.unlink()
    argv = ["data", "build", "--dataroot", str(tree), "--captions", str(tree / "nuinteract"), "--cameras", "CAM_FRONT",
            "CAM_BACK", "--history", "2", "--history-stride", "0.17", "--out", str(tmp_path / "m")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "past frame image missing, corrupt or over the limits: 1" in out
    rows = load_manifest(tmp_path / "m")
    offsets = {round(f.offset_s, 2) for row in rows for frames in row.history.values() for f in frames if f}
    assert offsets == {-0.33, -0.17}  # sweeps every 1/6 s here (2 between keyframes)
    assert sum(f is None for row in rows for f in row.history["CAM_FRONT"]) == 2 * 2 + 1
    assert len(rows) == 12  # no row lost to a missing past frame


def test_verify_rehashes_past_frames(surround_nuscenes, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(surround_nuscenes, tree)
    build_manifest(tree, "v1.0-mini", tree / "nuinteract", ["CAM_BACK"], tmp_path / "m", show_progress=False,
                   history=1)
    row = next(r for r in load_manifest(tmp_path / "m") if r.history["CAM_BACK"][0])
    past = tree / row.history["CAM_BACK"][0].path
    past.write_bytes(past.read_bytes() + b"\0")
    checked, problems = verify_manifest(tmp_path / "m", show_progress=False)
    assert checked == 12 + 10 and any(str(past) in p and "sha256 changed" in p for p in problems)


def test_more_than_two_cameras_name_each_views_caption_in_camera_order(history_manifest, surround_nuscenes):
    out, _ = history_manifest
    truth = json.loads((surround_nuscenes / "synthetic_facts.json").read_text())
    for row in load_manifest(out):
        labels = [view_label(cam) + ":" for cam in SIX]
        assert labels == ["Front:", "Front left:", "Front right:", "Back:", "Back left:", "Back right:"]
        positions = [row.caption.index(label + " ") for label in labels]
        assert row.caption.startswith("Front: ") and positions == sorted(positions)
        assert parse_facts(row.caption) == truth[row.sample_token]
    assert json.loads((out / "manifest.json").read_text())["caption_format"] == "named views"


def test_inspect_says_the_history(history_manifest, capsys):
    out, _ = history_manifest
    assert main(["data", "inspect", str(out), "--samples", "0"]) == 0
    assert "history: 3 past frames per view every 0.5 s; 72 of 216 missing" in capsys.readouterr().out


def test_chosen_caption_keys_and_two_cameras_keep_the_joint_target(surround_nuscenes, tmp_path):
    build_manifest(surround_nuscenes, "v1.0-mini", surround_nuscenes / "nuinteract", SIX, tmp_path / "a",
                   caption_keys=["FRONT", "BACK"], show_progress=False)
    build_manifest(surround_nuscenes, "v1.0-mini", surround_nuscenes / "nuinteract", ["CAM_FRONT", "CAM_BACK"],
                   tmp_path / "b", show_progress=False)
    for out in ("a", "b"):
        rows = load_manifest(tmp_path / out)
        assert rows and all(not r.caption.startswith("Front:") and not r.history for r in rows)
        assert "history" not in json.loads((tmp_path / out / "manifest.json").read_text())


@pytest.mark.parametrize(("flag", "value", "fragment"), [
    ("--history", "-1", "--history must be a whole number of past frames from 0 to 16"),
    ("--history", "17", "--history must be a whole number of past frames from 0 to 16"),
    ("--history-stride", "0", "--history-stride must be a time in seconds above 0"),
    ("--history-stride", "nan", "--history-stride must be a time in seconds above 0"),
])
def test_a_bad_history_setting_is_one_clear_error_and_writes_nothing(surround_nuscenes, tmp_path, capsys, flag, value,
                                                                       fragment):
    argv = ["data", "build", "--dataroot", str(surround_nuscenes), "--captions", str(surround_nuscenes / "nuinteract"),
            "--out", str(tmp_path / "m"), flag, value]
    assert main(argv) == 2
    assert_one_sentence(capsys.readouterr().err, "data", fragment)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(("frame", "fragment"), [
    ({"path": "/etc/passwd", "sha256": "0" * 64, "width": 1, "height": 1, "offset_s": -0.5}, "past frame 0"),
    ({"path": "samples/x.jpg", "sha256": "0" * 64, "width": 1, "height": 1, "offset_s": 0.5}, "offset_s"),
    ({"path": "samples/x.jpg"}, "not a valid row"),
])
def test_a_manifest_row_with_a_bad_past_frame_is_refused(history_manifest, tmp_path, frame, fragment):
    out, _ = history_manifest
    raw = json.loads((out / "mini_train.jsonl").read_text().splitlines()[0])
    raw["history"]["CAM_FRONT"][0] = frame
    (tmp_path / "bad.jsonl").write_text(json.dumps(raw) + "\n")
    with pytest.raises(UserError, match=fragment):
        load_manifest(tmp_path / "bad.jsonl")
