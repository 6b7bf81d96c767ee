"""`clip-vlm search LABELS WORDS`: DuckDB over LABELS, every word a whole word of the caption or of an answer,
whatever the case; matches printed as bag, seconds into it and caption, for `ros2 bag play --start-offset`."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from clip_vlm_core.cli import main
from clip_vlm_core.errors import UserError
from clip_vlm_core.label.search import search
from clip_vlm_core.label.store import SCHEMA, open_store

ROWS = [  # (bag, offset_s, caption, answers)
    ("/data/car1/run", 12.5, "It is night. A red truck is behind in our lane.", ["yes"]),
    ("/data/car1/run", 3.0, "It is daytime. A blue bus is ahead. Nothing is behind.", ["no"]),
    ("/data/car2/run", 7.25, "It is night. Nothing is ahead. The traffic light is green.", ["Red truck"]),
    ("/data/car2/run", 9.0, "It is night. A red car, covered in snow, is ahead.", ["no"]),
]


@pytest.fixture()
def labels(tmp_path) -> Path:
    out = tmp_path / "labels"
    now = datetime.now(timezone.utc)
    table = pa.Table.from_pylist([{
        "key": f"k{i}", "bag": bag, "bag_path": bag, "bag_id": f"sha256:{bag}", "bag_start_ns": 0, "offset_s": offset,
        "stamp_ns": i, "log_time_ns": i, "frame_id": "CAM_FRONT", "views": ["CAM_FRONT", "CAM_BACK"],
        "view_stamps_ns": [i, i], "caption": caption, "questions": ["Is anything following us?"], "answers": answers,
        "model": "m", "model_sha256": "sha256:m", "prompt": "p", "decoding": json.dumps({"max_new_tokens": 64}),
        "settings_id": "s", "worker": "cpu", "labelled_at": now}
        for i, (bag, offset, caption, answers) in enumerate(ROWS)], schema=SCHEMA)
    with open_store(out, {}, rows_per_part=2) as store:  # two parts
        store.add(table)
    return out


def found(labels: Path, *words: str) -> list[tuple[str, float]]:
    return [(hit["bag"], hit["offset_s"]) for hit in search(labels, words)]


def test_every_word_must_match_whole_and_case_is_ignored(labels):
    assert found(labels, "NIGHT", "Red") == [("/data/car1/run", 12.5), ("/data/car2/run", 7.25), ("/data/car2/run", 9.0)]
    assert found(labels, "red truck night") == [("/data/car1/run", 12.5), ("/data/car2/run", 7.25)]  # one by its answer
    assert found(labels, "red", "bus") == []
    assert found(labels, "cover") == []  # a word, not a piece of one: "covered" does not hold "cover"
    assert found(labels, "covered,", "SNOW.") == [("/data/car2/run", 9.0)]  # punctuation splits words as in text
    assert found(labels, "yes") == [("/data/car1/run", 12.5)]


def test_the_cli_prints_bag_offset_and_caption_ready_for_start_offset(labels, capsys):
    assert main(["search", str(labels), "truck"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["bag", "start_offset_s", "caption"]
    assert out[1].split()[:2] == ["/data/car1/run", "12.500"] and out[1].endswith(ROWS[0][2])
    assert out[2].split()[:2] == ["/data/car2/run", "7.250"]
    assert out[-1] == "replay one: ros2 bag play /data/car1/run --start-offset 12.500"


def test_the_cli_limit_and_json(labels, capsys):
    assert main(["search", str(labels), "night", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "... and 2 more" in out
    assert main(["search", str(labels), "green", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["offset_s"] == 7.25 and record["answers"] == ["Red truck"] and record["decoding"]["max_new_tokens"] == 64


def test_no_match_is_said_and_exits_1_as_grep_does(labels, capsys):
    assert main(["search", str(labels), "helicopter"]) == 1
    assert "no labelled pair" in capsys.readouterr().err


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "file").write_text("x") and p / "file", "is not a folder"),
    (lambda p: (p / "other").mkdir() or p / "other", "holds no label parts"),
])
def test_a_folder_that_is_no_labels_is_one_sentence(tmp_path, capsys, make, message):
    target = make(tmp_path)
    with pytest.raises(UserError, match=message):
        search(target, ["bus"])
    assert main(["search", str(target), "bus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clip-vlm search: error: ") and message in err[0]


def test_words_without_letters_or_digits_are_refused(labels):
    with pytest.raises(UserError, match="at least one word"):
        search(labels, ["...", "!"])


def test_search_downloads_nothing(labels, monkeypatch):
    """No DuckDB extension is installed or loaded: with no network and an empty extension folder it still works."""
    monkeypatch.setenv("HOME", str(labels.parent / "home"))  # DuckDB's extension folder is under HOME
    assert found(labels, "bus") == [("/data/car1/run", 3.0)]
    assert not (labels.parent / "home" / ".duckdb").exists()
