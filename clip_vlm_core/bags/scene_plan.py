"""What goes into one scene's bag: the camera frames, mounts and captions, read from nuScenes.

Planning walks the dataset's tables only (no image is opened), so every user error (unknown scene or
camera, missing image file, an image path leading out of the dataroot, captions of another dataset) is
found before a single byte of the bag is written. Captions come from the one NuInteract reader
(clip_vlm_core.data.nuinteract), so a keyframe's /scene_caption_gt is the caption `data build` trains on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip_vlm_core.config import NUSCENES_CAMERAS
from clip_vlm_core.data.nuinteract import caption_rule, keyframe_caption
from clip_vlm_core.errors import UserError
from clip_vlm_core.paths import data_file


@dataclass(frozen=True)
class CameraFrame:
    """One camera image and the ego pose at its exposure; stamp in ns since the epoch."""

    camera: str
    stamp_ns: int
    path: Path
    width: int
    height: int
    ego_translation: tuple[float, float, float]
    ego_rotation: tuple[float, float, float, float]  # w, x, y, z as nuScenes stores it
    is_key_frame: bool


@dataclass(frozen=True)
class CameraMount:
    """Where a camera sits on the car (base_link) and its pinhole intrinsics."""

    camera: str
    translation: tuple[float, float, float]
    rotation: tuple[float, float, float, float]
    intrinsic: tuple[tuple[float, float, float], ...]


@dataclass
class ScenePlan:
    scene_name: str
    frames: list[CameraFrame]  # in time order
    mounts: list[CameraMount]
    captions: list[tuple[int, str]] = field(default_factory=list)  # (stamp ns, joint caption)
    uncaptioned: list[str] = field(default_factory=list)  # keyframe sample tokens without a caption

    @property
    def start_ns(self) -> int:
        stamps = [f.stamp_ns for f in self.frames] + [s for s, _ in self.captions]
        return min(stamps)

    @property
    def image_bytes(self) -> int:
        return sum(f.path.stat().st_size for f in self.frames)


def load_nuscenes(dataroot: str | Path, version: str) -> Any:
    """Open a nuScenes tree, turning the devkit's asserts about missing tables into a UserError."""
    from nuscenes.nuscenes import NuScenes

    dataroot = Path(dataroot)
    if not dataroot.is_dir():
        raise UserError(f"nuScenes dataroot {dataroot} is not a folder")
    if not (dataroot / version).is_dir():
        raise UserError(f"nuScenes version {version!r} is not in {dataroot} (no folder {dataroot / version})")
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (AssertionError, OSError, ValueError, KeyError) as exc:
        raise UserError(f"nuScenes {version} in {dataroot} cannot be loaded ({exc})") from None


def check_cameras(cameras: tuple[str, ...]) -> None:
    unknown = [c for c in cameras if c not in NUSCENES_CAMERAS]
    if unknown:
        raise UserError(f"unknown camera {unknown[0]!r}; choose from {', '.join(NUSCENES_CAMERAS)}")
    if not cameras:
        raise UserError("no camera chosen; name at least one of " + ", ".join(NUSCENES_CAMERAS))


def find_scene(nusc: Any, scene_name: str) -> dict:
    for scene in nusc.scene:
        if scene["name"] == scene_name:
            return scene
    known = ", ".join(s["name"] for s in nusc.scene[:5])
    raise UserError(f"scene {scene_name!r} is not in nuScenes {nusc.version} (scenes include {known})")


