"""The training manifest: one JSONL file per split, one row per keyframe, every image hashed.

    OUT/mini_train.jsonl, OUT/mini_val.jsonl   rows: sample_token, scene, timestamp, views, caption
                                               (+ qa: [{question, answer, type}], with --qa)
                                               (+ history: {camera: [past frame or null, ...]}, with
                                                --history K: K past frames per view, oldest first, each
                                                {path, sha256, width, height, offset_s}; see data.history)
    OUT/manifest.json                          version, dataroot, caption source, counts, skips, time

`verify` re-hashes every image, so a manifest says exactly which pixels a model was trained on.

Image paths in rows are relative to the dataroot and checked like every path read from a data file
(clip_vlm_core.paths): never absolute, never out of the dataroot, only regular files. manifest.json
records the dataroot as an absolute path; when the data moves, `--dataroot` (train, eval, verify,
gallery) re-roots the manifest without rebuilding it.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from clip_vlm_core import __version__
from clip_vlm_core.atomic import staged_dir
from clip_vlm_core.data.history import (
    DEFAULT_HISTORY_STRIDE_S,
    PastFrame,
    chain_before,
    check_history,
    pick_past,
)
from clip_vlm_core.data.nuinteract import caption_rule, check_caption_keys, keyframe_caption, load_nuinteract
from clip_vlm_core.data.qa import QAPair, load_qa_files
from clip_vlm_core.data.records import ViewRecord
from clip_vlm_core.errors import UserError
from clip_vlm_core.images import LIMITS_TEXT, MAX_IMAGE_BYTES, bytes_problem, header_size, pixels_problem
from clip_vlm_core.jsonin import iter_json_lines, read_json_object
from clip_vlm_core.limits import (
    MAX_MANIFEST_LINE_BYTES,
    MAX_MANIFEST_ROWS,
    MAX_QA_PER_KEYFRAME,
    MAX_SMALL_JSON_BYTES,
    check_caption,
)
from clip_vlm_core.output_guard import guard_output
from clip_vlm_core.paths import MissingDataFile, check_relative, data_file, regular_file
from clip_vlm_core.progress import progress_bar

META_FILE = "manifest.json"
WRITER = "clip-vlm data build"
OVER_LIMITS = f"image over the limits of {LIMITS_TEXT}"
CHUNK = 1 << 20
VERSION_SPLITS = {"v1.0-mini": ("mini_train", "mini_val"), "v1.0-trainval": ("train", "val"), "v1.0-test": ("test",)}


@dataclass(frozen=True)
class ManifestRow:
    sample_token: str
    scene: str
    timestamp: int
    views: dict[str, ViewRecord]
    caption: str
    qa: tuple[QAPair, ...] = ()  # questions about this keyframe, with their answers
    # Per view, its past frames oldest first (None where missing); empty when built without --history.
    history: dict[str, tuple[PastFrame | None, ...]] = field(default_factory=dict)

    def image_path(self, camera: str, dataroot: str | Path) -> Path:
        """The view's image file, checked to be a regular file inside the dataroot."""
        return data_file(dataroot, self.views[camera].path, f"sample {self.sample_token} {camera} image")

    def past_image_path(self, camera: str, index: int, dataroot: str | Path) -> Path:
        """The file of the view's past frame `index` (0 = oldest), checked as `image_path`'s."""
        frame = self.history[camera][index]
        return data_file(dataroot, frame.path, f"sample {self.sample_token} {camera} past frame {index}")


# Skipped items are counted; only the first few of each reason are kept to name them.
SKIP_EXAMPLES = 100


