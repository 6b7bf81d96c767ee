"""`clip-vlm label`'s inputs: bags, folders of bags and manifests become one list of bags, each once, each with
a unique name; what names nothing is reported with the reason, never the end of the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clip_vlm_core.label.inputs import bag_name, expand_inputs, read_manifest


@pytest.fixture()
def archive(scene_bags, tmp_path) -> Path:
    """car1/day1/<bag folder>, car1/day2/<single .mcap>, car2/<bag folder>, and clutter around them."""
    root = tmp_path / "archive"
    (root / "car1" / "day1").mkdir(parents=True)
    (root / "car1" / "day2").mkdir(parents=True)
    (root / "car2").mkdir(parents=True)
    shutil.copytree(scene_bags[0], root / "car1" / "day1" / "run")
    mcap = next(scene_bags[1].glob("*.mcap"))
    shutil.copy(mcap, root / "car1" / "day2" / "drive.mcap")
    shutil.copytree(scene_bags[2], root / "car2" / "run")
    (root / "car1" / "notes.txt").write_text("not a bag\n")
    (root / ".partial-staging").mkdir()  # hidden: never searched
    shutil.copytree(scene_bags[0], root / ".partial-staging" / "run")
    return root


def test_a_bag_folder_and_a_single_storage_file_are_one_bag_each(scene_bags):
    mcap = next(scene_bags[1].glob("*.mcap"))
    scan = expand_inputs([scene_bags[0], mcap])
    assert [b.path for b in scan.bags] == [scene_bags[0].absolute(), mcap.absolute()]
    assert [b.name for b in scan.bags] == [scene_bags[0].name, scene_bags[1].name]  # the file's name without .mcap
    assert scan.skipped == []


def test_a_folder_of_bags_is_searched_to_any_depth_leaving_out_hidden_entries(archive, tmp_path):
    scan = expand_inputs([archive])
    assert [b.name for b in scan.bags] == ["car1/day1/run", "car1/day2/drive", "car2/run"]
    assert all(b.shown.startswith(str(archive)) for b in scan.bags)
    assert scan.skipped == []  # notes.txt inside a folder of bags is not a bag and not a problem


def test_a_manifest_lists_bags_and_folders_relative_to_itself_in_lines_or_json(archive, tmp_path):
    manifest = archive / "list.txt"
    manifest.write_text("# the fleet's week\n\ncar1/day1/run\n" + json.dumps({"bag": "car2"}) + "\n"
                        f"{archive / 'car1' / 'day2' / 'drive.mcap'}\n")
    scan = expand_inputs([manifest])
    assert [b.name for b in scan.bags] == ["run", "run-2", "drive"]  # a name taken already gets -2
    assert [b.shown for b in scan.bags][0] == "car1/day1/run"


@pytest.mark.parametrize("content, reason", [
    ("missing/bag\n", "does not exist"),
    ('{"path": "car2"}\n', 'without a "bag" path'),
    ('{"bag": \n', "is not valid JSON"),
    ("list.txt\n", "may not name another manifest"),
    ("car1/notes.txt\n", "may not name another manifest"),
    ("x" * 5000 + "\n", "longer than"),
])
def test_a_manifest_line_that_names_no_bag_is_reported_and_the_others_are_kept(archive, content, reason):
    manifest = archive / "list.txt"
    manifest.write_text("car2/run\n" + content)
    scan = expand_inputs([manifest])
    assert [b.name for b in scan.bags] == ["run"]
    assert len(scan.skipped) == 1 and reason in scan.skipped[0][1], scan.skipped


def test_inputs_that_name_no_bag_are_reported_with_the_reason(archive, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    binary = tmp_path / "recording.bag"
    binary.write_bytes(b"#ROSBAG V2.0\n\x00\x01\x02")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    scan = expand_inputs([archive / "car2" / "run", tmp_path / "nope", empty, binary, tmp_path / "dangling"])
    assert [b.name for b in scan.bags] == ["run"]
    reasons = dict(scan.skipped)
    assert reasons[str(tmp_path / "nope")] == "it does not exist"
    assert "holds no bag" in reasons[str(empty)]
    assert "neither a bag" in reasons[str(binary)] and "nor a manifest" in reasons[str(binary)]
    assert reasons[str(tmp_path / "dangling")] == "it is a broken link"


def test_the_same_bag_named_twice_is_labelled_once(archive):
    run = archive / "car2" / "run"
    (archive / "again").symlink_to(run)
    scan = expand_inputs([run, archive / "car2", archive / "again", Path(str(run) + "/")])
    assert len(scan.bags) == 1


def test_a_folder_link_inside_a_folder_of_bags_is_not_followed(archive, tmp_path):
    (archive / "car2" / "loop").symlink_to(archive)  # a link back up would search forever
    scan = expand_inputs([archive])
    assert [b.name for b in scan.bags] == ["car1/day1/run", "car1/day2/drive", "car2/run"]


def test_bag_names_drop_storage_suffixes():
    assert bag_name(Path("talker.mcap")) == "talker"
    assert bag_name(Path("talker.db3.zstd")) == "talker"
    assert bag_name(Path("rosbag2_2024_01_01")) == "rosbag2_2024_01_01"


def test_a_manifest_that_is_not_utf8_text_is_refused_whole(tmp_path):
    manifest = tmp_path / "list.txt"
    manifest.write_bytes(b"bags/a\n\xff\xfe\n")
    scan = expand_inputs([manifest])
    assert scan.bags == [] and "not UTF-8" in scan.skipped[0][1]
    with pytest.raises(Exception, match="not UTF-8"):
        read_manifest(manifest)
