"""nuScenes scene -> rosbag2 (metadata version 8, so Humble plays it), one bag folder per scene.

A bag is written into a hidden staging folder beside the target (clip_vlm_core.atomic) and renamed
into place only when complete, so an error, Ctrl-C or kill -9 never leaves a bag that looks whole but
is not, and the next conversion removes what a killed one left. Every image passes the one image intake
(clip_vlm_core.images): a regular file within the byte limit whose header size is within the pixel
limit, so --raw never decodes a decompression bomb.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from clip_vlm_core.atomic import replace_dir, staging_area
from clip_vlm_core.bags import messages as m
from clip_vlm_core.bags.scene_plan import CameraFrame, ScenePlan, check_cameras, plan_scene
from clip_vlm_core.config import DEFAULT_VIEWS
from clip_vlm_core.data.nuinteract import caption_rule, check_caption_keys, load_nuinteract
from clip_vlm_core.errors import UserError
from clip_vlm_core.images import check_encoded, decode_image, read_image_file
from clip_vlm_core.output_guard import guard_output
from clip_vlm_core.progress import progress_bar

log = logging.getLogger(__name__)

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
CAPTION_TOPIC = "/scene_caption_gt"
WRITER = "clip-vlm bag convert"


@dataclass
class BagConvertOptions:
    """How to turn a scene into a bag; the defaults give a small keyframe-only MCAP bag."""

    cameras: tuple[str, ...] = DEFAULT_VIEWS
    sweeps: bool = False  # every camera frame (~12 Hz) instead of keyframes only (2 Hz)
    raw: bool = False  # decoded rgb8 Image instead of the dataset's JPEG bytes
    storage: str = "mcap"
    captions: Path | None = None  # NuInteract folder of .json files (any names): adds /scene_caption_gt
    # Joined into the caption, as in `data build`; None: its rule (nuinteract.caption_rule): FRONT BACK for up
    # to two cameras, each camera's own caption, named ("Front: ... Front left: ..."), for more.
    caption_keys: Sequence[str] | None = None
    overwrite: bool = False
    progress: bool = True
    caption_records: dict[str, dict] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        self.caption_keys = None if self.caption_keys is None else tuple(self.caption_keys)
        check_cameras(self.cameras)
        if self.storage not in STORAGES:
            raise UserError(f"unknown bag storage {self.storage!r}; choose mcap or sqlite3")
        if self.captions is not None:  # read once, for every scene converted with these options
            self.captions = Path(self.captions)
            self.caption_records = load_nuinteract(self.captions)
            check_caption_keys(self.caption_records, self.keys_read, self.captions)

    @property
    def keys_read(self) -> list[str]:
        """The caption keys each keyframe's /scene_caption_gt reads (nuinteract.caption_rule)."""
        return caption_rule(self.cameras, self.caption_keys)[0]


def image_topic(camera: str, raw: bool) -> str:
    return f"/{camera}/image_raw" if raw else f"/{camera}/image_raw/compressed"


@dataclass(frozen=True)
class ConvertedScene:
    """One scene written: where, how long it took, and its keyframes with and without a caption."""

    path: Path
    seconds: float
    captioned: int  # keyframes given a /scene_caption_gt message
    uncaptioned: int  # keyframes the captions folder has no caption for (none without --captions)


def convert_scenes(nusc: Any, scene_names: Sequence[str], out_dir: str | Path,
                   options: BagConvertOptions | None = None) -> Iterator[ConvertedScene]:
    """Write `out_dir/<scene>` for each scene, yielding each as it is written. Every scene's target and
    plan are checked first (an existing bag is refused unless overwrite, an input never replaced, a
    missing image or camera named), so a mistake in the last scene stops the run before the first bag."""
    options = options or BagConvertOptions()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder for bags: choose another --out")
    inputs = {"nuScenes dataroot": nusc.dataroot, "NuInteract captions folder": options.captions}
    names = list(dict.fromkeys(scene_names))
    for name in names:
        guard_output(out_dir / name, WRITER, inputs, overwrite=options.overwrite, flag="bag", reuse_own=False)
    plans = [plan_scene(nusc, name, options.cameras, options.sweeps, options.caption_records, options.caption_keys,
                        options.captions or "") for name in names]
    for plan in plans:
        start = time.perf_counter()
        path = _write_scene(plan, out_dir / plan.scene_name, options)
        yield ConvertedScene(path, time.perf_counter() - start, len(plan.captions), len(plan.uncaptioned))


def convert_scene(nusc: Any, scene_name: str, out_dir: str | Path, options: BagConvertOptions | None = None) -> Path:
    """Write `out_dir/<scene_name>` and return its path; refuses an existing bag unless overwrite."""
    return next(convert_scenes(nusc, [scene_name], out_dir, options)).path


def _write_scene(plan: ScenePlan, target: Path, options: BagConvertOptions) -> Path:
    """A planned scene written to `target` through a staging folder."""
    with staging_area(target) as area:
        # rosbags names the storage file after the bag folder, so the bag gets its final name inside staging.
        _write_bag(plan, area / target.name, options)
        replace_dir(area / target.name, target)
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
    frames = progress_bar(plan.frames, desc=plan.scene_name, unit="frame", enabled=options.progress)
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
    name = f"image file {frame.path}"
    data = read_image_file(frame.path, name)  # a regular file within the byte limit
    width, height = check_encoded(data, name)  # its header within the pixel limit, nothing decoded yet
    if not raw:
        return m.compressed_image(frame.stamp_ns, frame.camera, data), width, height
    rgb = np.asarray(decode_image(data, name))
    return m.raw_image(frame.stamp_ns, frame.camera, rgb), rgb.shape[1], rgb.shape[0]