@dataclass
class BuildReport:
    counts: dict[str, int]
    skipped: dict[str, list[str]]  # reason -> offending tokens / paths (the first SKIP_EXAMPLES)
    qa_counts: dict[str, int] = field(default_factory=dict)  # question-answer pairs per split
    skipped_counts: dict[str, int] = field(default_factory=dict)  # reason -> how many (all of them)
    history_frames: int = 0  # past frames asked for per view (--history)
    history_slots: int = 0  # past frames asked for in all rows written
    history_missing: dict[str, int] = field(default_factory=dict)  # reason -> past frames missing (null in rows)

    def summary(self) -> str:
        lines = [f"{split}: {n} samples" + (f", {self.qa_counts[split]} question-answer pairs"
                                             if self.qa_counts.get(split) else "")
                 for split, n in self.counts.items()]
        if self.history_frames:
            missing = sum(self.history_missing.values())
            why = "; ".join(f"{reason}: {n}" for reason, n in self.history_missing.items())
            lines.append(f"history: {self.history_frames} past frames per view, {missing} of {self.history_slots} "
                         f"missing" + (f" ({why})" if why else ""))
        for reason, items in self.skipped.items():
            count = self.skipped_counts.get(reason, len(items))
            lines.append(f"skipped {count} ({reason}), e.g. {', '.join(items[:3])}")
        return "\n".join(lines)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_nuscenes(dataroot: str | Path, version: str):
    from nuscenes.nuscenes import NuScenes

    dataroot = Path(dataroot)
    if dataroot.exists() and not dataroot.is_dir():
        raise UserError(f"nuScenes dataroot {dataroot} is a file, not a folder")
    if not dataroot.is_dir():
        raise UserError(f"nuScenes dataroot {dataroot} does not exist")
    if not (dataroot / version).is_dir():
        found = sorted(p.name for p in dataroot.glob("v1.0-*"))
        raise UserError(f"nuScenes version {version} not found in {dataroot} (found: {found or 'none'})")
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (AssertionError, KeyError, ValueError, OSError) as exc:
        raise UserError(f"nuScenes tables in {dataroot / version} cannot be loaded ({exc})") from None


