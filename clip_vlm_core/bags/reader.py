"""Open a rosbag2 bag as rosbag2 writes it, and read it as untrusted data.

A bag is a folder with metadata.yaml and its storage files (split or not, sqlite3 or MCAP, compressed
per file or per message, metadata versions 1 to 9), or one storage file alone (`talker.mcap`,
`talker.db3`, as `ros2 bag record` users pass them around). Its topics and counts are what rosbag2
shows: metadata.yaml's for a folder, the storage's own for a single file.

Messages are read per storage file with rosbags, matched to the bag's topics by topic name (as rosbag2
matches them), never by comparing QoS: rosbag2 writes a topic's offered QoS differently in metadata.yaml
and in storage (a deadline of 0 in one, 2147483647 s in the other), and a reader that compares them
finds no message at all. Every declared size is checked first (`storage.py`), and any failure of the
reader on a damaged file is told as one sentence naming the file.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from clip_vlm_core.bags import storage
from clip_vlm_core.bags.metadata import METADATA_FILE, SUFFIXES, BagMetadata, TopicRecord, read_metadata
from clip_vlm_core.errors import UserError

log = logging.getLogger(__name__)
STORAGE_OF_SUFFIX = {suffix: storage_id for storage_id, suffix in SUFFIXES.items()}
COMPRESSED_SUFFIX = ".zstd"

storage.bound_chunk_decompression()


@dataclass(frozen=True)
class StorageFile:
    path: Path  # as found in the bag
    compressed: bool  # whole-file zstd (compression_mode: file, or a single `x.db3.zstd`)


class Bag:
    """An opened bag: what it declares (`topics`, `start_ns`, ...), and its messages on demand."""

    def __init__(self, path: Path, shown: str, storage_id: str, files: list[StorageFile],
                 metadata: BagMetadata | None) -> None:
        self.path = path
        self.shown = shown
        self.storage = storage_id
        self.files = files
        self.metadata = metadata
        self.version = metadata.version if metadata else None
        self.compression = metadata.compression_mode if metadata else ("file" if files[0].compressed else "")
        self._stack = ExitStack()
        self._tmp: Path | None = None
        self._readable: list[Path] | None = None
        if metadata is not None:
            self.topics = list(metadata.topics)
            self.start_ns, self.duration_ns = metadata.start_ns, metadata.duration_ns
            self.message_count = metadata.message_count
        else:
            try:
                self._describe_single_file()
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Bag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def size_bytes(self) -> int:
        return sum(f.path.stat().st_size for f in self.files)

    def messages(self, topics: Iterable[str]) -> Iterator[tuple[str, int, memoryview | bytes]]:
        """(topic, bag time ns, serialized message) of the given topics, file by file in recording order."""
        from rosbags.rosbag2 import Reader

        wanted = {t.name: t for t in self.topics if t.name in set(topics)}
        for path in self._storage_paths():
            with self._reading(path):
                reader = Reader(path)
                reader.open()
                try:
                    connections = [c for c in reader.connections if c.topic in wanted]
                    for conn in connections:
                        expected = wanted[conn.topic].msgtype
                        if conn.msgtype != expected:
                            raise UserError(f"bag {self.shown}: topic {conn.topic} is {expected} in {METADATA_FILE} "
                                            f"but {conn.msgtype} in {path.name}")
                    if not connections:  # rosbags reads an empty list as "every connection"
                        continue
                    for conn, bag_ns, raw in reader.messages(connections=connections):
                        if self.compression == "message":
                            raw = storage.inflate_message(raw, f"bag {self.shown}: a message of {conn.topic} in {path.name}")
                        yield conn.topic, bag_ns, raw
                finally:
                    reader.close()

    def _describe_single_file(self) -> None:
        from rosbags.rosbag2 import Reader

        path = self._storage_paths()[0]
        with self._reading(path):
            reader = Reader(path)
            reader.open()
            try:
                by_topic: dict[str, TopicRecord] = {}
                for c in reader.connections:
                    known = by_topic.get(c.topic)
                    offers = tuple(getattr(c.ext, "offered_qos_profiles", ()))
                    fmt = getattr(c.ext, "serialization_format", "cdr")
                    count = c.msgcount + (known.count if known else 0)
                    by_topic[c.topic] = TopicRecord(c.topic, c.msgtype, count, fmt, offers or (known.offered_qos if known else ()))
                self.topics = list(by_topic.values())
                self.message_count = reader.message_count
                self.start_ns = reader.start_time if self.message_count else 0
                self.duration_ns = max(0, reader.end_time - 1 - reader.start_time) if self.message_count else 0
            finally:
                reader.close()

    def _storage_paths(self) -> list[Path]:
        """The storage files to read: as they are, or inflated (once, bounded) into a temporary folder."""
        if self._readable is None:
            readable = []
            for f in self.files:
                if not f.compressed:
                    readable.append(f.path)
                    continue
                if self._tmp is None:
                    self._tmp = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="clip-vlm-bag-")))
                target = self._tmp / f.path.name[: -len(COMPRESSED_SUFFIX)]
                storage.inflate_file(f.path, target, self._where(f.path))
                self._check(target, f"{self._where(f.path)} (inflated)")
                readable.append(target)
            self._readable = readable
        return self._readable

    def _where(self, path: Path) -> str:
        """How messages name a storage file: the bag, and the file's name within a folder."""
        return f"bag {self.shown}" if self.metadata is None else f"bag {self.shown}: {path.name}"

    def _check(self, path: Path, where: str) -> None:
        (storage.check_mcap if self.storage == "mcap" else storage.check_sqlite)(path, where)

    @contextmanager
    def _reading(self, path: Path) -> Iterator[None]:
        """Any failure of the reader library on this file, told as one sentence naming it."""
        try:
            yield
        except (UserError, MemoryError):
            raise
        except Exception as exc:  # a damaged file makes rosbags, apsw or struct raise almost anything
            log.debug("reading %s failed", path, exc_info=True)
            text = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise UserError(f"{self._where(path)} cannot be read ({text})") from None


