"""Bags as rosbag2 writes them: `bag info` and `bag play` on rosbag2's own test bags.

The bags are ros2/rosbag2's test resources at tags 0.26.5 (Jazzy) and 0.15.12 (Humble), unchanged (see
tests/data/rosbag2/NOTICE.md): folders and single files, sqlite3 and MCAP, metadata versions 4 to 8 (9
from rosbags' writer below), split into several files, zstd-compressed per file and per message. Each is
listed here with what rosbag2 recorded in it. `bag info` must show those counts; `bag play` must publish
exactly as many of every topic whose type is installed, and skip and report the others, never a traceback.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
from intact import REPO, assert_one_sentence, digest

from clip_vlm_core.bags.info import read_bag_info
from clip_vlm_core.bags.play import play_bag
from clip_vlm_core.cli import main

pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros  # `make test` runs these under Kilted and Jazzy

DATA = REPO / "tests" / "data" / "rosbag2"
J, H = "0.26.5/", "0.15.12/"
PY, TESTS, CPP = "rosbag2_py/test/resources/", "rosbag2_tests/resources/", "rosbag2_cpp/test/rosbag2_cpp/bags/"
REINDEX = H + TESTS + "reindex_test_bags/"
TALKER = {"/topic": 10, "/rosout": 10, "/parameter_events": 0}
WBAG = {"AAA": 804, "BBB": 742, "CCC": 742, "DDD": 753, "EEE": 804, "FFF": 772, "GGG": 731, "HHH": 726}
CHATTER = [1324, 1324, 529]
# Types installed with this project's rclpy (std_msgs, rcl_interfaces); every other type in these bags
# (test_msgs, example_interfaces, rosbag2_interfaces) is not, and a 'wrong_format' bag is not CDR.
INSTALLED = {"std_msgs", "rcl_interfaces"}

# bag (relative to tests/data/rosbag2; "assembled:" = storage files + rosbag2's target metadata.yaml),
# storage, metadata version (None: a single file), files, compression, {topic: messages}
BAGS = [
    (J + PY + "mcap/talker", "mcap", 4, 1, "", TALKER),
    (J + PY + "sqlite3/talker", "sqlite3", 4, 1, "", TALKER),
    (J + PY + "mcap/talker/talker.mcap", "mcap", None, 1, "", TALKER),
    (J + PY + "sqlite3/talker/talker.db3", "sqlite3", None, 1, "", TALKER),
    (H + PY + "talker", "sqlite3", 4, 1, "", TALKER),
    (J + PY + "mcap/wbag", "mcap", 4, 5, "", WBAG),
    (J + PY + "sqlite3/wbag", "sqlite3", 4, 5, "", WBAG),
    *[(J + PY + f"{s}/reindex_test_bags/multiple_files/multiple_files_{i}.{x}", s, None, 1, "", {"/chatter": n})
      for s, x in (("mcap", "mcap"), ("sqlite3", "db3")) for i, n in enumerate(CHATTER)],
    ("assembled:multiple_files", "sqlite3", 5, 3, "", {"/topic": 52}),
    *[(REINDEX + f"multiple_files/multiple_files_{i}.db3", "sqlite3", None, 1, "", {"/topic": n})
      for i, n in enumerate([20, 20, 12])],
    ("assembled:file_compression", "sqlite3", 4, 4, "file", {"/topic": 383, "/rosout": 392, "/parameter_events": 0}),
    *[(REINDEX + f"file_compression/file_compression_{i}.db3.zstd", "sqlite3", None, 1, "file",
       {"/topic": t, "/rosout": r, "/parameter_events": 0}) for i, (t, r) in enumerate([(120, 129), (121, 121),
                                                                                         (120, 120), (22, 22)])],
    ("assembled:message_compression", "sqlite3", 4, 4, "message",
     {"/topic": 369, "/rosout": 758, "/parameter_events": 0}),
    *[(REINDEX + f"message_compression/message_compression_{i}.db3", "sqlite3", None, 1, "",
       {"/topic": t, "/rosout": r, "/parameter_events": 0}) for i, (t, r) in enumerate([(120, 260), (120, 240),
                                                                                         (120, 240), (9, 18)])],
    (J + "ros2bag/test/resources/empty_bag", "sqlite3", 4, 1, "", {"/rosout": 0, "/parameter_events": 0}),
    (J + CPP + "only_topics.mcap", "mcap", None, 1, "", {"/rosout": 0, "/parameter_events": 7, "/events/write_split": 0}),
    *[(J + CPP + f"topics_and_services.{x}", s, None, 1, "",
       {"/rosout": 0, "/parameter_events": 7, "/events/write_split": 0, "/add_two_ints/_service_event": 6,
        "/add_two_ints2/_service_event": 0}) for s, x in (("mcap", "mcap"), ("sqlite3", "db3"))],
    (J + CPP + "only_services.mcap", "mcap", None, 1, "", {"/add_two_ints/_service_event": 12}),
    *[(J + PY + f"{s}/convert_a", s, 5, 1, "", {"a_empty": 100, "b_basictypes": 50}) for s in ("mcap", "sqlite3")],
    *[(J + PY + f"{s}/convert_b", s, 5, 1, "", {"a_empty": 25, "c_strings": 50}) for s in ("mcap", "sqlite3")],
    *[(J + TESTS + f"{s}/cdr_test", s, 7, 1, "", {"/test_topic": 3, "/array_topic": 4}) for s in ("mcap", "sqlite3")],
    *[(J + TESTS + f"{s}/wrong_rmw_test", s, v, 1, "", {"/test_topic": 3, "/array_topic": 4})
      for s, v in (("mcap", 6), ("sqlite3", 4))],
    *[(J + TESTS + f"{s}/bag_with_topics_and_service_events", s, 8, 1, "",
       {"/test_topic1": 1, "/test_topic2": 1, "/test_service1/_service_event": 4, "/test_service2/_service_event": 4,
        "/events/write_split": 0}) for s in ("mcap", "sqlite3")],
    *[(J + f"rosbag2_transport/test/resources/{s}/test_bag_for_seek", s, v, 1, "", {"topic1": 5})
      for s, v in (("mcap", 6), ("sqlite3", 4))],
]
TYPES = {"/topic": "std_msgs", "/rosout": "rcl_interfaces", "/parameter_events": "rcl_interfaces", "/chatter": "std_msgs",
         **{t: "std_msgs" for t in WBAG}}


def bag_path(name: str, tmp_path_factory) -> Path:
    """The bag to read: a path under tests/data/rosbag2, or a reindex bag put together with its metadata."""
    if not name.startswith("assembled:"):
        return DATA / name
    bag = name.removeprefix("assembled:")
    target = tmp_path_factory.mktemp("assembled") / bag
    shutil.copytree(DATA / REINDEX / bag, target)
    shutil.copy(DATA / REINDEX / "target_metadata" / bag / "metadata.yaml", target)
    return target


def installed(name: str, topics: dict[str, int]) -> dict[str, int]:
    """The topics of a bag whose types are installed here (and whose data is CDR)."""
    return {} if "wrong_rmw" in name else {t: n for t, n in topics.items() if TYPES.get(t) in INSTALLED}


def ids(cases):
    return [c[0].replace("rosbag2_", "").replace("/test/resources/", ":").replace("/resources/", ":") for c in cases]


def test_every_bag_in_the_data_folder_is_listed():
    listed = {DATA / name for name, *_ in BAGS if not name.startswith("assembled:")}
    on_disk = {p.parent for p in DATA.rglob("metadata.yaml") if "target_metadata" not in str(p)}
    on_disk |= {p for p in DATA.rglob("*") if p.is_file() and p.suffix in (".mcap", ".db3", ".zstd")
                and not (p.parent / "metadata.yaml").exists()}
    assert on_disk <= listed and all(p.exists() for p in listed)  # (talker's files are also read alone)


@pytest.mark.parametrize("name,storage,version,files,compression,topics", BAGS, ids=ids(BAGS))
def test_info_shows_what_rosbag2_recorded(tmp_path_factory, name, storage, version, files, compression, topics):
    path = bag_path(name, tmp_path_factory)
    before = digest(path) if path.is_dir() else path.read_bytes()
    info = read_bag_info(path)
    assert {t.name: t.count for t in info.topics} == topics
    assert (info.storage, info.version, info.files, info.compression) == (storage, version, files, compression)
    assert info.message_count == sum(topics.values())
    assert before == (digest(path) if path.is_dir() else path.read_bytes())


PLAYABLE = [c for c in BAGS if installed(c[0], c[5]) or not any(c[5].values())]


@pytest.mark.parametrize("name,storage,version,files,compression,topics", PLAYABLE, ids=ids(PLAYABLE))
def test_play_publishes_every_message_info_shows_of_the_installed_types(tmp_path_factory, monkeypatch, name, storage,
                                                                        version, files, compression, topics):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randint(1, 200)))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    path = bag_path(name, tmp_path_factory)
    summary = play_bag(path, rate=1000.0, wait_for_subscribers=0)
    playable = installed(name, topics)
    assert {t: summary.per_topic[t] for t in playable} == playable
    assert summary.published == sum(playable.values())
    assert set(summary.skipped) == set(topics) - set(playable)
    assert all("is not installed" in why for why in summary.skipped.values())


UNPLAYABLE = [c for c in BAGS if c not in PLAYABLE]


@pytest.mark.parametrize("name,storage,version,files,compression,topics", UNPLAYABLE, ids=ids(UNPLAYABLE))
def test_a_bag_of_uninstalled_types_is_one_sentence_naming_them(capsys, name, storage, version, files,
                                                                compression, topics):
    code = main(["bag", "play", str(DATA / name), "--wait-for-subscribers", "0"])
    err = capsys.readouterr().err
    assert code == 2
    why = "not CDR" if "wrong_rmw" in name else "is not installed"
    assert_one_sentence(err, "bag", "has nothing this machine can play", why)
    assert sum(topic + ":" in err for topic in topics) >= min(3, len(topics))


def test_a_bag_with_some_uninstalled_types_plays_the_rest_and_reports_the_others(capsys, monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randint(1, 200)))
    code = main(["bag", "play", str(DATA / J / CPP / "topics_and_services.mcap"), "--wait-for-subscribers", "0",
                 "--rate", "100"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err
    assert "published 7 messages on 2 topics" in out
    assert ("skipped /add_two_ints/_service_event: its type example_interfaces/srv/AddTwoInts_Event is not "
            "installed") in out
    assert "skipped /events/write_split: its type rosbag2_interfaces/msg/WriteSplitEvent is not installed" in out


@pytest.mark.parametrize("version", [8, 9])  # the versions rosbags writes; rosbag2's bags above hold 4 to 8
def test_metadata_versions_rosbags_writes_read_and_play(tmp_path, monkeypatch, version):
    from rosbags.rosbag2 import StoragePlugin, Writer

    from clip_vlm_core.bags import messages as m

    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randint(1, 200)))
    writer = Writer(tmp_path / "bag", version=version, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    conn = writer.add_connection("/topic", m.STRING, typestore=m.TYPESTORE, offered_qos_profiles=[m.LATCHED_QOS])
    for i in range(4):
        writer.write(conn, 10**9 + i, m.string(f"message {i}"))
    writer.close()
    info = read_bag_info(tmp_path / "bag")
    assert (info.version, info.message_count, info.topics[0].qos) == (version, 4, "reliable transient_local")
    assert play_bag(tmp_path / "bag", rate=1000.0, wait_for_subscribers=0).per_topic == {"/topic": 4}


# ---- over real DDS, to a subscriber in another process ------------------------------------------------------

def _subscribe_and_play(bag: Path, specs: list[str], *extra: str) -> tuple[dict, subprocess.CompletedProcess]:
    from test_bag_play import play_cli, ros_env, start_subscriber, subscriber_counts

    env = ros_env()
    sub = start_subscriber(env, 60, *specs)
    played = play_cli(bag, env, "--rate", "50", *extra)
    return subscriber_counts(sub), played


@pytest.mark.slow
@pytest.mark.parametrize("name", [J + PY + "mcap/talker", J + PY + "sqlite3/talker/talker.db3", "assembled:file_compression"])
def test_a_subscriber_in_another_process_receives_what_info_counts(tmp_path_factory, name):
    bag = bag_path(name, tmp_path_factory)
    counts = {t.name: t.count for t in read_bag_info(bag).topics}
    got, played = _subscribe_and_play(bag, [f"/topic=std_msgs/msg/String:{counts['/topic']}",
                                            f"/rosout=rcl_interfaces/msg/Log:{counts['/rosout']}"])
    assert played.returncode == 0, played.stderr
    assert got == {"/topic": counts["/topic"], "/rosout": counts["/rosout"]}
    assert f"published {counts['/topic'] + counts['/rosout']} messages" in played.stdout


@pytest.mark.slow
def test_remap_renames_only_the_players_own_topics_once_and_quietly(tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer

    from clip_vlm_core.bags import messages as m

    writer = Writer(tmp_path / "bag", version=8, storage_plugin=StoragePlugin.SQLITE3)
    writer.open()
    a = writer.add_connection("/a", m.STRING, typestore=m.TYPESTORE)
    b = writer.add_connection("/b", m.STRING, typestore=m.TYPESTORE)
    for i in range(5):
        writer.write(a if i < 2 else b, 10**9 + i, m.string(str(i)))
    writer.close()
    # A swap: rcl applying the rules again to the renamed publishers (as when rclpy read sys.argv) undoes it.
    got, played = _subscribe_and_play(tmp_path / "bag", ["/a=std_msgs/msg/String:3", "/b=std_msgs/msg/String:2"],
                                      "--remap", "/a:=/b", "/b:=/a")
    assert played.returncode == 0, played.stderr
    assert got == {"/a": 3, "/b": 2}
    assert "deprecated" not in played.stderr.lower() and "remap" not in played.stderr.lower()


def test_a_remap_of_a_topic_the_bag_does_not_play_or_to_an_invalid_name_is_refused(capsys):
    bag = DATA / J / PY / "mcap/talker"
    for rule, words in [("/nope:=/x", "names /nope, which is not a topic played from bag"),
                        ("/topic:=/bad name", "'/bad name' is not a valid ROS 2 topic name")]:
        assert main(["bag", "play", str(bag), "--remap", rule]) == 2
        assert_one_sentence(capsys.readouterr().err, "bag", words)