def build_manifest(
    dataroot: str | Path,
    version: str,
    captions: str | Path,
    cameras: Sequence[str],
    out: str | Path,
    caption_keys: Sequence[str] | None = None,
    strict: bool = False,
    show_progress: bool = True,
    overwrite: bool = False,
    qa: Sequence[str | Path] = (),
    history: int = 0,
    history_stride_s: float = DEFAULT_HISTORY_STRIDE_S,
) -> BuildReport:
    """Write one JSONL per split plus manifest.json, atomically. An existing OUT is replaced on success
    when an earlier build wrote it (or with `overwrite`), and never when it is or holds an input.

    `qa`: JSONL files of question-answer pairs keyed by sample token (see data.qa); each row carries its
    keyframe's pairs as `qa`. `caption_keys` None: FRONT BACK for up to two cameras; for more, each view's
    own caption, named (nuinteract.named_caption). `history`: past frames per view every `history_stride_s`
    seconds (data.history); a missing one is null in the row and counted, never fatal."""
    from nuscenes.utils.splits import create_splits_scenes

    check_history(history, history_stride_s)
    caption_keys, named = caption_rule(cameras, caption_keys)
    if version not in VERSION_SPLITS:
        raise UserError(f"unknown nuScenes version {version!r}; known: {sorted(VERSION_SPLITS)}")
    inputs = {"nuScenes dataroot": dataroot, "NuInteract captions folder": captions,
              **{f"question-answer file #{n}": file for n, file in enumerate(qa, 1)}}
    guard_output(out, WRITER, inputs, overwrite)
    for file in qa:  # a --qa file that is not there is said before the tables load
        regular_file(file, "question-answer file")
    nusc = load_nuscenes(dataroot, version)
    records = load_nuinteract(captions)
    qa_data = load_qa_files(qa, known_tokens={sample["token"] for sample in nusc.sample})
    qa_pairs = qa_data.pairs
    check_caption_keys(records, caption_keys, captions)
    dataroot, out = Path(dataroot).resolve(), Path(out)
    known_cameras = {s["channel"] for s in nusc.sensor}
    unknown = [c for c in cameras if c not in known_cameras]
    if unknown:
        raise UserError(f"unknown camera(s) {unknown}; this dataset has {sorted(known_cameras)}")
    scene_split = {name: split for split, names in create_splits_scenes().items()
                   if split in VERSION_SPLITS[version] for name in names}
    skipped: dict[str, list[str]] = defaultdict(list)
    skipped_counts: Counter[str] = Counter()

    def skip(reason: str, what: str, count: int = 1) -> None:
        if strict:
            raise UserError(f"{reason}: {what} (--strict)")
        skipped_counts[reason] += count
        if len(skipped[reason]) < SKIP_EXAMPLES:
            skipped[reason].append(what)

    rows: dict[str, list[dict]] = {split: [] for split in VERSION_SPLITS[version]}
    past = _PastFrames(nusc, dataroot, history, history_stride_s)
    sample_tokens = set()
    for sample in progress_bar(nusc.sample, desc="hashing keyframes", unit="sample", enabled=show_progress):
        sample_tokens.add(sample["token"])
        scene = nusc.get("scene", sample["scene_token"])["name"]
        if scene not in scene_split:
            skip(f"scene in no {version} split", f"{scene}/{sample['token']}")
            continue
        caption = keyframe_caption(records, sample["token"], caption_keys, named)
        if caption is None:
            skip("keyframe without caption", sample["token"])
            continue
        try:  # a training target: valid text, no chat-template tokens, not longer than the model may say
            caption = check_caption(caption, f"the caption of {sample['token']}")
        except UserError as exc:
            skip("caption that cannot be a training target", str(exc))
            continue
        views = {}
        for cam in cameras:
            if cam not in sample["data"]:
                skip("keyframe without a requested camera", f"{sample['token']}/{cam}")
                break
            sd = nusc.get("sample_data", sample["data"][cam])
            view = _view_record(dataroot, sd, skip)
            if view is None:
                break
            views[cam] = view
        else:
            row = {"sample_token": sample["token"], "scene": scene, "timestamp": sample["timestamp"],
                   "views": {c: asdict(v) for c, v in views.items()}, "caption": caption}
            if sample["token"] in qa_pairs:
                row["qa"] = [pair.as_dict() for pair in qa_pairs[sample["token"]]]
            if history:
                row["history"] = {cam: [asdict(f) if f else None for f in past.frames(sample["data"][cam])]
                                  for cam in cameras}
            rows[scene_split[scene]].append(row)
    for token in sorted(set(records) - sample_tokens):
        skip("caption for an unknown sample token", token)
    if qa_data.unknown_pairs:
        skip("questions for an unknown sample token", ", ".join(qa_data.unknown_examples), qa_data.unknown_pairs)

    counts = {split: len(r) for split, r in rows.items()}
    qa_counts = {split: sum(len(row.get("qa", ())) for row in r) for split, r in rows.items()}
    slots = sum(counts.values()) * len(cameras) * history
    history_meta = {"history": {"frames": history, "stride_s": history_stride_s, "past_frames": slots,
                                "missing": dict(past.missing)}} if history else {}
    meta = {"nuscenes_version": version, "dataroot": str(dataroot), "captions": str(Path(captions).resolve()),
            "qa": [str(Path(f).resolve()) for f in qa], "qa_counts": qa_counts,
            "cameras": list(cameras), "caption_keys": list(caption_keys), "counts": counts,
            **({"caption_format": "named views"} if named else {}), **history_meta,
            "skipped": dict(skipped_counts),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "tool_version": __version__}
    _write_atomically(out, rows, meta)
    return BuildReport(counts, dict(skipped), qa_counts, dict(skipped_counts), history, slots, dict(past.missing))