def open_bag(path: str | Path) -> Bag:
    """An opened bag folder or single storage file; any problem with it is a UserError naming it."""
    shown = str(path)
    path = Path(path)
    if not path.exists():
        raise UserError(f"bag {shown} does not exist")
    if path.is_dir():
        return _open_folder(path, shown)
    if path.is_file():
        return _open_single_file(path, shown)
    raise UserError(f"bag {shown} is neither a folder nor a regular file")


def _open_folder(folder: Path, shown: str) -> Bag:
    if not (folder / METADATA_FILE).exists():
        found = sorted(p.name for p in folder.iterdir() if _storage_of(p) is not None)
        hint = (f"; to read one of its storage files alone, give that file, e.g. {folder / found[0]}" if found
                else ", nor any .mcap or .db3 file")
        raise UserError(f"bag {shown} is not a rosbag2 bag folder (no {METADATA_FILE}{hint})")
    metadata = read_metadata(folder, shown)
    files = []
    root = folder.resolve()
    for name in metadata.files:
        path = folder / name
        compressed = metadata.compression_mode == "file"
        expected = SUFFIXES[metadata.storage] + (COMPRESSED_SUFFIX if compressed else "")
        if not path.is_file():
            raise UserError(f"bag {shown}: its storage file {name} is missing" if not path.exists()
                            else f"bag {shown}: its storage file {name} is not a regular file")
        if not path.resolve().is_relative_to(root):
            raise UserError(f"bag {shown}: its storage file {name} is a link that leads out of the bag folder")
        if not name.endswith(expected):
            raise UserError(f"bag {shown}: its storage file {name} does not end in {expected}, as a "
                            f"{metadata.storage}{' compressed' if compressed else ''} bag's files do")
        files.append(StorageFile(path, compressed))
    bag = Bag(folder, shown, metadata.storage, files, metadata)
    for f in files:
        if not f.compressed:
            bag._check(f.path, bag._where(f.path))
    return bag


def _open_single_file(path: Path, shown: str) -> Bag:
    kind = _storage_of(path)
    if kind is None:
        raise UserError(f"bag {shown} is not a bag: give a bag folder (with {METADATA_FILE}) or a single "
                        f".mcap or .db3 storage file")
    storage_id, compressed = kind
    if not compressed:
        (storage.check_mcap if storage_id == "mcap" else storage.check_sqlite)(path, f"bag {shown}")
    return Bag(path, shown, storage_id, [StorageFile(path, compressed)], None)


def _storage_of(path: Path) -> tuple[str, bool] | None:
    """(storage id, whole-file compressed) for a storage file name, else None."""
    name = path.name
    compressed = name.endswith(COMPRESSED_SUFFIX)
    stem = name[: -len(COMPRESSED_SUFFIX)] if compressed else name
    suffix = Path(stem).suffix
    return (STORAGE_OF_SUFFIX[suffix], compressed) if suffix in STORAGE_OF_SUFFIX else None

