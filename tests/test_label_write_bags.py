"""`--write-bags DIR`: each bag copied with /scene_caption and the node's marker at its pairs, every input
message kept byte for byte with its type, QoS and definition, in a bag Humble reads (metadata version 8)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from intact import digest
from rosbags.interfaces import QosDurability
from rosbags.rosbag2 import Reader

from clip_vlm_core.bags import messages as m
from clip_vlm_core.bags.reader import open_bag
from clip_vlm_core.errors import UserError
from clip_vlm_core.label.pairs import bag_pairs, camera_topics
from clip_vlm_core.label.write_bags import (
    CAPTION_TOPIC,
    MARKER_TOPIC,
    Caption,
    check_bags_folder,
    write_labelled_bag,
)

ROSBAG2 = Path(__file__).parent / "data" / "rosbag2" / "0.26.5"


def captions_for(bag_path: Path) -> list[Caption]:
    with open_bag(bag_path) as bag:
        pairs = list(bag_pairs(bag, camera_topics(bag, ("CAM_FRONT", "CAM_BACK")), 50.0))
    return [Caption(p.log_ns, p.stamp_ns, p.frame_id, f"caption {i}") for i, p in enumerate(pairs)]


def messages(path: Path) -> list[tuple[str, int, bytes]]:
    """Every message, as the bags reader reads it (in recording order)."""
    with open_bag(path) as bag:
        return [(topic, t, bytes(raw)) for topic, t, raw in bag.messages([t.name for t in bag.topics])]


def test_a_labelled_bag_holds_every_input_message_unchanged_and_a_caption_and_marker_per_pair(scene_bags, tmp_path):
    source, target = scene_bags[0], tmp_path / "out" / "run"
    captions = captions_for(source)
    before = digest(source)
    assert write_labelled_bag(source, "run", target, "sha256:x", "s1", captions)["status"] == "written"
    assert digest(source) == before
    copied = messages(target)
    original = messages(source)
    assert [x for x in copied if x[0] not in (CAPTION_TOPIC, MARKER_TOPIC)] == original  # same order, same bytes
    said = [(t, m.deserialize(raw, m.STRING).data) for topic, t, raw in copied if topic == CAPTION_TOPIC]
    assert said == [(c.log_ns, c.text) for c in captions]
    markers = [m.deserialize(raw, "visualization_msgs/msg/Marker") for topic, _, raw in copied if topic == MARKER_TOPIC]
    assert [(mk.text, mk.header.stamp.sec * 10**9 + mk.header.stamp.nanosec, mk.header.frame_id) for mk in markers] == \
        [(c.text, c.stamp_ns, c.frame_id) for c in captions]
    assert {(mk.type, mk.ns, mk.pose.position.z, mk.color.a) for mk in markers} == {(9, "scene_caption", 3.0, 1.0)}


def test_each_caption_comes_after_the_frames_of_its_instant(scene_bags, tmp_path):
    target = tmp_path / "run"
    captions = captions_for(scene_bags[0])
    write_labelled_bag(scene_bags[0], "run", target, "sha256:x", "s1", captions)
    copied = messages(target)
    for caption in captions:
        at = next(i for i, (topic, _, raw) in enumerate(copied) if topic == CAPTION_TOPIC
                  and m.deserialize(raw, m.STRING).data == caption.text)
        frame = next(i for i, (topic, t, _) in enumerate(copied) if topic == "/CAM_FRONT/image_raw/compressed"
                     and t == caption.log_ns)
        assert frame < at and all(t <= caption.log_ns for _, t, _ in copied[:at])


def test_metadata_is_version_8_with_recorded_qos_and_provenance(scene_bags, tmp_path):
    target = tmp_path / "run"
    write_labelled_bag(scene_bags[0], "bags/run", target, "sha256:abc", "s1", captions_for(scene_bags[0]))
    info = yaml.safe_load((target / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 8
    assert info["custom_data"] == {"clip_vlm.source_bag": "bags/run", "clip_vlm.source_bag_id": "sha256:abc",
                                   "clip_vlm.settings_id": "s1", "clip_vlm.captions": "10"}
    with open_bag(target) as bag:
        qos = {t.name: t.offered_qos[0].durability for t in bag.topics}
        counts = {t.name: t.count for t in bag.topics}
    assert qos[CAPTION_TOPIC] == QosDurability.TRANSIENT_LOCAL  # as the node's latched caption publisher
    assert qos["/tf_static"] == QosDurability.TRANSIENT_LOCAL and qos["/tf"] == QosDurability.VOLATILE
    assert counts[CAPTION_TOPIC] == counts[MARKER_TOPIC] == 10


@pytest.mark.parametrize("name", ["cdr_test", "convert_a"])
def test_types_not_installed_are_copied_raw_with_their_recorded_definitions(tmp_path, name):
    source = next(p for p in ROSBAG2.rglob(name) if p.is_dir())
    target = tmp_path / name
    write_labelled_bag(source, name, target, "sha256:x", "s1", [])
    assert messages(target) == messages(source)
    with Reader(source) as before, Reader(target) as after:
        recorded = {c.topic: (c.msgtype, c.msgdef.data) for c in before.connections}
        written = {c.topic: (c.msgtype, c.msgdef.data) for c in after.connections if c.topic in recorded}
    assert written == recorded  # test_msgs/Empty's definition is empty text, BasicTypes' is not
    assert all(definition for msgtype, definition in written.values() if not msgtype.endswith("/Empty"))


def test_a_sqlite3_bag_is_copied_as_sqlite3(scene_bags, tmp_path):
    from clip_vlm_core.cli import main

    # `bag convert --storage sqlite3` of the same synthetic scene: the copy keeps the input's storage
    tree = scene_bags[0].parent.parent / "nuscenes"
    assert main(["bag", "convert", "--dataroot", str(tree), "--scene", scene_bags[0].name, "--sweeps",
                 "--storage", "sqlite3", "--out", str(tmp_path / "db")]) == 0
    source = tmp_path / "db" / scene_bags[0].name
    target = tmp_path / "out"
    write_labelled_bag(source, "db", target, "sha256:x", "s1", captions_for(source))
    assert sorted(p.suffix for p in target.iterdir() if not p.name.startswith(".")) == [".db3", ".yaml"]
    assert [x for x in messages(target) if x[0] not in (CAPTION_TOPIC, MARKER_TOPIC)] == messages(source)


def test_a_bag_already_up_to_date_is_left_and_one_with_other_labels_is_rewritten(scene_bags, tmp_path):
    target = tmp_path / "run"
    captions = captions_for(scene_bags[0])
    write_labelled_bag(scene_bags[0], "run", target, "sha256:x", "s1", captions)
    before = digest(target)
    assert write_labelled_bag(scene_bags[0], "run", target, "sha256:x", "s1", captions)["status"] == "up to date"
    assert digest(target) == before
    assert write_labelled_bag(scene_bags[0], "run", target, "sha256:x", "s1", captions[:4])["status"] == "written"
    assert sum(topic == CAPTION_TOPIC for topic, _, _ in messages(target)) == 4


def test_a_folder_someone_else_put_at_the_target_is_never_replaced(scene_bags, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(scene_bags[1], target)
    before = digest(target)
    with pytest.raises(UserError, match="was not written by clip-vlm label"):
        write_labelled_bag(scene_bags[0], "run", target, "sha256:x", "s1", [])
    assert digest(target) == before


def test_the_bags_folder_is_never_labels_nor_inside_it_nor_a_file(tmp_path):
    labels = tmp_path / "labels"
    for folder, says in [(labels, "is the --out LABELS"), (labels / "bags", "lies inside the --out LABELS"),
                         (tmp_path, "holds the --out LABELS")]:
        with pytest.raises(UserError, match=says):
            check_bags_folder(folder, labels)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_bags_folder(tmp_path / "file", labels)
    check_bags_folder(tmp_path / "labelled", labels)  # beside it: fine


def test_outputs_never_are_hold_or_lie_inside_an_input(scene_bags, tmp_path):
    from clip_vlm_core.label.inputs import refuse_overlap

    inputs = [("input", "bags", scene_bags[0].parent), ("input bag", "bags/run", scene_bags[0])]
    for target, says in [(scene_bags[0].parent, "is the input bags"), (scene_bags[0] / "labelled", "lies inside"),
                         (scene_bags[0].parent.parent, "holds the input")]:
        with pytest.raises(UserError, match=says):
            refuse_overlap(target, "--write-bags", inputs)
    refuse_overlap(tmp_path / "labelled", "--write-bags", inputs)