class _PastFrames:
    """The past frames of a view's current frame, each file checked and hashed once per build (a frame is
    the history of several rows). A missing or unreadable past frame is None, counted by reason, and
    never skips the row; a path out of the dataroot is refused as every path of the tables is."""

    def __init__(self, nusc, dataroot: Path, frames: int, stride_s: float) -> None:
        self._nusc, self._dataroot, self._frames, self._stride_s = nusc, dataroot, frames, stride_s
        self._records: dict[str, ViewRecord | None] = {}
        self.missing: Counter[str] = Counter()

    def frames(self, sd_token: str) -> list[PastFrame | None]:
        sd = self._nusc.get("sample_data", sd_token)
        earlier = chain_before(self._nusc.get, sd, (self._frames + 1) * self._stride_s)
        out: list[PastFrame | None] = []
        for token, why in pick_past(earlier, sd["timestamp"], self._frames, self._stride_s):
            record = self._record(token) if token else None
            if token and record is None:
                why = "past frame image missing, corrupt or over the limits"
            if record is None:
                self.missing[why] += 1
                out.append(None)
                continue
            offset = (self._nusc.get("sample_data", token)["timestamp"] - sd["timestamp"]) / 1e6
            out.append(PastFrame(record.path, record.sha256, record.width, record.height, round(offset, 6)))
        return out

    def _record(self, token: str) -> ViewRecord | None:
        if token not in self._records:
            self._records[token] = _view_record(self._dataroot, self._nusc.get("sample_data", token),
                                                lambda reason, what, count=1: None)
        return self._records[token]


def _view_record(dataroot: Path, sample_data: dict, skip) -> ViewRecord | None:
    filename = sample_data["filename"]
    try:
        # From a downloaded table: refused (not skipped) when it leaves the dataroot or is no regular file.
        path = data_file(dataroot, filename, f"sample_data {sample_data['token']} filename")
    except MissingDataFile:
        skip("missing image", filename)
        return None
    if bytes_problem(path.stat().st_size):
        skip(OVER_LIMITS, filename)
        return None
    with open(path, "rb") as f:
        data = f.read(MAX_IMAGE_BYTES + 1)  # one read serves the hash and the decode; frames are small
    try:
        width, height = header_size(data)
    except ValueError:
        skip("corrupt image", filename)
        return None
    if bytes_problem(len(data)) or pixels_problem(width, height):  # a bomb is refused from its header
        skip(OVER_LIMITS, filename)
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            # `verify()` passes truncated JPEGs; decoding every block does not. Draft mode decodes at
            # 1/8 scale, which still reads the whole entropy-coded stream, at a third of the cost.
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        skip("corrupt image", filename)
        return None
    return ViewRecord(filename, hashlib.sha256(data).hexdigest(), width, height)


def _write_atomically(out: Path, rows: dict[str, list[dict]], meta: dict) -> None:
    with staged_dir(out, WRITER) as tmp:
        for split, split_rows in rows.items():
            with open(tmp / f"{split}.jsonl", "w") as f:
                for row in split_rows:
                    f.write(json.dumps(row) + "\n")
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def manifest_dir(path: str | Path) -> Path:
    """The manifest folder, given the folder itself or one of its split files."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def read_manifest_meta(out_dir: str | Path) -> dict:
    if not Path(out_dir).exists():
        raise UserError(f"manifest {out_dir} does not exist")
    path = manifest_dir(out_dir) / META_FILE
    if not path.exists():
        raise UserError(f"{path} is missing: is {manifest_dir(out_dir)} a manifest from `clip-vlm data build`?")
    return read_json_object(path, "manifest metadata", MAX_SMALL_JSON_BYTES)


def split_files(out_dir: str | Path) -> list[Path]:
    return sorted(manifest_dir(out_dir).glob("*.jsonl"))


def load_manifest(path: str | Path) -> list[ManifestRow]:
    """Rows of one split file (or of every split, given the folder), read one line at a time; each row is
    checked as data it is: image paths inside the dataroot, the caption and every question and answer
    held to the rule of texts that enter the prompt or a training target (clip_vlm_core.limits)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"manifest {path} does not exist")
    files = split_files(path) if path.is_dir() else [regular_file(path, "manifest")]
    rows = []
    for file in files:
        for n, raw in iter_json_lines(file, "manifest", MAX_MANIFEST_LINE_BYTES):
            if len(rows) >= MAX_MANIFEST_ROWS:
                raise UserError(f"manifest {path} has more than {MAX_MANIFEST_ROWS:,} rows, more keyframes than any "
                                f"data set has")
            rows.append(_row(raw, f"manifest {file} line {n}"))
    return rows


