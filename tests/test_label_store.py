"""LABELS, the Parquet dataset `clip-vlm label` writes: each key once, parts whole whatever kills the writer,
one writer at a time, and the output guard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from intact import staging_left

from clip_vlm_core.errors import UserError
from clip_vlm_core.label.store import SCHEMA, open_store, read_parts


def rows(keys: list[str], caption: str = "A red bus is ahead.") -> pa.Table:
    now = datetime.now(timezone.utc)
    return pa.Table.from_pylist([{
        "key": key, "bag": "bags/a", "bag_path": "/data/bags/a", "bag_id": "sha256:a", "bag_start_ns": 0,
        "offset_s": i * 0.5, "stamp_ns": i, "log_time_ns": i, "frame_id": "CAM_FRONT", "views": ["CAM_FRONT", "CAM_BACK"],
        "view_stamps_ns": [i, i + 1], "caption": caption, "questions": [], "answers": [], "model": "m",
        "model_sha256": "sha256:m", "prompt": "p", "decoding": "{}", "settings_id": "s", "worker": "cpu",
        "labelled_at": now} for i, key in enumerate(keys)], schema=SCHEMA)


def test_rows_are_written_once_each_however_often_they_arrive(tmp_path):
    labels = tmp_path / "labels"
    with open_store(labels, {}, rows_per_part=3) as store:
        assert store.add(rows(["a", "b"])) == 2
        assert store.add(rows(["b", "c", "c"])) == 1  # b is there, c comes twice in one batch
        assert store.duplicates == 2
    with open_store(labels, {}) as store:  # a later run knows what is there
        assert store.keys == {"a", "b", "c"}
        assert store.add(rows(["a", "d"])) == 1
    keys = read_parts(sorted(labels.glob("part-*.parquet")), ["key"]).column("key").to_pylist()
    assert sorted(keys) == ["a", "b", "c", "d"]
    assert sorted(p.name for p in labels.iterdir() if p.name.startswith(".")) == [".clip-vlm-output", ".lock"]


def test_a_writer_killed_at_any_moment_leaves_only_whole_parts(tmp_path):
    labels = tmp_path / "labels"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_label_store import rows
        from clip_vlm_core.label.store import open_store
        store = open_store({str(labels)!r}, {{}}, rows_per_part=20000)
        for n in range(10**6):
            store.add(rows([f"{{n}}-{{i}}" for i in range(20000)], caption="x" * 300))
            print(n, flush=True)
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        while int(writer.stdout.readline() or -1) < 2:  # a few parts written, more on their way
            assert writer.poll() is None
        time.sleep(0.15)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    parts = sorted(labels.glob("part-*.parquet"))
    assert len(parts) >= 3
    for part in parts:
        assert pq.read_metadata(part).num_rows == 20000  # whole, or not there at all
    with open_store(labels, {}) as store:  # the next run reads them and clears what the killed one left
        assert len(store.keys) == 20000 * len(parts)
        store.add(rows(["new"]))
    assert staging_left(labels) == []


def test_a_second_run_into_the_same_labels_is_refused_while_the_first_runs(tmp_path):
    labels = tmp_path / "labels"
    first = open_store(labels, {})
    with pytest.raises(UserError, match="being written by another clip-vlm label run"):
        open_store(labels, {})
    first.close()
    open_store(labels, {}).close()


def test_labels_may_not_be_or_hold_an_input_nor_a_folder_someone_else_wrote(scene_bags, tmp_path):
    bag = scene_bags[0]
    with pytest.raises(UserError, match="is the input"):
        open_store(bag, {"input bags": bag})
    with pytest.raises(UserError, match="holds the input"):
        open_store(bag.parent, {"input bag": bag})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not written by clip-vlm label"):
        open_store(mine, {})
    assert (mine / "notes.txt").read_text() == "keep me"
    open_store(mine, {}, overwrite=True).close()  # asked for: emptied, then ours
    assert not (mine / "notes.txt").exists()


def test_a_file_added_to_labels_is_named_before_anything_is_written(tmp_path):
    labels = tmp_path / "labels"
    with open_store(labels, {}) as store:
        store.add(rows(["a"]))
    (labels / "README.md").write_text("my notes")
    with pytest.raises(UserError, match="holds README.md, which clip-vlm label did not write"):
        open_store(labels, {})


def test_a_damaged_part_is_named(tmp_path):
    labels = tmp_path / "labels"
    with open_store(labels, {}) as store:
        store.add(rows(["a"]))
    part = next(labels.glob("part-*.parquet"))
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(UserError, match=f"{part.name} is not a label part clip-vlm can read"):
        open_store(labels, {})


def test_a_full_disk_is_one_sentence_and_earlier_parts_stay(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        labels = disk / "labels"
        with open_store(labels, {}, rows_per_part=1) as store:
            store.add(rows(["a"]))
            with pytest.raises(UserError, match=f"cannot write {labels}"):
                for n in range(10_000):
                    store.add(rows([f"k{n}-{i}" for i in range(50)], caption="y" * 2000))
            store._buffer, store._buffered = [], 0  # what did not fit is labelled again next run
        first = sorted(labels.glob("part-*.parquet"))[0]
        assert pq.read_table(first).column("key").to_pylist() == ["a"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
