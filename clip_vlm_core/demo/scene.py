"""The demo's scene (steps 1 and 2 of clip_vlm_core.demo): a synthetic nuScenes scene whose content is
known, and its rosbag2 bag, which the demo never writes over a bag it did not write itself."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from clip_vlm_core.config import DEFAULT_VIEWS
from clip_vlm_core.demo.report import Keyframe
from clip_vlm_core.errors import UserError

BAG_RECORD = "bag.json"  # in the demo's work folder: which bag the demo wrote last, and its metadata's digest


@dataclass
class Scene:
    root: Path  # the nuScenes tree
    name: str  # scene-0061
    keyframes: dict[int, Keyframe]  # by stamp (ns), truth from the NuInteract captions
    questions: dict[str, list[dict]]  # sample token -> held-out question-answer pairs


def synthesise(out: Path, samples: int, seed: int, views: tuple[str, ...] = DEFAULT_VIEWS) -> Scene:
    """One scene of `samples` keyframes (seed `seed`) in out/nuscenes, with its truth and held-out questions.
    Two views: the two-camera world; more: the six-camera drive (`data synth --cameras all`), whose truth
    names each view's caption as the bag's /scene_caption_gt does (nuinteract.caption_rule)."""
    from nuscenes.nuscenes import NuScenes

    from clip_vlm_core.data.nuinteract import caption_rule, keyframe_caption, load_nuinteract
    from clip_vlm_core.data.synthetic import QA_HELD_OUT_FILE, generate_synthetic_nuscenes

    surround = len(views) > 2
    data = generate_synthetic_nuscenes(out / "nuscenes", scenes=1, samples_per_scene=samples, seed=seed,
                                       overwrite=True, show_progress=False, cameras="all" if surround else "front-back",
                                       sweeps=0)
    records = load_nuinteract(data.captions)  # the one reader, as the bag's /scene_caption_gt is made
    keys, named = caption_rule(views)
    nusc = NuScenes("v1.0-mini", str(data.root), verbose=False)
    keyframes = {}
    for sample in nusc.sample:
        stamp_ns = nusc.get("sample_data", sample["data"]["CAM_FRONT"])["timestamp"] * 1000
        images = {v: data.root / nusc.get("sample_data", sample["data"][v])["filename"] for v in views}
        truth = keyframe_caption(records, sample["token"], keys, named)
        keyframes[stamp_ns] = Keyframe(stamp_ns, images, truth, sample["token"])
    questions: dict[str, list[dict]] = {}
    for line in (data.root / QA_HELD_OUT_FILE).read_text().splitlines():
        pair = json.loads(line)
        questions.setdefault(pair["token"], []).append(pair)
    return Scene(data.root, data.scene_names[0], keyframes, questions)


def convert(scene: Scene, bags: Path, out: Path) -> Path:
    """The scene as bags/<scene> (with its /scene_caption_gt); an existing bag there is replaced only when
    an earlier demo wrote it (its digest in out/bag.json)."""
    from clip_vlm_core.atomic import write_text
    from clip_vlm_core.bags import BagConvertOptions, convert_scene, load_nuscenes

    target = bags / scene.name
    record = out / BAG_RECORD
    empty_folder = target.is_dir() and not any(target.iterdir())  # nothing in it to lose
    if target.exists() and not empty_folder and _fingerprint(target) != _recorded(record, target):
        # The synthetic scenes borrow nuScenes' scene names: bags/scene-0061 may be a real scene's bag.
        raise UserError(f"{target} exists and was not written by an earlier demo; move it, or give the demo "
                        f"another folder with --bags DIR")
    views = tuple(next(iter(scene.keyframes.values())).images)
    options = BagConvertOptions(cameras=views, captions=scene.root / "nuinteract", overwrite=True, progress=False)
    bag = convert_scene(load_nuscenes(scene.root, "v1.0-mini"), scene.name, bags, options)
    write_text(record, json.dumps({str(bag.resolve()): _fingerprint(bag)}))
    return bag


def _fingerprint(bag: Path) -> str | None:
    try:
        return hashlib.sha256((bag / "metadata.yaml").read_bytes()).hexdigest()
    except OSError:
        return None


def _recorded(record: Path, bag: Path) -> str | None:
    try:
        return json.loads(record.read_text()).get(str(bag.resolve()))
    except (OSError, ValueError, AttributeError):
        return None
