"""NuInteract dense captions: a folder of JSON files, each a list of per-keyframe records.

The one reader of the format: `data build`, `bag convert` and everything else that needs captions
read them here, so the same folder gives the same caption for a keyframe in every command.

A record is {token (sample token), prev, next, frame_idx, scene_token, cam_path, gpt_prompt,
gemini_caption}; `gemini_caption` (`gpt_caption` in some releases) maps each camera plus the joint
FRONT and BACK descriptions to text. The target caption joins the chosen keys, FRONT then BACK by
default; with more than two cameras and no keys chosen, it names each view's own caption in the cameras'
order ("Front: ... Front left: ...", `named_caption`), so that a model learns which camera saw what. Every `.json` file of the folder is read whatever it is called (one file per scene, by scene
token, in chunks such as part0.json, or one file for all scenes): records are found by sample token.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from clip_vlm_core.errors import UserError
from clip_vlm_core.jsonin import read_json
from clip_vlm_core.paths import file_kind

CAPTION_FIELDS = ("gemini_caption", "gpt_caption")
DEFAULT_CAPTION_KEYS = ("FRONT", "BACK")


def load_nuinteract(folder: str | Path) -> dict[str, dict]:
    """All records of the folder by sample token (a later duplicate token is an error, not an overwrite)."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"NuInteract captions folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"NuInteract captions folder {folder} is a file, not a folder of .json files")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise UserError(f"NuInteract captions folder {folder} has no .json files")
    records: dict[str, dict] = {}
    for path in files:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):  # a FIFO named x.json would block the read forever
            raise UserError(f"NuInteract file {path} is {file_kind(mode)}, not a regular file")
        rows = read_json(path, "NuInteract file", max_bytes=None)  # its nesting bounded, as every JSON read
        if not isinstance(rows, list):
            raise UserError(f"NuInteract file {path} must hold a list of per-keyframe records")
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or "token" not in row:
                raise UserError(f"NuInteract file {path} record {i} has no sample 'token'")
            if row["token"] in records:
                raise UserError(f"sample token {row['token']} appears twice in NuInteract ({path.name})")
            records[row["token"]] = row
    return records


def record_captions(record: dict) -> dict | None:
    """The record's per-key captions, under whichever field name its release uses."""
    return next((record[f] for f in CAPTION_FIELDS if isinstance(record.get(f), dict)), None)


def caption_keys_present(records: Iterable[dict]) -> set[str]:
    """Every caption key that at least one record has (to catch a misspelt --caption-keys early)."""
    return {key for record in records for key in (record_captions(record) or {})}


def check_caption_keys(records: Mapping[str, dict], keys: Sequence[str], folder: str | Path) -> None:
    """Refuse caption keys that no record of the folder has: a typo, not a few missing captions."""
    if not keys:
        raise UserError("give at least one caption key (--caption-keys), e.g. FRONT BACK")
    absent = [key for key in keys if key not in caption_keys_present(records.values())]
    if absent:
        raise UserError(f"no NuInteract record in {folder} has caption key(s) {absent}; check --caption-keys")


def target_caption(records: Mapping[str, dict], sample_token: str,
                   keys: Sequence[str] = DEFAULT_CAPTION_KEYS) -> str | None:
    """The target caption of one keyframe, or None when it has no record or lacks a chosen key."""
    record = records.get(sample_token)
    return joint_caption(record, keys) if record is not None else None


def view_label(camera: str) -> str:
    """How a target names a camera's caption: CAM_FRONT_LEFT -> "Front left"."""
    name = camera.removeprefix("CAM_").replace("_", " ").strip().lower()
    return name[:1].upper() + name[1:]


def named_caption(record: dict, cameras: Sequence[str]) -> str | None:
    """The target of a record over several cameras: each camera's own caption (under its channel name)
    after its label, in the cameras' order: "Front: ... Front left: ..."; None if any is missing."""
    captions = record_captions(record)
    if captions is None:
        return None
    parts = [captions.get(camera) for camera in cameras]
    if any(not isinstance(p, str) or not p.strip() for p in parts):
        return None
    return " ".join(f"{view_label(camera)}: {p.strip()}" for camera, p in zip(cameras, parts, strict=True))


def caption_rule(cameras: Sequence[str], caption_keys: Sequence[str] | None = None) -> tuple[list[str], bool]:
    """Which caption keys a keyframe's target reads over `cameras`, and whether it names them: the keys
    given; else FRONT BACK for up to two cameras, and for more each camera's own caption, named. The one
    rule of `data build`'s targets and `bag convert`'s /scene_caption_gt."""
    if caption_keys is not None:
        return list(caption_keys), False
    if len(cameras) > 2:
        return list(cameras), True
    return list(DEFAULT_CAPTION_KEYS), False


def keyframe_caption(records: Mapping[str, dict], sample_token: str, keys: Sequence[str], named: bool) -> str | None:
    """A keyframe's target under a caption_rule: None when it has no record or lacks a key."""
    if not named:
        return target_caption(records, sample_token, keys)
    record = records.get(sample_token)
    return named_caption(record, keys) if record is not None else None


def joint_caption(record: dict, keys: Sequence[str] = DEFAULT_CAPTION_KEYS) -> str | None:
    """The target caption of a record: the chosen keys' texts joined by a space; None if any is missing."""
    captions = record_captions(record)
    if captions is None:
        return None
    parts = [captions.get(key) for key in keys]
    if any(not isinstance(p, str) or not p.strip() for p in parts):
        return None
    return " ".join(p.strip() for p in parts)
