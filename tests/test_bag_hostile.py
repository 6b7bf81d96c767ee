"""Hostile bags: code a bag names never runs, sizes it declares are bounded before anything is
read or allocated, and a damaged bag is one sentence (exit 2), never a traceback; the bag stays intact.

Each kind of damage is fed several instances. The CLI runs in this process where it
can (fast); the cases that prove bounded memory, or that the current folder is never imported from, run
as a real `python -m clip_vlm_core` under an address-space limit.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from intact import REPO, assert_one_sentence, digest

from clip_vlm_core import limits
from clip_vlm_core.bags.interfaces import UnplayableType, message_class
from clip_vlm_core.cli import main

sys.path.insert(0, str(REPO / "tests" / "helpers"))
import hostile_bags as hb  # noqa: E402

pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros  # `make test` runs these under Kilted and Jazzy

ADDRESS_SPACE = 1536 * 2**20  # the player with rclpy and DDS needs ~0.8 GB of address space; the bombs 1.2-1.5 GB


@pytest.fixture(autouse=True)
def private_dds(monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randint(1, 200)))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, verb: str, bag: Path, *fragments: str) -> None:
    """`clip-vlm bag VERB BAG` exits 2 with one sentence holding `fragments`, and leaves the bag as it was."""
    before = digest(bag) if bag.is_dir() else {bag.name: bag.read_bytes()}
    extra = ["--wait-for-subscribers", "0"] if verb == "play" else []
    code, _, err = cli(capsys, "bag", verb, bag, *extra)
    assert code == 2, err
    assert_one_sentence(err, "bag", *fragments)
    assert before == (digest(bag) if bag.is_dir() else {bag.name: bag.read_bytes()})


def run_limited(args: list[str], cwd: Path, tmpdir: Path) -> subprocess.CompletedProcess:
    """`python -m clip_vlm_core ARGS` in `cwd` under an address-space limit, with its own TMPDIR."""
    env = {**os.environ, "TMPDIR": str(tmpdir)}

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    return subprocess.run([sys.executable, "-m", "clip_vlm_core", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)


# ---- class 1: code named by data never runs ------------------------------------------------------------

@pytest.mark.parametrize("msgtype", [
    "this/Zen", "os/system", "builtins/msg/Eval", "../evil/msg/X", "std_msgs.msg/String", "std_msgs/msg/../String",
    "some_msgs/msg/Thing", "std_msgs/msg/NoSuchMessage", "std_msgs/srv/String_Event", "Std_msgs/msg/String",
    "std_msgs/msg/String\n", "",
])
def test_a_type_name_resolves_only_to_an_installed_interface_package(msgtype):
    modules = set(sys.modules)
    with pytest.raises(UnplayableType):
        message_class(msgtype)
    assert not {"this", "builtins.msg", "some_msgs", "evil"} & (set(sys.modules) - modules)


def test_installed_messages_and_service_events_resolve_from_their_installed_package():
    for msgtype, name in [("std_msgs/msg/String", "String"), ("std_msgs/String", "String"),
                          ("rcl_interfaces/msg/Log", "Log"), ("rcl_interfaces/srv/GetParameters_Event",
                                                               "GetParameters_Event")]:
        cls = message_class(msgtype)
        assert cls.__name__ == name and Path(sys.modules[cls.__module__].__file__).is_relative_to(sys.prefix)


@pytest.mark.parametrize("msgtype", ["this/Zen", "os/system", "builtins/msg/Eval"])
def test_play_of_a_bag_naming_a_python_module_imports_nothing_and_says_why(tmp_path, capsys, msgtype):
    bag = hb.sqlite_bag(tmp_path / "bag", msgtype=msgtype)
    refused(capsys, "play", bag, "has nothing this machine can play", "/topic", msgtype)


@pytest.mark.slow
@pytest.mark.parametrize("package,msgtype", [
    ("some_msgs", "some_msgs/msg/Thing"),  # a package that is not installed
    ("std_msgs", "std_msgs/msg/String"),  # an installed package's name, shadowed by the bag's own folder
    ("rclpy", "std_msgs/msg/String"),  # a module the player itself imports
])
def test_python_m_inside_a_bag_folder_never_runs_the_bags_code(tmp_path, package, msgtype):
    bag = hb.sqlite_bag(tmp_path / "bag", msgtype=msgtype)
    marker = tmp_path / "ran"
    (bag / package).mkdir()
    (bag / package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('the bag ran code')\n")
    played = run_limited(["bag", "play", ".", "--wait-for-subscribers", "0", "--rate", "100"], bag, tmp_path)
    assert not marker.exists(), played.stderr
    assert "Traceback" not in played.stderr
    if msgtype == "std_msgs/msg/String":  # the installed package plays
        assert played.returncode == 0 and "published 3 messages" in played.stdout, played.stderr
    else:
        assert played.returncode == 2 and "some_msgs/msg/Thing is not installed" in played.stderr


# ---- class 2: declared sizes are bounded before anything is allocated ------------------------------------

@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bombs")
    for name, honest in (("chunk", True), ("lying_chunk", False)):
        hb.chunk_bomb(root / name, honest=honest)
        hb.write_metadata(root / name, hb.metadata(["bomb.mcap"], storage="mcap"))
    hb.file_compression_bomb(root / "file", declare_size=False)
    hb.file_compression_bomb(root / "file_declared", declare_size=True)
    hb.message_compression_bomb(root / "message")
    hb.huge_message_record(root / "record")
    hb.write_metadata(root / "record", hb.metadata(["huge_record.mcap"], storage="mcap"))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("case,verb,fragment", [
    ("chunk", "info", "inflates to 1,431 MiB, more than the 256 MiB a bag chunk may have"),  # 49 KB -> 1.5 GB
    ("chunk", "play", "inflates to 1,431 MiB, more than the 256 MiB a bag chunk may have"),
    ("chunk/bomb.mcap", "play", "inflates to 1,431 MiB"),  # the same file alone
    ("lying_chunk", "play", "an MCAP chunk inflates to more than 1,024 bytes"),  # declares 1 KiB, holds 1.5 GB
    ("record", "play", "declares 1,099,511,627,776 bytes, but only 86 follow"),
    ("file", "play", "inflates to more than 1,024 MiB, the most a compressed bag file may"),  # 39 KB -> 1.2 GB
    ("file_declared", "play", "declares that it inflates to 1,144 MiB"),
    ("message", "play", "a message of /topic in message.db3 inflates to more than 256 MiB"),
])
def test_a_bomb_is_refused_in_one_sentence_within_bounded_memory_and_writes_nothing(bombs, tmp_path, case, verb,
                                                                                    fragment):
    bag = bombs / case
    before = digest(bombs)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    extra = ["--wait-for-subscribers", "0"] if verb == "play" else []
    ran = run_limited(["bag", verb, bag, *extra], REPO, tmpdir)
    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr and "MemoryError" not in ran.stderr
    assert f"clip-vlm bag: error: bag {bag}" in ran.stderr and fragment in ran.stderr, ran.stderr
    assert digest(bombs) == before
    assert not any(tmpdir.iterdir())


def test_bag_info_of_a_whole_file_compressed_bag_inflates_nothing(bombs, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    code, out, err = cli(capsys, "bag", "info", bombs / "file")
    assert code == 0, err
    assert "zstd-compressed per file" in out and "/topic" in out
    assert not any(tmp_path.iterdir())


def test_a_sqlite3_message_over_the_limit_is_refused_from_the_row_headers(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(limits, "MAX_BAG_MESSAGE_BYTES", 8)  # the bag's String messages are 14 bytes
    bag = hb.sqlite_bag(tmp_path / "bag")
    for verb in ("info", "play"):
        refused(capsys, verb, bag, "holds a message of 14 bytes, more than the 8 bytes a bag message may have")


def test_an_mcap_message_over_the_limit_is_refused_from_its_record_header(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(limits, "MAX_BAG_MESSAGE_BYTES", 16)
    bag = tmp_path / "bag"
    bag.mkdir()
    out = hb.MAGIC + hb.record(0x01, b"\x04\x00\x00\x00ros2\x00\x00\x00\x00") + hb.schema_record() + hb.channel_record()
    out += hb.message_record(hb.T0) + hb.record(0x0F, b"\x00" * 4) + hb.record(0x02, bytes(20)) + hb.MAGIC
    (bag / "bag.mcap").write_bytes(out)
    refused(capsys, "info", bag / "bag.mcap", "holds a message of", "more than the 16 bytes a bag message may have")


def test_metadata_yaml_over_its_limit_is_refused_unread(tmp_path, capsys):
    bag = hb.sqlite_bag(tmp_path / "bag")
    with (bag / "metadata.yaml").open("a") as f:
        f.write("#" * (limits.MAX_BAG_METADATA_BYTES + 1))
    refused(capsys, "info", bag, "metadata.yaml is", "bytes, more than 8,388,608")


# ---- class 5: one sentence, never a traceback -------------------------------------------------------------

def _cut_mcap(bag: Path) -> None:
    for f in bag.glob("*.mcap"):
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


CASES = {  # name: (how to damage a good bag, words the sentence holds)
    "mcap cut after its magic": (lambda b: next(b.glob("*.mcap")).write_bytes(hb.MAGIC), "is cut short"),
    "mcap cut in the middle": (_cut_mcap, "is cut short"),
    "empty mcap": (lambda b: next(b.glob("*.mcap")).write_bytes(b""), "is not an MCAP file"),
    "absurd duration": (lambda b: hb.edit_metadata(b, lambda m: m["duration"].__setitem__("nanoseconds", 10**30)),
                        "duration.nanoseconds must be from 0 to"),
    "negative duration": (lambda b: hb.edit_metadata(b, lambda m: m["duration"].__setitem__("nanoseconds", -5)),
                          "duration.nanoseconds must be from 0"),
    "duration past 64-bit time": (lambda b: hb.edit_metadata(b, lambda m: m["duration"].__setitem__("nanoseconds", 2**63 - 2)),
                                  "the bag's end must be a 64-bit time"),
    "metadata is a list": (lambda b: hb.write_metadata(b, "- 1\n- 2\n"), "the document must be a mapping, got list"),
    "metadata is text": (lambda b: hb.write_metadata(b, "hello\n"), "the document must be a mapping, got str"),
    "metadata is empty": (lambda b: hb.write_metadata(b, ""), "the document must be a mapping, got nothing"),
    "metadata is not yaml": (lambda b: hb.write_metadata(b, "a: [\n"), "cannot be read as YAML"),
    "metadata is not utf-8": (lambda b: (b / "metadata.yaml").write_bytes(b"\xff\xfe\x00"), "is not UTF-8 text"),
    "metadata is a folder": (lambda b: ((b / "metadata.yaml").unlink(), (b / "metadata.yaml").mkdir()),
                             "metadata.yaml is not a regular file"),
    "yaml bomb": (hb.yaml_bomb, "uses the YAML alias"),
    "yaml nested 100,000 deep": (lambda b: hb.write_metadata(b, "a: " + "[" * 100_000 + "]" * 100_000 + "\n"),
                                 "is nested too deeply"),
    "qos nested 100,000 deep": (lambda b: hb.edit_metadata(b, lambda m: m["topics_with_message_count"][0]["topic_metadata"].__setitem__("offered_qos_profiles", "[" * 100_000)),
                                "offered_qos_profiles of topic '/mounts' cannot be read"),
    "count is text": (lambda b: hb.edit_metadata(b, _set("message_count", "many")), "message_count must be a whole number"),
    "count is negative": (lambda b: hb.edit_metadata(b, lambda m: m["topics_with_message_count"][0].__setitem__("message_count", -3)),
                          "topics_with_message_count[0].message_count must be from 0"),
    "count is huge": (lambda b: hb.edit_metadata(b, _set("message_count", 2**70)), "message_count must be from 0 to 9,223,372,036,854,775,807"),
    "count is a bool": (lambda b: hb.edit_metadata(b, _set("message_count", True)), "message_count must be a whole number"),
    "topics is a number": (lambda b: hb.edit_metadata(b, _set("topics_with_message_count", 5)), "topics_with_message_count must be a list"),
    "topic name is a list": (lambda b: hb.edit_metadata(b, lambda m: m["topics_with_message_count"][0]["topic_metadata"].__setitem__("name", [1])),
                             "topic_metadata.name must be text"),
    "qos is garbage": (lambda b: hb.edit_metadata(b, lambda m: m["topics_with_message_count"][0]["topic_metadata"].__setitem__("offered_qos_profiles", "- 3")),
                       "offered_qos_profiles of topic '/mounts' cannot be read"),
    "no relative_file_paths": (lambda b: hb.edit_metadata(b, lambda m: m.pop("relative_file_paths")), "relative_file_paths is missing"),
    "file path with ..": (lambda b: hb.edit_metadata(b, _set("relative_file_paths", ["../../etc/passwd"])), "leads out of the bag folder"),
    "absolute file path": (lambda b: hb.edit_metadata(b, _set("relative_file_paths", ["/etc/hostname"])), "leads out of the bag folder"),
    "file missing": (lambda b: hb.edit_metadata(b, _set("relative_file_paths", ["gone.mcap"])), "its storage file gone.mcap is missing"),
    "file is a link out": (lambda b: (os.symlink("/etc/hostname", b / "out.mcap"), hb.edit_metadata(b, _set("relative_file_paths", ["out.mcap"]))),
                           "is a link that leads out of the bag folder"),
    "wrong suffix": (lambda b: hb.edit_metadata(b, _set("storage_identifier", "sqlite3")), "does not end in .db3"),
    "unknown storage": (lambda b: hb.edit_metadata(b, _set("storage_identifier", "rosbag_v1")), "storage_identifier is 'rosbag_v1'"),
    "version 99": (lambda b: hb.edit_metadata(b, _set("version", 99)), "version must be from 1 to 9"),
    "bogus compression": (lambda b: hb.edit_metadata(b, _set("compression_mode", "SOMETIMES")), "compression_mode is 'sometimes'"),
    "lz4 compression": (lambda b: hb.edit_metadata(b, lambda m: m.update(compression_mode="FILE", compression_format="lz4")),
                        "compression_format is 'lz4'"),
}


@pytest.fixture
def good_mcap_bag(tmp_path) -> Path:
    from test_bag_play import write_bag

    return write_bag(tmp_path / "bag", frames=2, spacing_ns=10**8)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("verb", ["info", "play"])
def test_a_damaged_bag_is_one_sentence_naming_the_problem(good_mcap_bag, capsys, case, verb):
    damage, words = CASES[case]
    damage(good_mcap_bag)
    refused(capsys, verb, good_mcap_bag, f"bag {good_mcap_bag}", words)


@pytest.mark.parametrize("damage,words", [
    (lambda f: f.write_bytes(f.read_bytes()[:6000]), "cannot be read as a rosbag2 sqlite3 file"),  # truncated
    (lambda f: f.write_bytes(b"SQLite format 3\x00" + bytes(200)), "cannot be read as a rosbag2 sqlite3 file"),
    (lambda f: f.write_bytes(b"not a database at all"), "is not an SQLite database"),
])
def test_a_damaged_sqlite3_file_is_one_sentence(tmp_path, capsys, damage, words):
    bag = hb.sqlite_bag(tmp_path / "bag", messages=200)
    damage(next(bag.glob("*.db3")))
    for verb in ("info", "play"):
        refused(capsys, verb, bag, words)
    refused(capsys, "info", next(bag.glob("*.db3")), words)


@pytest.mark.parametrize("name", ["/bad topic!!", "/a//b", "/1abc", "/trailing/"])
def test_an_invalid_topic_name_is_skipped_and_told_in_one_sentence(tmp_path, capsys, name):
    bag = hb.sqlite_bag(tmp_path / "bag", topic="/topic")
    hb.edit_metadata(bag, lambda m: m["topics_with_message_count"][0]["topic_metadata"].__setitem__("name", name))
    # The storage still calls it /topic: the name comes from metadata.yaml, as rosbag2 reads it.
    refused(capsys, "play", bag, "has nothing this machine can play", f"{name!r} is not a valid ROS 2 topic name")
    code, out, _ = cli(capsys, "bag", "info", bag)
    assert code == 0 and name in out


def test_paths_that_are_no_bag_are_one_sentence(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "x_0.mcap").write_bytes(b"")
    for path, words in [(tmp_path / "nope", "does not exist"), (tmp_path / "notes.txt", "is not a bag"),
                        (tmp_path / "empty", "no metadata.yaml, nor any .mcap or .db3 file"),
                        (tmp_path / "loose", "give that file, e.g.")]:
        for verb in ("info", "play"):
            code, _, err = cli(capsys, "bag", verb, path)
            assert code == 2
            assert_one_sentence(err, "bag", words)


def test_a_bag_whose_files_hold_fewer_messages_than_its_metadata_says_is_an_error(tmp_path, capsys):
    bag = hb.sqlite_bag(tmp_path / "bag", messages=3)
    hb.edit_metadata(bag, lambda m: m["topics_with_message_count"][0].__setitem__("message_count", 4))
    code, out, err = cli(capsys, "bag", "play", bag, "--wait-for-subscribers", "0", "--rate", "100")
    assert code == 2
    assert "the messages played differ from what its metadata.yaml declares (/topic 3 of 4)" in err
    assert "Traceback" not in err


def test_the_bag_limits_are_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for name in ("MAX_BAG_MESSAGE_BYTES", "MAX_BAG_CHUNK_BYTES", "MAX_BAG_INFLATED_FILE_BYTES",
                 "MIN_BAG_TMP_FREE_BYTES", "MAX_BAG_METADATA_BYTES"):
        assert name in readme
