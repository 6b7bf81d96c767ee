"""LABELS: a folder of Parquet parts, one row per captioned pair, each row once.

    LABELS/
      .clip-vlm-output          marker: written by clip-vlm label (so a later run may add to it)
      .lock                     held by the run writing it (a second run at the same time is refused)
      part-<time>-<host>-<pid>-<random>-<n>.parquet   rows, in the schema below

Rows arrive from the workers in any order; the store keeps every key of LABELS (read once at the start)
and of what it wrote since, and drops a row whose key it has: it is the only writer, so a row is never
there twice, whatever the workers did (a retried task, a bag named under two paths). Rows are buffered
and written as one part every `rows_per_part` rows or `part_seconds` seconds, each part to a temporary
file that is renamed into place when complete (clip_vlm_core.atomic): a run killed at any moment leaves
whole parts only, and what it had not written yet is labelled again by the next run.

Any Parquet reader reads LABELS (`pyarrow.dataset`, DuckDB's `read_parquet('LABELS/part-*.parquet')`,
pandas); hidden files are not parts.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clip_vlm_core.atomic import staged_file, write_fault
from clip_vlm_core.errors import UserError
from clip_vlm_core.output_guard import guard_output, remove_output, write_marker

WRITER = "clip-vlm label"
PART_GLOB = "part-*.parquet"
LOCK_FILE = ".lock"

SCHEMA = pa.schema([
    ("key", pa.string()),  # the row's identity (clip_vlm_core.label.keys.pair_key)
    ("bag", pa.string()),  # the bag as it was named when labelled
    ("bag_path", pa.string()),  # its absolute path then
    ("bag_id", pa.string()),  # its content: 'sha256:...' (keys.bag_identity)
    ("bag_start_ns", pa.int64()),  # the bag's first message's log time
    ("offset_s", pa.float64()),  # the pair's earliest frame, seconds from the bag's start (--start-offset)
    ("stamp_ns", pa.int64()),  # the pair's stamp: its first view's, as the node stamps its caption
    ("log_time_ns", pa.int64()),  # the log time of that view's frame
    ("frame_id", pa.string()),
    ("views", pa.list_(pa.string())),
    ("view_stamps_ns", pa.list_(pa.int64())),  # each view's stamp, in the order of `views`
    ("caption", pa.string()),
    ("questions", pa.list_(pa.string())),
    ("answers", pa.list_(pa.string())),  # one per question
    ("model", pa.string()),
    ("model_sha256", pa.string()),
    ("prompt", pa.string()),
    ("decoding", pa.string()),  # the decoding settings in effect, as JSON
    ("settings_id", pa.string()),  # keys.settings_id of model, prompt, decoding and questions
    ("worker", pa.string()),  # where the caption was made: device, Ray node, process
    ("labelled_at", pa.timestamp("s", tz="UTC")),
])


class LabelStore:
    """LABELS opened for adding rows (see the module's docstring). Use `open_store`."""

    def __init__(self, folder: Path, rows_per_part: int, part_seconds: float) -> None:
        self.folder = folder
        self.rows_per_part = rows_per_part
        self.part_seconds = part_seconds
        self.written = 0  # rows written by this run
        self.parts_written = 0
        self.duplicates = 0  # rows dropped because their key was there already
        self._keys: set[str] = set()
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._since = time.monotonic()
        self._lock_fd: int | None = None
        # Unique to this store: two runs in one second (in one process even) never write the same name.
        self._prefix = (f"part-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-"
                        f"{''.join(c for c in socket.gethostname() if c.isalnum())[:24]}-{os.getpid()}-"
                        f"{uuid.uuid4().hex[:8]}")

    # -- reading -----------------------------------------------------------------------------------------
    def parts(self) -> list[Path]:
        return sorted(self.folder.glob(PART_GLOB))

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """Every row of LABELS (the parts written so far); a part that is not Parquet is a UserError."""
        return read_parts(self.parts(), columns)

    @property
    def keys(self) -> set[str]:
        return self._keys

    # -- writing -----------------------------------------------------------------------------------------
    def add(self, rows: pa.Table) -> int:
        """Buffer the rows whose key is new (written at the next flush); return how many were new."""
        keys = rows.column("key").to_pylist()
        fresh = []
        for i, key in enumerate(keys):
            if key in self._keys:
                self.duplicates += 1
            else:
                self._keys.add(key)
                fresh.append(i)
        if fresh:
            rows = rows if len(fresh) == len(keys) else rows.take(fresh)
            self._buffer.append(rows.select(SCHEMA.names).cast(SCHEMA))
            self._buffered += len(fresh)
        if self._buffered >= self.rows_per_part or (self._buffered and time.monotonic() - self._since >= self.part_seconds):
            self.flush()
        return len(fresh)

    def flush(self) -> None:
        """Write the buffered rows as one part, atomically."""
        if not self._buffered:
            self._since = time.monotonic()
            return
        table = pa.concat_tables(self._buffer)
        target = self.folder / f"{self._prefix}-{self.parts_written:06d}.parquet"
        with staged_file(target) as tmp:
            pq.write_table(table, tmp, compression="zstd")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())  # the rename below must never point at bytes still in flight
        self.parts_written += 1
        self.written += table.num_rows
        self._buffer, self._buffered, self._since = [], 0, time.monotonic()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = None

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(folder: str | Path, inputs: Mapping[str, str | Path | None], overwrite: bool = False,
               rows_per_part: int = 5000, part_seconds: float = 30.0) -> LabelStore:
    """LABELS checked, created if need be, locked against a second run, and its keys read.

    The output guard applies (clip_vlm_core.atomic): LABELS is never an input nor holds one; an existing
    folder is added to only when clip-vlm label wrote it and it holds nothing else (or with `overwrite`,
    which empties it first)."""
    folder = Path(folder)
    guard_output(folder, WRITER, inputs, overwrite=overwrite)
    if overwrite and folder.is_dir() and any(folder.iterdir()):
        remove_output(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / ".clip-vlm-output").exists():
            write_marker(folder, WRITER)
    except OSError as exc:
        raise UserError(f"cannot write --out {folder}: {write_fault(exc, folder)}") from None
    store = LabelStore(folder, rows_per_part, part_seconds)
    store._lock_fd = _lock(folder)
    try:
        foreign = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and not p.match(PART_GLOB))
        if foreign:
            raise UserError(f"--out {folder} holds {foreign[0]}, which clip-vlm label did not write; choose another "
                            f"--out (LABELS holds only its part-*.parquet files)")
        store._keys = set(read_parts(store.parts(), ["key"]).column("key").to_pylist())
    except BaseException:
        store.close()
        raise
    return store


def _lock(folder: Path) -> int:
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot write --out {folder}: {write_fault(exc, folder)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"--out {folder} is being written by another clip-vlm label run; wait for it to end, or "
                        f"choose another --out") from None
    return fd


def read_parts(parts: list[Path], columns: list[str] | None = None) -> pa.Table:
    """The rows of these parts (the columns asked for), in SCHEMA's types."""
    schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
    tables = []
    for part in parts:
        try:
            tables.append(pq.read_table(part, columns=schema.names).cast(schema))
        except (OSError, pa.ArrowException) as exc:
            raise UserError(f"{part} is not a label part clip-vlm can read ({' '.join(str(exc).split())[:200]}); "
                            f"move it out of the folder") from None
    return pa.concat_tables(tables) if tables else schema.empty_table()


def rows_of(table: pa.Table, bag_id: str, settings: str) -> pa.Table:
    """The rows of one bag made with one set of settings, in stamp order."""
    mask = pc.and_(pc.equal(table["bag_id"], bag_id), pc.equal(table["settings_id"], settings))
    return table.filter(mask).sort_by([("log_time_ns", "ascending"), ("stamp_ns", "ascending")])
