"""`clip-vlm search LABELS WORDS`: the labelled pairs whose caption or answers hold every word.

DuckDB reads LABELS' Parquet parts in place (nothing is loaded first, nothing is downloaded: no DuckDB
extension is installed or loaded). A word matches a whole word of the caption or of an answer, whatever
the case ("red" finds "Red bus", not "covered"); every word must match in the same row. The words are
split as the text is (letters, digits and `_`), so "truck, night" is two words.

Each match is the bag (its path when labelled), the pair's time in it in seconds from the bag's start
(what `ros2 bag play --start-offset` takes) and the caption, ordered by bag and time.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from clip_vlm_core.errors import UserError
from clip_vlm_core.label.store import PART_GLOB
from clip_vlm_core.output_guard import MARKER as MARKER_NAME

WORD = re.compile(r"\w+")
COLUMNS = ("bag", "bag_path", "bag_id", "offset_s", "stamp_ns", "log_time_ns", "frame_id", "views", "view_stamps_ns",
           "caption", "questions", "answers", "model", "model_sha256", "prompt", "decoding", "labelled_at")


def words_of(text: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(w.lower() for w in WORD.findall(" ".join(text))))


def search(labels: str | Path, words: Sequence[str], limit: int | None = 50) -> list[dict[str, Any]]:
    """Matching rows (COLUMNS, plus `matches`: how many rows matched in all), best first as ordered above."""
    import duckdb

    folder = Path(labels)
    if not folder.is_dir():
        raise UserError(f"LABELS {folder} {'does not exist' if not folder.exists() else 'is not a folder'}; give "
                        f"the folder 'clip-vlm label --out' wrote")
    parts = sorted(str(p) for p in folder.glob(PART_GLOB))
    if not parts:
        if (folder / MARKER_NAME).exists():
            return []
        raise UserError(f"LABELS {folder} holds no label parts ({PART_GLOB}); give the folder 'clip-vlm label --out' "
                        f"wrote")
    terms = words_of(words)
    if not terms:
        raise UserError("give at least one word to search for (letters or digits)")
    # A whole word: not preceded or followed by a letter, digit or _ (Unicode classes, as \w splits the query).
    patterns = [rf"(^|[^\pL\pN_]){re.escape(t)}($|[^\pL\pN_])" for t in terms]
    text = "lower(coalesce(caption, '') || ' ' || coalesce(array_to_string(answers, ' '), ''))"
    where = " AND ".join(f"regexp_matches({text}, ?, 'i')" for _ in patterns)
    query = (f"SELECT {', '.join(COLUMNS)}, count(*) OVER () AS matches FROM read_parquet(?, union_by_name = true) "
             f"WHERE {where} ORDER BY bag, offset_s, model" + (f" LIMIT {int(limit)}" if limit else ""))
    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    try:
        with duckdb.connect(":memory:", config=config) as con:
            cursor = con.execute(query, [parts, *patterns])
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    except duckdb.Error as exc:
        raise UserError(f"LABELS {folder} cannot be searched ({' '.join(str(exc).split())[:300]})") from None


def format_hits(hits: list[dict[str, Any]], as_json: bool = False, cwd: Path | None = None) -> str:
    """Matches as people read them (bag, seconds into it, caption), or as JSON lines."""
    if as_json:
        return "\n".join(json.dumps({k: _jsonable(k, v) for k, v in hit.items() if k != "matches"}, ensure_ascii=False)
                         for hit in hits)
    if not hits:
        return ""
    shown = [_bag_shown(hit, cwd) for hit in hits]
    width = max(len("bag"), *(len(s) for s in shown))
    lines = [f"{'bag':<{width}}  {'start_offset_s':>14}  caption"]
    lines += [f"{bag:<{width}}  {_offset(hit):>14}  {hit['caption']}" for bag, hit in zip(shown, hits, strict=True)]
    total = hits[0]["matches"]
    if total > len(hits):
        lines.append(f"... and {total - len(hits):,} more (--limit 0 shows every match)")
    lines.append(f"replay one: ros2 bag play {shown[0]} --start-offset {_offset(hits[0])}")
    return "\n".join(lines)


def _offset(hit: dict[str, Any]) -> str:
    """Seconds into the bag to the millisecond, rounded down: a replay from there starts at or before the pair."""
    return f"{math.floor(hit['offset_s'] * 1000) / 1000:.3f}"


def _bag_shown(hit: dict[str, Any], cwd: Path | None) -> str:
    path = Path(hit["bag_path"] or hit["bag"])
    if cwd is not None and path.is_absolute() and path.is_relative_to(cwd):
        return str(path.relative_to(cwd))
    return str(path)


def _jsonable(name: str, value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if name == "decoding" and isinstance(value, str):
        try:
            return json.loads(value)  # the settings as an object, not a string holding one
        except ValueError:
            return value
    return value
