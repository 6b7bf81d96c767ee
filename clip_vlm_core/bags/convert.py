"""nuScenes scene -> rosbag2 (metadata version 8, so Humble plays it), one bag folder per scene.

A bag is written into a hidden folder beside the target and renamed into place only when complete,
so an error or Ctrl-C never leaves a bag that looks whole but is not.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from tqdm import tqdm

from clip_vlm_core.bags import messages as m
from clip_vlm_core.bags.scene_plan import DEFAULT_CAMERAS, CameraFrame, ScenePlan, check_cameras, plan_scene
from clip_vlm_core.errors import UserError

log = logging.getLogger(__name__)

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
CAPTION_TOPIC = "/scene_caption_gt"


@dataclass
class BagConvertOptions:
    """How to turn a scene into a bag; the defaults give a small keyframe-only MCAP bag."""

    cameras: tuple[str, ...] = DEFAULT_CAMERAS
    sweeps: bool = False  # every camera frame (~12 Hz) instead of keyframes only (2 Hz)
    raw: bool = False  # decoded rgb8 Image instead of the dataset's JPEG bytes
    storage: str = "mcap"
    captions: Path | None = None  # NuInteract folder with <scene>.json files
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        check_cameras(self.cameras)
        if self.storage not in STORAGES:
            raise UserError(f"unknown bag storage {self.storage!r}; choose mcap or sqlite3")
        if self.captions is not None:
            self.captions = Path(self.captions)
            if not self.captions.is_dir():
                raise UserError(f"NuInteract captions folder {self.captions} does not exist")


def image_topic(camera: str, raw: bool) -> str:
    return f"/{camera}/image_raw" if raw else f"/{camera}/image_raw/compressed"


def convert_scene(nusc: Any, scene_name: str, out_dir: str | Path, options: BagConvertOptions | None = None) -> Path:
    """Write `out_dir/<scene_name>` and return its path; refuses an existing bag unless overwrite."""
    options = options or BagConvertOptions()
    target = Path(out_dir) / scene_name
    if target.exists() and not options.overwrite:
        raise UserError(f"bag {target} already exists; pass --overwrite to replace it")
    plan = plan_scene(nusc, scene_name, options.cameras, options.sweeps, options.captions)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{scene_name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        # rosbags names the storage file after the bag folder, so the bag gets its final name inside staging.
        _write_bag(plan, staging / scene_name, options)
        if target.exists():
            shutil.rmtree(target)
        (staging / scene_name).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.debug("wrote %s (%d frames)", target, len(plan.frames))
    return target


def _write_bag(plan: ScenePlan, path: Path, options: BagConvertOptions) -> None:
    writer = Writer(path, version=8, storage_plugin=STORAGES[options.storage])
    writer.open()
    try:
        _write_messages(writer, plan, options)
    except BaseException:
        writer.abort()
        raise
    writer.close()


def _write_messages(writer: Writer, plan: ScenePlan, options: BagConvertOptions) -> None:
    def connect(topic: str, msgtype: str, qos: Any = m.STREAM_QOS) -> Any:
        return writer.add_connection(topic, msgtype, typestore=m.TYPESTORE, offered_qos_profiles=[qos])

    image_type = m.RAW_IMAGE if options.raw else m.COMPRESSED_IMAGE
    images = {c: connect(image_topic(c, options.raw), image_type) for c in options.cameras}
    infos = {c: connect(f"/{c}/camera_info", m.CAMERA_INFO) for c in options.cameras}
    tf = connect("/tf", m.TF_MESSAGE)
    tf_static = connect("/tf_static", m.TF_MESSAGE, m.LATCHED_QOS)
    captions = connect(CAPTION_TOPIC, m.STRING) if plan.captions else None
    intrinsics = {mount.camera: mount.intrinsic for mount in plan.mounts}

    start = plan.start_ns
    mounts = [m.transform(start, m.BASE_FRAME, c.camera, c.translation, c.rotation) for c in plan.mounts]
    writer.write(tf_static, start, m.tf_message(mounts))

    pending_captions = list(plan.captions)
    frames = tqdm(plan.frames, desc=plan.scene_name, unit="frame", disable=None if options.progress else True)
    for frame in frames:
        # A caption is written after the images that share its stamp, so a listener has them first.
        while pending_captions and pending_captions[0][0] < frame.stamp_ns:
            stamp, text = pending_captions.pop(0)
            writer.write(captions, stamp, m.string(text))
        stamp, cam = frame.stamp_ns, frame.camera
        pose = m.transform(stamp, m.MAP_FRAME, m.BASE_FRAME, frame.ego_translation, frame.ego_rotation)
        writer.write(tf, stamp, m.tf_message([pose]))
        image, width, height = _image_message(frame, options.raw)
        writer.write(infos[cam], stamp, m.camera_info(stamp, cam, intrinsics[cam], width, height))
        writer.write(images[cam], stamp, image)
    for stamp, text in pending_captions:
        writer.write(captions, stamp, m.string(text))


def _image_message(frame: CameraFrame, raw: bool) -> tuple[memoryview, int, int]:
    try:
        jpeg = frame.path.read_bytes()
    except OSError as exc:
        raise UserError(f"image file {frame.path} cannot be read ({exc.strerror})") from None
    if not raw and frame.width and frame.height:
        return m.compressed_image(frame.stamp_ns, frame.camera, jpeg), frame.width, frame.height
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            if not raw:  # the size is in the header; no need to decode
                return m.compressed_image(frame.stamp_ns, frame.camera, jpeg), image.width, image.height
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"image file {frame.path} cannot be decoded ({exc})") from None
    return m.raw_image(frame.stamp_ns, frame.camera, rgb), rgb.shape[1], rgb.shape[0]