def plan_scene(
    nusc: Any,
    scene_name: str,
    cameras: tuple[str, ...],
    sweeps: bool = False,
    captions: Mapping[str, dict] | None = None,
    caption_keys: Sequence[str] | None = None,
    captions_source: str | Path = "the given records",
) -> ScenePlan:
    """What goes into the bag; `captions` are NuInteract records by sample token (load_nuinteract), each
    keyframe's caption as `data build`'s target over the same cameras (nuinteract.caption_rule)."""
    check_cameras(cameras)
    scene = find_scene(nusc, scene_name)
    samples = _scene_samples(nusc, scene)
    frames: list[CameraFrame] = []
    mounts: list[CameraMount] = []
    for camera in cameras:
        if camera not in samples[0]["data"]:
            raise UserError(f"scene {scene_name} has no {camera} images")
        first = nusc.get("sample_data", samples[0]["data"][camera])
        last_token = samples[-1]["data"][camera]
        frames.extend(_camera_frames(nusc, first, last_token, sweeps))
        mounts.append(_mount(nusc, camera, first))
    frames.sort(key=lambda f: (f.stamp_ns, f.camera))
    plan = ScenePlan(scene_name, frames, mounts)
    if captions is not None:
        _add_keyframe_captions(plan, nusc, samples, captions, *caption_rule(cameras, caption_keys), captions_source)
    return plan


def _scene_samples(nusc: Any, scene: dict) -> list[dict]:
    samples, token = [], scene["first_sample_token"]
    while token:
        sample = nusc.get("sample", token)
        samples.append(sample)
        token = sample["next"]
    return samples


def _camera_frames(nusc: Any, first: dict, last_token: str, sweeps: bool) -> list[CameraFrame]:
    """Keyframes, or with sweeps every frame on the next chain from the first keyframe to the last."""
    frames, record = [], first
    while True:
        if sweeps or record["is_key_frame"]:
            frames.append(_frame(nusc, record))
        if record["token"] == last_token or not record["next"]:
            return frames
        record = nusc.get("sample_data", record["next"])


def _frame(nusc: Any, record: dict) -> CameraFrame:
    pose = nusc.get("ego_pose", record["ego_pose_token"])
    channel = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
    camera = nusc.get("sensor", channel["sensor_token"])["channel"]
    return CameraFrame(
        camera=camera,
        stamp_ns=int(record["timestamp"]) * 1000,
        # The file name comes from a downloaded table: it must stay inside the dataroot and be a file.
        path=data_file(nusc.dataroot, record["filename"], f"sample_data {record['token']} filename"),
        width=int(record.get("width") or 0),
        height=int(record.get("height") or 0),
        ego_translation=tuple(pose["translation"]),
        ego_rotation=tuple(pose["rotation"]),
        is_key_frame=bool(record["is_key_frame"]),
    )


def _mount(nusc: Any, camera: str, record: dict) -> CameraMount:
    sensor = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
    intrinsic = sensor.get("camera_intrinsic") or []
    if len(intrinsic) != 3:
        raise UserError(f"calibrated sensor of {camera} has no 3x3 camera_intrinsic")
    return CameraMount(
        camera=camera,
        translation=tuple(sensor["translation"]),
        rotation=tuple(sensor["rotation"]),
        intrinsic=tuple(tuple(float(v) for v in row) for row in intrinsic),
    )


def _add_keyframe_captions(plan: ScenePlan, nusc: Any, samples: list[dict], captions: Mapping[str, dict],
                           keys: Sequence[str], named: bool, source: str | Path) -> None:
    """Each keyframe's target caption at its front-camera stamp; keyframes without one are listed, not fatal."""
    if not any(sample["token"] in captions for sample in samples):
        raise UserError(f"NuInteract captions in {source} have no record for any of the {len(samples)} keyframes "
                        f"of scene {plan.scene_name}; are they the captions of this nuScenes version?")
    for sample in samples:
        text = keyframe_caption(captions, sample["token"], keys, named)
        if text is None:
            plan.uncaptioned.append(sample["token"])
            continue
        # The caption describes the keyframe, so it carries that keyframe's front-camera time.
        front = sample["data"].get("CAM_FRONT")
        stamp_us = nusc.get("sample_data", front)["timestamp"] if front else sample["timestamp"]
        plan.captions.append((int(stamp_us) * 1000, text))
