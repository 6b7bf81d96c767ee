"""A synthetic nuScenes whose content is known: `NuScenes('v1.0-mini', root)` loads it.

All 13 tables, a map, six cameras with realistic calibration at 1600x900, keyframes at 2 Hz with
optional sweeps between them, ego poses, prev/next chains and real-format tokens and file names;
plus a NuInteract-format caption folder, the ground-truth facts of every keyframe, and questions about
every keyframe with their answers (qa.jsonl in training phrasings, qa_heldout.jsonl in held-out ones; see
scene_questions). Deterministic for a seed.

Two worlds (`cameras`). "front-back" (the default): CAM_FRONT and CAM_BACK show procedurally drawn scenes
(see scene_facts / scene_drawing), each keyframe drawn on its own; the other cameras an empty road side;
sweeps repeat their keyframe. "all": every camera shows content and a scene's keyframes and sweeps are the
frames of one continuous drive (see drive), whose facts add motion and the side views.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from pyquaternion import Quaternion

from clip_vlm_core.atomic import staged_dir
from clip_vlm_core.data.drive import FRONT, Drive, Moment
from clip_vlm_core.data.scene_drawing import (
    HEIGHT,
    WIDTH,
    draw_back,
    draw_drive_view,
    draw_front,
    draw_side_view,
    encode_jpeg,
    side_view_jpeg,
)
from clip_vlm_core.data.scene_facts import (
    FACT_KEYS,
    SIDE_VIEWS,
    SceneFacts,
    caption_corpus,
    describe,
    describe_back,
    describe_front,
    describe_side,
    parse_facts,
)
from clip_vlm_core.data.scene_questions import ask_about
from clip_vlm_core.errors import UserError
from clip_vlm_core.output_guard import guard_output
from clip_vlm_core.progress import progress_bar

__all__ = ["FACT_KEYS", "SceneFacts", "SyntheticDataset", "caption_corpus", "describe", "describe_back",
           "describe_front", "generate_synthetic_nuscenes", "parse_facts", "SCENE_NAMES"]

VERSION = "v1.0-mini"
# Names from the devkit's mini splits, alternating so that any two scenes give a train and a val part:
# mini_val = scene-0103, scene-0916; the rest are mini_train.
SCENE_NAMES = ("scene-0061", "scene-0103", "scene-0553", "scene-0916", "scene-0655", "scene-0757",
               "scene-0796", "scene-1077", "scene-1094", "scene-1100")
# Every camera of config.NUSCENES_CAMERAS as nuScenes mounts it: (yaw of the optical axis in degrees, mount
# translation in metres, firing offset after the keyframe in µs); this order is the synthetic tables' order.
CAMERA_MOUNTS = {
    "CAM_FRONT": (0.0, (1.70, 0.02, 1.51), 12_000),
    "CAM_FRONT_RIGHT": (-55.0, (1.55, -0.49, 1.49), 20_000),
    "CAM_BACK_RIGHT": (-110.0, (1.04, -0.48, 1.56), 28_000),
    "CAM_BACK": (180.0, (0.03, 0.00, 1.58), 37_000),
    "CAM_BACK_LEFT": (110.0, (1.05, 0.48, 1.56), 45_000),
    "CAM_FRONT_LEFT": (55.0, (1.52, 0.49, 1.51), 4_000),
}
INTRINSIC = [[1266.42, 0.0, 816.27], [0.0, 1266.42, 491.51], [0.0, 0.0, 1.0]]
KEYFRAME_US = 500_000  # 2 Hz
QA_FILE, QA_HELD_OUT_FILE = "qa.jsonl", "qa_heldout.jsonl"  # `clip-vlm data build --qa` reads them
# Questions of each type per keyframe in qa.jsonl, each in another phrasing: a keyframe asked one way only
# lets a small model tie the answer to the sentence; asked several ways, to the words that matter. The
# held-out file asks one question of each type per keyframe.
TRAINING_QUESTIONS_PER_TYPE = 6
LOG_NAME = "n015-2018-07-24-11-22-45+0800"
START_US = 1532402927612460
SPEED_MPS = 8.0
# Optical frame (z forward, x right, y down) into the vehicle frame (x forward, y left, z up).
_OPTICAL_TO_VEHICLE = Quaternion(0.5, -0.5, 0.5, -0.5)
WRITER = "clip-vlm data synth"
WORLDS = ("front-back", "all")  # `--cameras`: which cameras show content (see the module's text)
DRIVE_SWEEPS = 5  # sweeps between keyframes by default in the drive world: ~12 Hz, as nuScenes' cameras


@dataclass
class SyntheticDataset:
    root: Path
    captions: Path
    scene_names: list[str]
    sample_tokens: list[str] = field(default_factory=list)
    facts: dict[str, dict[str, str]] = field(default_factory=dict)


class _Tokens:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"tokens-{seed}")

    def __call__(self) -> str:
        return f"{self._rng.getrandbits(128):032x}"


def generate_synthetic_nuscenes(
    out: str | Path,
    scenes: int = 2,
    samples_per_scene: int = 8,
    sweeps: int | None = 0,
    seed: int = 0,
    captions_out: str | Path | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    cameras: str = "front-back",
) -> SyntheticDataset:
    """Write the tree to `out` (captions to `captions_out`, default `out/nuinteract`), atomically.
    `cameras`: "front-back" or "all" (the six-camera drive); `sweeps` None: 0, or DRIVE_SWEEPS for "all"."""
    out = Path(out)
    if cameras not in WORLDS:
        raise UserError(f"--cameras must be one of {', '.join(WORLDS)}, not {cameras!r}")
    if sweeps is None:
        sweeps = DRIVE_SWEEPS if cameras == "all" else 0
    if not 1 <= scenes <= len(SCENE_NAMES):
        raise UserError(f"--scenes must be between 1 and {len(SCENE_NAMES)} (the devkit's mini scene names)")
    if samples_per_scene < 1 or sweeps < 0:
        raise UserError("--samples-per-scene must be at least 1 and --sweeps at least 0")
    captions = Path(captions_out).absolute() if captions_out is not None else out.absolute() / "nuinteract"
    inside = captions.is_relative_to(out.absolute())
    if captions == out.absolute() or (not inside and out.absolute().is_relative_to(captions)):
        raise UserError(f"--captions-out {captions} is or holds --out {out}: choose a captions folder beside or inside it")
    guard_output(out, WRITER, overwrite=overwrite)
    if not inside:
        guard_output(captions, WRITER, overwrite=overwrite, flag="--captions-out")
    with staged_dir(out, WRITER) as tmp:
        result = _write_tree(tmp, scenes, samples_per_scene, sweeps, seed, show_progress, cameras == "all")
        if inside and captions != out.absolute() / "nuinteract":
            (tmp / captions.relative_to(out.absolute())).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "nuinteract").rename(tmp / captions.relative_to(out.absolute()))
        if not inside:  # written beside the tree, through a staging folder of its own
            with staged_dir(captions, WRITER) as staged_captions:
                for file in (tmp / "nuinteract").iterdir():
                    shutil.move(str(file), staged_captions / file.name)
            (tmp / "nuinteract").rmdir()
    result.root, result.captions = out, captions
    return result


def _write_tree(root: Path, scenes: int, samples: int, sweeps: int, seed: int, show_progress: bool,
                drive: bool) -> SyntheticDataset:
    token = _Tokens(seed)
    rng = random.Random(f"scenes-{seed}")
    # Apart, so the scenes of a seed stay as they were, and the held-out questions whatever the training ones.
    questions_rng = {QA_FILE: random.Random(f"questions-{seed}"), QA_HELD_OUT_FILE: random.Random(f"held-out-{seed}")}
    qa_lines: dict[str, list[str]] = {QA_FILE: [], QA_HELD_OUT_FILE: []}
    tables: dict[str, list[dict]] = {name: [] for name in (
        "attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
        "sample_annotation", "sample_data", "scene", "sensor", "visibility")}
    tables["category"] = [{"token": token(), "name": n, "description": d} for n, d in (
        ("vehicle.car", "Vehicle designed primarily for personal use."),
        ("vehicle.truck", "Vehicles primarily designed to haul cargo."),
        ("vehicle.bus.rigid", "Rigid bus."))]
    tables["attribute"] = [{"token": token(), "name": "vehicle.moving", "description": "Vehicle is moving."}]
    tables["visibility"] = [{"token": str(i + 1), "level": lvl, "description": f"visibility {lvl}"}
                            for i, lvl in enumerate(("v0-40", "v40-60", "v60-80", "v80-100"))]
    sensors = {cam: token() for cam in CAMERA_MOUNTS}
    tables["sensor"] = [{"token": t, "channel": cam, "modality": "camera"} for cam, t in sensors.items()]
    map_token = token()
    (root / "maps").mkdir(parents=True)
    map_file = f"maps/{map_token}.png"
    Image.new("L", (64, 64), 255).save(root / map_file)
    dataset = SyntheticDataset(root, root / "nuinteract", [])
    log_tokens = []
    for cam in CAMERA_MOUNTS:
        (root / "samples" / cam).mkdir(parents=True)
        if sweeps:
            (root / "sweeps" / cam).mkdir(parents=True)
    (root / "nuinteract").mkdir()
    total = scenes * samples
    progress = progress_bar(total=total, desc="drawing synthetic keyframes", unit="sample", enabled=show_progress)
    for s in range(scenes):
        name = SCENE_NAMES[s]
        log_token = token()
        log_tokens.append(log_token)
        tables["log"].append({"token": log_token, "logfile": LOG_NAME, "vehicle": "n015",
                              "date_captured": "2018-07-24", "location": "singapore-onenorth"})
        calib = {cam: _calibration(token(), sensors[cam], cam) for cam in CAMERA_MOUNTS}
        tables["calibrated_sensor"].extend(calib.values())
        scene_token = token()
        t0 = START_US + s * 60_000_000
        sample_tokens = [token() for _ in range(samples)]
        records = []
        last_sd: dict[str, dict | None] = dict.fromkeys(CAMERA_MOUNTS)
        # Its own generator per scene: the two-camera world's draws stay as they were.
        world = Drive(random.Random(f"drive-{seed}-{s}"), samples * KEYFRAME_US / 1e6) if drive else None
        for k, sample_token in enumerate(sample_tokens):
            t = t0 + k * KEYFRAME_US
            tables["sample"].append({"token": sample_token, "timestamp": t, "scene_token": scene_token,
                                     "prev": sample_tokens[k - 1] if k else "",
                                     "next": sample_tokens[k + 1] if k + 1 < samples else ""})
            if world is None:
                facts = SceneFacts.draw(rng)
                frames = {"CAM_FRONT": encode_jpeg(draw_front(facts, rng)), "CAM_BACK": encode_jpeg(draw_back(facts, rng))}
            else:
                facts = world.facts((t - t0) / 1e6)
            cam_paths = {}
            for cam, (_, _, offset) in CAMERA_MOUNTS.items():
                if world is None:
                    jpeg = frames.get(cam) or side_view_jpeg(facts.time)
                else:  # every camera at the instant it fires
                    jpeg = encode_jpeg(camera_frame(world.moment((t + offset - t0) / 1e6), cam))
                sd = _sample_data(tables, token, root, cam, calib[cam]["token"], sample_token, t + offset, True, jpeg)
                _link(last_sd, cam, sd)
                cam_paths[cam] = sd["filename"]
                if sweeps and k + 1 < samples:
                    for j in range(1, sweeps + 1):  # frames between this keyframe and the next
                        ts = t + offset + j * KEYFRAME_US // (sweeps + 1)
                        if world is not None:
                            jpeg = encode_jpeg(camera_frame(world.moment((ts - t0) / 1e6), cam))
                        swd = _sample_data(tables, token, root, cam, calib[cam]["token"], sample_token, ts, False, jpeg)
                        _link(last_sd, cam, swd)
            dataset.sample_tokens.append(sample_token)
            dataset.facts[sample_token] = facts.as_dict()
            for qa_file, held_out, per_type in ((QA_FILE, False, TRAINING_QUESTIONS_PER_TYPE), (QA_HELD_OUT_FILE, True, 1)):
                qa_lines[qa_file] += [json.dumps({"token": sample_token, **q.as_dict()})
                                      for q in ask_about(facts, questions_rng[qa_file], held_out, per_type)]
            records.append(_nuinteract_record(sample_token, sample_tokens, k, scene_token, cam_paths, facts))
            progress.update(1)
        tables["scene"].append({"token": scene_token, "log_token": log_token, "nbr_samples": samples,
                                "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
                                "name": name, "description": f"Synthetic drive {s} (seed {seed})"})
        (root / "nuinteract" / f"{name}.json").write_text(json.dumps(records, indent=1))
        dataset.scene_names.append(name)
    progress.close()
    tables["map"] = [{"token": map_token, "log_tokens": log_tokens, "category": "semantic_prior",
                      "filename": map_file}]
    (root / VERSION).mkdir()
    for name, rows in tables.items():
        (root / VERSION / f"{name}.json").write_text(json.dumps(rows, indent=0))
    (root / "synthetic_facts.json").write_text(json.dumps(dataset.facts, indent=1))
    for qa_file, lines in qa_lines.items():
        (root / qa_file).write_text("\n".join(lines) + "\n")
    return dataset


def camera_frame(moment: Moment, camera: str) -> Image.Image:
    """What `camera` sees of the drive at `moment`."""
    if camera in SIDE_VIEWS:
        vehicle, along = moment.place(SIDE_VIEWS[camera])
        return draw_side_view(moment.time, vehicle and vehicle[:2], along, camera.endswith("_LEFT"))
    slot = FRONT if camera == "CAM_FRONT" else "back"
    vehicle, gap = moment.place(slot)
    return draw_drive_view(moment.time, vehicle, gap, moment.light if slot == FRONT else None)


def _calibration(token: str, sensor_token: str, cam: str) -> dict:
    yaw, translation, _ = CAMERA_MOUNTS[cam]
    rotation = Quaternion(axis=[0, 0, 1], degrees=yaw) * _OPTICAL_TO_VEHICLE
    return {"token": token, "sensor_token": sensor_token, "translation": list(translation),
            "rotation": [float(x) for x in rotation.elements], "camera_intrinsic": INTRINSIC}


def _sample_data(tables, token, root: Path, cam: str, calib_token: str, sample_token: str, t: int,
                 key: bool, jpeg: bytes) -> dict:
    folder = "samples" if key else "sweeps"
    filename = f"{folder}/{cam}/{LOG_NAME}__{cam}__{t}.jpg"
    (root / filename).write_bytes(jpeg)
    x = SPEED_MPS * (t - START_US) / 1e6
    pose = {"token": token(), "timestamp": t, "translation": [x % 1000.0, 600.0 + math.floor(x / 1000.0), 0.0],
            "rotation": [1.0, 0.0, 0.0, 0.0]}
    tables["ego_pose"].append(pose)
    record = {"token": token(), "sample_token": sample_token, "ego_pose_token": pose["token"],
              "calibrated_sensor_token": calib_token, "timestamp": t, "fileformat": "jpg", "is_key_frame": key,
              "height": HEIGHT, "width": WIDTH, "filename": filename, "prev": "", "next": ""}
    tables["sample_data"].append(record)
    return record


def _link(last: dict, cam: str, record: dict) -> None:
    if last[cam] is not None:
        last[cam]["next"] = record["token"]
        record["prev"] = last[cam]["token"]
    last[cam] = record


def _nuinteract_record(token: str, tokens: list[str], k: int, scene_token: str, cam_paths: dict,
                       facts: SceneFacts) -> dict:
    side = "The road side is empty."
    caption = {cam: describe_side(facts, view) if facts.is_drive else side for cam, view in SIDE_VIEWS.items()}
    caption.update(CAM_FRONT=describe_front(facts), CAM_BACK=describe_back(facts),
                   FRONT=describe_front(facts), BACK=describe_back(facts))
    caption = {cam: caption[cam] for cam in (*CAMERA_MOUNTS, "FRONT", "BACK")}  # the order it always had
    return {"token": token, "prev": tokens[k - 1] if k else "", "next": tokens[k + 1] if k + 1 < len(tokens) else "",
            "frame_idx": k, "scene_token": scene_token, "cam_path": cam_paths,
            "gpt_prompt": "Describe the scene around the ego vehicle, camera by camera.",
            "gemini_caption": caption}
