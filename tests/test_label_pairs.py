"""A bag's camera pairs as `clip-vlm label` sees them (the node's pairing and frame checks), and the keys that
make each label row unique: bag identity by content, model identity, settings, pair key."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_vlm_core.bags import messages as m
from clip_vlm_core.bags.reader import open_bag
from clip_vlm_core.errors import UserError
from clip_vlm_core.images import EncodedImage
from clip_vlm_core.label.keys import bag_identity, model_identity, pair_key, settings_id
from clip_vlm_core.label.pairs import PairingReport, bag_pairs, camera_topics

VIEWS = ("CAM_FRONT", "CAM_BACK")
START = 1_700_000_000 * 10**9


def jpeg(width: int = 64, height: int = 36, colour: int = 90) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (colour, 40, 200)).save(out, format="JPEG")
    return out.getvalue()


def write_bag(path: Path, frames: dict[str, list[tuple[int, bytes]]], raw: bool = False) -> Path:
    """A bag of camera frames: {view: [(stamp_ns, jpeg bytes)]}, logged at their stamps."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    writer = Writer(path, version=8, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    messages = []
    for view, items in frames.items():
        topic = f"/{view}/image_raw" + ("" if raw else "/compressed")
        conn = writer.add_connection(topic, m.RAW_IMAGE if raw else m.COMPRESSED_IMAGE, typestore=m.TYPESTORE)
        for stamp, data in items:
            if raw:
                rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                messages.append((stamp, conn, m.raw_image(stamp, view, rgb)))
            else:
                messages.append((stamp, conn, m.serialize(m.T[m.COMPRESSED_IMAGE](
                    header=m.header(stamp, view), format="jpeg", data=np.frombuffer(data, np.uint8)))))
    for stamp, conn, data in sorted(messages, key=lambda x: x[0]):
        writer.write(conn, stamp, data)
    writer.close()
    return path


def pairs_of(path: Path, **kwargs) -> tuple[list, PairingReport]:
    report = PairingReport()
    with open_bag(path) as bag:
        pairs = list(bag_pairs(bag, camera_topics(bag, VIEWS, transport=kwargs.pop("transport", "auto")),
                               kwargs.pop("max_skew_ms", 50.0), report=report, **kwargs))
    return pairs, report


def test_a_converted_scene_pairs_every_front_frame_with_its_back_frame(scene_bags):
    with open_bag(scene_bags[0]) as bag:
        stamps = {view: [m.deserialize(raw, m.COMPRESSED_IMAGE).header.stamp for _, _, raw in
                         bag.messages([f"/{view}/image_raw/compressed"])] for view in VIEWS}
        start = bag.start_ns
    pairs, report = pairs_of(scene_bags[0])
    front = [s.sec * 10**9 + s.nanosec for s in stamps["CAM_FRONT"]]
    back = [s.sec * 10**9 + s.nanosec for s in stamps["CAM_BACK"]]
    assert [p.stamps_ns for p in pairs] == list(zip(front, back, strict=True))
    assert [p.stamp_ns for p in pairs] == front  # the first view's stamp, as the node stamps its caption
    assert [p.offset_ns for p in pairs] == [min(f, b) - start for f, b in zip(front, back, strict=True)]
    assert all(isinstance(image, EncodedImage) for p in pairs for image in p.images)
    assert report.pairs == report.selected == 10 and report.unpaired == 0


def test_frames_further_apart_than_max_skew_do_not_pair(tmp_path):
    frames = {"CAM_FRONT": [(START + i * 100_000_000, jpeg()) for i in range(4)],
              "CAM_BACK": [(START + i * 100_000_000 + (60_000_000 if i == 2 else 10_000_000), jpeg()) for i in range(4)]}
    bag = write_bag(tmp_path / "bag", frames)
    pairs, report = pairs_of(bag)
    assert [p.stamp_ns for p in pairs] == [START, START + 100_000_000, START + 300_000_000]
    wide, _ = pairs_of(bag, max_skew_ms=70.0)
    assert len(wide) == 4


def test_a_bad_frame_is_counted_and_never_paired_as_in_the_node(tmp_path):
    good = jpeg()
    frames = {"CAM_FRONT": [(START, good), (START + 10**8, b""), (START + 2 * 10**8, b"\xff\xd8\xff not a jpeg"),
                            (START + 3 * 10**8, good)],
              "CAM_BACK": [(START + i * 10**8 + 5_000_000, good) for i in range(4)]}
    pairs, report = pairs_of(write_bag(tmp_path / "bag", frames))
    assert [p.stamp_ns for p in pairs] == [START, START + 3 * 10**8]
    assert report.bad_frames == {"CAM_FRONT": 2} and "CAM_FRONT" in report.bad_reason


