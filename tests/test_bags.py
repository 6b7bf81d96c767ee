"""`clip-vlm bag convert` and `bag info`: bags read back with rosbags match the nuScenes tree."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from rosbags.interfaces import QosDurability, QosReliability
from rosbags.rosbag2 import Reader

from clip_vlm_core.bags import BagConvertOptions, convert_scene, load_nuscenes, read_bag_info
from clip_vlm_core.bags.messages import LATCHED_QOS, TYPESTORE
from clip_vlm_core.bags.play_qos import playback_qos
from clip_vlm_core.cli import main
from clip_vlm_core.errors import UserError

VERSION = "v1.0-mini"


def make_tree(root: Path, scenes: int = 1, samples: int = 4, sweeps: int = 2) -> Path:
    from clip_vlm_core.data.synthetic import generate_synthetic_nuscenes

    generate_synthetic_nuscenes(root, scenes=scenes, samples_per_scene=samples, sweeps=sweeps, seed=0,
                                captions_out=root / "nuinteract")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("nuscenes"))


@pytest.fixture(scope="module")
def nusc(tree):
    return load_nuscenes(tree, VERSION)


@pytest.fixture(scope="module")
def scene(nusc) -> str:
    return nusc.scene[0]["name"]


@pytest.fixture(scope="module")
def keyframe_bag(nusc, scene, tree, tmp_path_factory) -> Path:
    options = BagConvertOptions(captions=tree / "nuinteract", progress=False)
    return convert_scene(nusc, scene, tmp_path_factory.mktemp("bags"), options)


def read_messages(bag: Path) -> list[tuple[str, int, object]]:
    with Reader(bag) as reader:
        return [(c.topic, t, TYPESTORE.deserialize_cdr(raw, c.msgtype)) for c, t, raw in reader.messages()]


def by_topic(messages, topic):
    return [(t, msg) for name, t, msg in messages if name == topic]


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def scene_camera_records(nusc, scene: str, camera: str, keyframes_only: bool = True) -> list[dict]:
    record = next(s for s in nusc.scene if s["name"] == scene)
    samples, token = [], record["first_sample_token"]
    while token:
        samples.append(nusc.get("sample", token))
        token = samples[-1]["next"]
    if keyframes_only:
        return [nusc.get("sample_data", s["data"][camera]) for s in samples]
    records, sd = [], nusc.get("sample_data", samples[0]["data"][camera])
    while True:
        records.append(sd)
        if sd["token"] == samples[-1]["data"][camera]:
            return records
        sd = nusc.get("sample_data", sd["next"])


def test_keyframe_bag_has_one_message_per_keyframe_on_each_camera_topic(keyframe_bag, nusc, scene):
    samples = len(scene_camera_records(nusc, scene, "CAM_FRONT"))
    counts = {t.name: t.count for t in read_bag_info(keyframe_bag).topics}
    assert counts == {
        "/CAM_FRONT/image_raw/compressed": samples, "/CAM_FRONT/camera_info": samples,
        "/CAM_BACK/image_raw/compressed": samples, "/CAM_BACK/camera_info": samples,
        "/tf": 2 * samples, "/tf_static": 1, "/scene_caption_gt": samples,
    }


def test_header_stamps_and_bag_times_are_the_sample_data_timestamps(keyframe_bag, nusc, scene):
    messages = read_messages(keyframe_bag)
    for camera in ("CAM_FRONT", "CAM_BACK"):
        expected = [sd["timestamp"] * 1000 for sd in scene_camera_records(nusc, scene, camera)]
        for topic in (f"/{camera}/image_raw/compressed", f"/{camera}/camera_info"):
            got = by_topic(messages, topic)
            assert [t for t, _ in got] == expected
            assert [stamp_ns(msg) for _, msg in got] == expected
            assert all(msg.header.frame_id == camera for _, msg in got)
    bag_times = [t for _, t, _ in messages]
    assert bag_times == sorted(bag_times)
    for camera in ("CAM_FRONT", "CAM_BACK"):  # each camera's stamps strictly increase
        stamps = [stamp_ns(msg) for _, msg in by_topic(messages, f"/{camera}/image_raw/compressed")]
        assert len(stamps) > 1 and all(a < b for a, b in zip(stamps[:-1], stamps[1:], strict=True)), camera


def test_compressed_images_are_the_source_jpeg_bytes_unchanged(keyframe_bag, nusc, scene, tree):
    images = by_topic(read_messages(keyframe_bag), "/CAM_FRONT/image_raw/compressed")
    records = scene_camera_records(nusc, scene, "CAM_FRONT")
    for (_, msg), sd in zip(images, records, strict=True):
        assert msg.format == "jpeg"
        assert bytes(msg.data) == (tree / sd["filename"]).read_bytes()


def test_camera_info_carries_the_calibrated_intrinsics(keyframe_bag, nusc, scene, tree):
    sd = scene_camera_records(nusc, scene, "CAM_BACK")[0]
    intrinsic = np.array(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"])
    _, info = by_topic(read_messages(keyframe_bag), "/CAM_BACK/camera_info")[0]
    width, height = Image.open(tree / sd["filename"]).size
    assert np.allclose(info.k.reshape(3, 3), intrinsic)
    assert np.allclose(info.p.reshape(3, 4)[:, :3], intrinsic) and np.allclose(info.p.reshape(3, 4)[:, 3], 0)
    assert np.allclose(info.r.reshape(3, 3), np.eye(3))
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5
    assert (info.width, info.height) == (width, height)


def test_tf_is_the_ego_pose_of_each_image(keyframe_bag, nusc, scene):
    tf = by_topic(read_messages(keyframe_bag), "/tf")
    records = sorted(scene_camera_records(nusc, scene, "CAM_FRONT") + scene_camera_records(nusc, scene, "CAM_BACK"),
                     key=lambda sd: sd["timestamp"])
    assert len(tf) == len(records)
    for (bag_time, msg), sd in zip(tf, records, strict=True):
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        (t,) = msg.transforms
        assert (t.header.frame_id, t.child_frame_id) == ("map", "base_link")
        assert bag_time == stamp_ns(t) == sd["timestamp"] * 1000
        v, q = t.transform.translation, t.transform.rotation
        assert np.allclose([v.x, v.y, v.z], pose["translation"])
        assert np.allclose([q.w, q.x, q.y, q.z], pose["rotation"])


def test_tf_static_holds_each_camera_mount_once_at_the_start(keyframe_bag, nusc, scene):
    messages = read_messages(keyframe_bag)
    (bag_time, msg), = by_topic(messages, "/tf_static")
    assert bag_time == messages[0][1]
    mounts = {t.child_frame_id: t for t in msg.transforms}
    assert set(mounts) == {"CAM_FRONT", "CAM_BACK"}
    for camera, t in mounts.items():
        sd = scene_camera_records(nusc, scene, camera)[0]
        sensor = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        v, q = t.transform.translation, t.transform.rotation
        assert t.header.frame_id == "base_link"
        assert np.allclose([v.x, v.y, v.z], sensor["translation"])
        assert np.allclose([q.w, q.x, q.y, q.z], sensor["rotation"])


def test_metadata_is_version_8_and_tf_static_is_offered_transient_local(keyframe_bag):
    metadata = yaml.safe_load((keyframe_bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert metadata["version"] == 8 and metadata["storage_identifier"] == "mcap"
    topics = {t["topic_metadata"]["name"]: t["topic_metadata"] for t in metadata["topics_with_message_count"]}
    # Version 8 stores the offers as a YAML string with rmw's integer enums.
    (offer,) = yaml.safe_load(topics["/tf_static"]["offered_qos_profiles"])
    assert (offer["durability"], offer["reliability"], offer["depth"]) == (1, 1, 1)
    with Reader(keyframe_bag) as reader:
        (conn,) = [c for c in reader.connections if c.topic == "/tf_static"]
        assert conn.ext.offered_qos_profiles == [LATCHED_QOS]


def test_captions_are_front_and_back_joined_at_each_keyframe_front_stamp(keyframe_bag, nusc, scene, tree):
    import json

    records = {r["token"]: r for r in json.loads((tree / "nuinteract" / f"{scene}.json").read_text())}
    captions = by_topic(read_messages(keyframe_bag), "/scene_caption_gt")
    fronts = scene_camera_records(nusc, scene, "CAM_FRONT")
    assert [t for t, _ in captions] == [sd["timestamp"] * 1000 for sd in fronts]
    for (_, msg), sd in zip(captions, fronts, strict=True):
        caption = records[sd["sample_token"]].get("gemini_caption") or records[sd["sample_token"]]["gpt_caption"]
        assert msg.data == f"{caption['FRONT'].strip()} {caption['BACK'].strip()}"


def test_sweeps_add_every_camera_frame_between_the_keyframes(nusc, scene, tmp_path):
    bag = convert_scene(nusc, scene, tmp_path, BagConvertOptions(cameras=("CAM_FRONT",), sweeps=True, progress=False))
    frames = scene_camera_records(nusc, scene, "CAM_FRONT", keyframes_only=False)
    assert len(frames) > len(scene_camera_records(nusc, scene, "CAM_FRONT"))
    images = by_topic(read_messages(bag), "/CAM_FRONT/image_raw/compressed")
    assert [t for t, _ in images] == [sd["timestamp"] * 1000 for sd in frames]


def test_raw_option_writes_decoded_rgb8_images(nusc, scene, tree, tmp_path):
    bag = convert_scene(nusc, scene, tmp_path, BagConvertOptions(cameras=("CAM_BACK",), raw=True, progress=False))
    _, image = by_topic(read_messages(bag), "/CAM_BACK/image_raw")[0]
    sd = scene_camera_records(nusc, scene, "CAM_BACK")[0]
    expected = np.asarray(Image.open(tree / sd["filename"]).convert("RGB"))
    assert image.encoding == "rgb8" and image.step == image.width * 3
    assert np.array_equal(image.data.reshape(image.height, image.width, 3), expected)


def test_sqlite3_storage_writes_a_db3_bag_with_the_same_messages(nusc, scene, keyframe_bag, tree, tmp_path):
    options = BagConvertOptions(storage="sqlite3", captions=tree / "nuinteract", progress=False)
    bag = convert_scene(nusc, scene, tmp_path, options)
    assert read_bag_info(bag).storage == "sqlite3" and list(bag.glob("*.db3"))
    mcap = [(topic, t) for topic, t, _ in read_messages(keyframe_bag)]
    assert [(topic, t) for topic, t, _ in read_messages(bag)] == mcap


@pytest.mark.parametrize(
    ("scene_name", "cameras", "message"),
    [("scene-9999", ("CAM_FRONT",), "scene-9999"), (None, ("CAM_FRONT", "CAM_TOP"), "CAM_TOP")],
)
def test_unknown_scene_or_camera_is_a_user_error_and_writes_nothing(nusc, scene, tmp_path, scene_name, cameras, message):
    with pytest.raises(UserError, match=message):
        convert_scene(nusc, scene_name or scene, tmp_path / "bags", BagConvertOptions(cameras=cameras, progress=False))
    assert not (tmp_path / "bags").exists() or not any((tmp_path / "bags").iterdir())


def test_missing_image_file_is_named_and_no_bag_is_left(tmp_path):
    root = make_tree(tmp_path / "nuscenes", samples=2, sweeps=0)
    nusc = load_nuscenes(root, VERSION)
    scene = nusc.scene[0]["name"]
    victim = root / scene_camera_records(nusc, scene, "CAM_BACK")[-1]["filename"]
    victim.unlink()
    with pytest.raises(UserError, match=re.escape(victim.name)):
        convert_scene(nusc, scene, tmp_path / "bags", BagConvertOptions(progress=False))
    assert not (tmp_path / "bags").exists() or list((tmp_path / "bags").iterdir()) == []


def test_image_failing_mid_write_leaves_no_partial_bag(tmp_path):
    root = make_tree(tmp_path / "nuscenes", samples=2, sweeps=0)
    nusc = load_nuscenes(root, VERSION)
    scene = nusc.scene[0]["name"]
    (root / scene_camera_records(nusc, scene, "CAM_FRONT")[-1]["filename"]).write_bytes(b"not a jpeg")
    out = tmp_path / "bags"
    out.mkdir()
    with pytest.raises(UserError, match="cannot be read as an image"):
        convert_scene(nusc, scene, out, BagConvertOptions(raw=True, progress=False))
    assert list(out.iterdir()) == []


def test_existing_bag_is_refused_unless_overwrite(nusc, scene, tmp_path):
    first = convert_scene(nusc, scene, tmp_path, BagConvertOptions(cameras=("CAM_FRONT",), progress=False))
    with pytest.raises(UserError, match="already exists"):
        convert_scene(nusc, scene, tmp_path, BagConvertOptions(progress=False))
    again = convert_scene(nusc, scene, tmp_path, BagConvertOptions(overwrite=True, progress=False))
    assert again == first
    assert "/CAM_BACK/image_raw/compressed" in {t.name for t in read_bag_info(again).topics}
    assert sorted(p.name for p in tmp_path.iterdir()) == [scene]


def test_cli_converts_every_scene_into_folders_named_after_them(tree, tmp_path, capsys):
    out = tmp_path / "bags"
    assert main(["bag", "convert", "--dataroot", str(tree), "--version", VERSION, "--all", "--out", str(out)]) == 0
    nusc = load_nuscenes(tree, VERSION)
    assert sorted(p.name for p in out.iterdir()) == sorted(s["name"] for s in nusc.scene)


def test_cli_bad_dataroot_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = main(["bag", "convert", "--dataroot", str(missing), "--all", "--out", str(tmp_path / "bags")])
    assert code == 2 and str(missing) in capsys.readouterr().err
    assert not (tmp_path / "bags").exists()


def test_cli_info_prints_topics_types_counts_and_storage(keyframe_bag, capsys):
    assert main(["bag", "info", str(keyframe_bag)]) == 0
    out = capsys.readouterr().out
    assert "mcap" in out and "version 8" in out and "duration" in out
    line = next(row for row in out.splitlines() if row.startswith("/tf_static"))
    assert line.split()[:3] == ["/tf_static", "tf2_msgs/msg/TFMessage", "1"] and "transient_local" in line


def test_info_on_a_folder_that_is_no_bag_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no metadata.yaml"):
        read_bag_info(tmp_path)


def test_playback_offers_the_recorded_latched_qos_with_depth_10():
    qos = playback_qos([LATCHED_QOS])
    assert (qos.durability, qos.reliability, qos.depth) == (QosDurability.TRANSIENT_LOCAL, QosReliability.RELIABLE, 10)


def test_playback_without_recorded_offer_is_reliable_volatile_and_reliability_can_be_overridden():
    assert (playback_qos([]).durability, playback_qos([]).reliability) == (QosDurability.VOLATILE, QosReliability.RELIABLE)
    assert playback_qos([LATCHED_QOS], "best_effort").reliability == QosReliability.BEST_EFFORT


def test_storage_file_is_named_after_the_scene_not_the_staging_folder(keyframe_bag):
    metadata = yaml.safe_load((keyframe_bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert metadata["relative_file_paths"] == [f"{keyframe_bag.name}.mcap"]
    assert sorted(p.name for p in keyframe_bag.iterdir()) == sorted(["metadata.yaml", f"{keyframe_bag.name}.mcap"])


# -- one orchestration for every scene (library; the CLI prints it) ------------------------------------------
def test_every_scene_is_checked_before_the_first_bag_is_written(synthetic_nuscenes, tmp_path, capsys):
    from clip_vlm_core.bags import convert_scenes

    nusc = load_nuscenes(synthetic_nuscenes, VERSION)
    out = tmp_path / "bags"
    (out / "scene-0103").mkdir(parents=True)
    (out / "scene-0103" / "notes.txt").write_text("mine")  # the second scene's target: someone else's folder
    with pytest.raises(UserError, match="scene-0103 already exists"):
        list(convert_scenes(nusc, ["scene-0061", "scene-0103"], out, BagConvertOptions(progress=False)))
    assert sorted(p.name for p in out.iterdir()) == ["scene-0103"]  # scene-0061 was not written either
    argv = ["bag", "convert", "--dataroot", str(synthetic_nuscenes), "--all", "--out", str(out)]
    assert main(argv) == 2 and "scene-0103 already exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["scene-0103"]


def test_each_converted_scene_says_where_it_went_and_its_captions_and_the_cli_prints_them(synthetic_nuscenes,
                                                                                           tmp_path, capsys):
    from clip_vlm_core.bags import convert_scenes

    nusc = load_nuscenes(synthetic_nuscenes, VERSION)
    options = BagConvertOptions(captions=synthetic_nuscenes / "nuinteract", progress=False)
    done = list(convert_scenes(nusc, ["scene-0103", "scene-0061", "scene-0103"], tmp_path / "lib", options))
    assert [(d.path, d.captioned, d.uncaptioned) for d in done] == [
        (tmp_path / "lib" / "scene-0103", 4, 0), (tmp_path / "lib" / "scene-0061", 4, 0)]  # a name given twice: once
    assert all(d.seconds > 0 and (d.path / "metadata.yaml").is_file() for d in done)
    argv = ["bag", "convert", "--dataroot", str(synthetic_nuscenes), "--all", "--out", str(tmp_path / "cli"),
            "--captions", str(synthetic_nuscenes / "nuinteract")]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [str(tmp_path / "cli" / "scene-0061"), str(tmp_path / "cli" / "scene-0103")]
    assert lines[2].startswith("/scene_caption_gt: 8 keyframes captioned; 0 without a caption")