def _row(raw: object, where: str) -> ManifestRow:
    try:
        views = {cam: ViewRecord(**v) for cam, v in raw["views"].items()}
        for cam, view in views.items():  # rows are data files too: paths stay inside the dataroot
            check_relative(view.path, f"{where}: {cam} path")
        pairs = raw.get("qa", ())
        if len(pairs) > MAX_QA_PER_KEYFRAME:
            raise UserError(f"{where} has {len(pairs):,} question-answer pairs, more than {MAX_QA_PER_KEYFRAME:,}")
        qa = tuple(QAPair.from_dict(pair, f"{where} qa") for pair in pairs)
        if not isinstance(raw["sample_token"], str) or not isinstance(raw["scene"], str):
            raise TypeError("sample_token and scene must be strings")
        caption = check_caption(raw["caption"], f"{where}: the caption")
        history = {cam: tuple(_past_frame(frame, f"{where}: {cam} past frame {i}") for i, frame in enumerate(frames))
                   for cam, frames in raw.get("history", {}).items()}
        if set(history) - set(views) or len({len(frames) for frames in history.values()}) > 1:
            raise ValueError("history must hold as many past frames for each of the row's views")
        return ManifestRow(raw["sample_token"], raw["scene"], int(raw["timestamp"]), views, caption, qa, history)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{where} is not a valid row ({type(exc).__name__}: {exc})") from None


def _past_frame(raw: object, where: str) -> PastFrame | None:
    if raw is None:
        return None
    frame = PastFrame(**raw)
    check_relative(frame.path, where)
    if not isinstance(frame.offset_s, (int, float)) or isinstance(frame.offset_s, bool) or not frame.offset_s < 0:
        raise ValueError(f"{where}: offset_s must be a negative number of seconds")
    return frame


def manifest_dataroot(manifest: str | Path, dataroot: str | Path | None = None) -> Path:
    """Where a manifest's images are: `dataroot` when given (the data moved), else the one it was built from."""
    recorded = read_manifest_meta(manifest).get("dataroot")
    root = Path(dataroot) if dataroot else Path(recorded or "")
    if not root.is_dir():
        hint = "" if dataroot else "; pass --dataroot to say where the data is now"
        raise UserError(f"nuScenes dataroot {root} of manifest {manifest} is not a folder{hint}")
    return root


def verify_manifest(out_dir: str | Path, show_progress: bool = True,
                    dataroot: str | Path | None = None) -> tuple[int, list[str]]:
    """Re-hash every image; return (files checked, problems naming each changed, missing or refused file)."""
    root = manifest_dataroot(out_dir, dataroot)
    checks = Counter()
    problems = []
    rows = load_manifest(manifest_dir(out_dir))
    for row in progress_bar(rows, desc="verifying images", unit="sample", enabled=show_progress):
        files = [(view, partial(row.image_path, camera, root)) for camera, view in row.views.items()]
        files += [(frame, partial(row.past_image_path, camera, i, root))
                  for camera, frames in row.history.items() for i, frame in enumerate(frames) if frame is not None]
        for view, locate in files:
            checks["files"] += 1
            try:
                path = locate()
            except MissingDataFile:
                problems.append(f"missing: {root / view.path}")
                continue
            except UserError as exc:  # out of the dataroot, a folder, a FIFO: never opened
                problems.append(f"refused: {exc}")
                continue
            too_big = bytes_problem(path.stat().st_size)
            if too_big:
                problems.append(f"too large: {path} {too_big}")
            elif sha256_file(path) != view.sha256:
                problems.append(f"sha256 changed: {path}")
    return checks["files"], problems