def test_every_keeps_the_first_pair_of_each_window_of_the_bag(scene_bags):
    everything, _ = pairs_of(scene_bags[0])
    chosen, report = pairs_of(scene_bags[0], every_s=0.5)
    windows = sorted({p.offset_ns // 500_000_000 for p in everything})
    assert [p.offset_ns // 500_000_000 for p in chosen] == windows
    assert chosen == [next(p for p in everything if p.offset_ns // 500_000_000 == w) for w in windows]
    assert report.pairs == 10 and report.selected == len(windows) == 4


def test_raw_frames_are_found_and_converted_when_a_bag_has_no_compressed_ones(tmp_path):
    frames = {v: [(START + i * 10**8, jpeg(colour=40 * i)) for i in range(3)] for v in VIEWS}
    pairs, _ = pairs_of(write_bag(tmp_path / "bag", frames, raw=True))
    assert len(pairs) == 3 and all(isinstance(i, np.ndarray) and i.shape == (36, 64, 3) for p in pairs for i in p.images)


def test_a_bag_without_the_models_views_is_a_sentence_naming_what_was_looked_for(tmp_path):
    bag_path = write_bag(tmp_path / "bag", {"CAM_FRONT": [(START, jpeg())], "CAM_LEFT": [(START, jpeg())]})
    with open_bag(bag_path) as bag, pytest.raises(UserError) as error:
        camera_topics(bag, VIEWS)
    assert "/CAM_BACK/image_raw/compressed" in str(error.value) and "/CAM_LEFT/image_raw/compressed" in str(error.value)


def test_bag_identity_follows_content_not_path(scene_bags, tmp_path):
    def identity(path: Path) -> str:
        with open_bag(path) as bag:
            return bag_identity([f.path for f in bag.files], str(path))

    original = identity(scene_bags[0])
    copy = shutil.copytree(scene_bags[0], tmp_path / "elsewhere" / "renamed")
    assert identity(copy) == original
    assert identity(next(copy.glob("*.mcap"))) == original  # the same storage read as a single file
    assert identity(scene_bags[1]) != original
    storage = next(copy.glob("*.mcap"))
    data = bytearray(storage.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit of one image
    storage.write_bytes(bytes(data))
    assert identity(copy) != original


def test_model_identity_follows_the_checkpoints_files(tmp_path):
    from clip_vlm_core.model.model_refs import embedded_assets

    embedded = model_identity(None)
    assert embedded.name == "embedded-default" and embedded.views == VIEWS
    assets = shutil.copytree(embedded_assets(), tmp_path / "assets")
    copy = model_identity(str(assets / "default_model"))
    assert copy.sha256 == embedded.sha256  # moved or copied: the same model
    connector = assets / "default_model" / "connector.safetensors"
    connector.write_bytes(connector.read_bytes()[:-1] + b"\x00")
    assert model_identity(str(assets / "default_model")).sha256 != embedded.sha256


def test_keys_change_with_every_setting_a_caption_depends_on():
    decoding = {"max_new_tokens": 64, "num_beams": 1}
    base = settings_id("sha256:m", "Describe.", decoding, ["Is it night?"])
    assert settings_id("sha256:m", "Describe.", dict(decoding), ["Is it night?"]) == base
    others = {settings_id("sha256:n", "Describe.", decoding, ["Is it night?"]),
              settings_id("sha256:m", "Describe it.", decoding, ["Is it night?"]),
              settings_id("sha256:m", "Describe.", {**decoding, "max_new_tokens": 32}, ["Is it night?"]),
              settings_id("sha256:m", "Describe.", decoding, []),
              settings_id("sha256:m", "Describe.", decoding, ["Is it day?"])}
    assert base not in others and len(others) == 5
    key = pair_key("sha256:b", VIEWS, (1, 2), base)
    assert key == pair_key("sha256:b", VIEWS, (1, 2), base) and len(key) == 32
    assert len({key, pair_key("sha256:c", VIEWS, (1, 2), base), pair_key("sha256:b", VIEWS, (1, 3), base),
                pair_key("sha256:b", VIEWS, (1, 2), "other")}) == 4


@pytest.mark.parametrize("asked, cluster, expected", [
    # (count, cpus, gpus, device), (CPUs, GPUs, CPUs per node) -> (count, cpus, gpus)
    ((None, None, None, None), (2, 0, [2]), (1, 2, 0)),  # CPUs only: one worker with all of them
    ((2, None, None, None), (2, 0, [1, 1]), (2, 1, 0)),  # two nodes of one CPU: one worker each
    ((None, None, None, None), (64, 8, [32, 32]), (8, 1, 1)),  # a GPU each, one worker per GPU
    ((None, None, None, "cpu"), (16, 2, [16]), (1, 16, 0)),  # --device cpu: GPUs left alone
    ((4, None, 0.5, None), (16, 2, [16]), (4, 1, 0.5)),  # two replicas a GPU
    ((3, None, None, None), (64, 0, [8, 8]), (3, 8, 0)),  # never more CPUs than a node has
])
def test_workers_fit_the_cluster_by_default_one_per_gpu(asked, cluster, expected):
    from clip_vlm_core.label.pipeline import choose_workers

    workers = choose_workers(*asked, *cluster)
    assert (workers.count, workers.cpus, workers.gpus) == expected


@pytest.mark.parametrize("asked, cluster, message", [
    ((3, None, 1.0, None), (16, 2, [16]), "need 3 GPUs; the Ray cluster has 2"),
    ((3, 1.0, None, None), (2, 0, [2]), "need 3 CPUs; the Ray cluster has 2"),
])
def test_workers_that_cannot_fit_are_one_sentence(asked, cluster, message):
    from clip_vlm_core.label.pipeline import choose_workers

    with pytest.raises(UserError, match=message):
        choose_workers(*asked, *cluster)
