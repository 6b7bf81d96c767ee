"""`--write-bags DIR`: each input bag copied with its labels in it, so ROS tools show them in place.

DIR/NAME (the input's name, clip_vlm_core.label.inputs) is a rosbag2 bag, metadata version 8 (Humble
reads it), in the input's storage (MCAP or sqlite3), holding:
- every message of the input, byte for byte at its log time, each topic with its recorded type, QoS
  (so /tf_static stays transient-local) and message definition: types not installed here (tf2_msgs,
  test_msgs, ...) are copied as raw CDR bytes with the definitions the input recorded;
- `/scene_caption` (std_msgs/String, offered transient-local depth 1 as the node's latched publisher)
  and `/scene_caption/marker` (visualization_msgs/Marker, the node's text marker: stamped with the
  pair's stamp, in its frame), one of each per labelled pair, at the log time of the pair's first view's
  frame, after the messages of that instant. An input's own /scene_caption topics are left out (the
  labels take their place).

`ros2 bag play DIR/NAME` then publishes the captions with the frames, and Foxglove or RViz show the
marker on the car. The bag's metadata says where it came from (custom_data: clip_vlm.source_bag,
clip_vlm.source_bag_id, clip_vlm.settings_id, clip_vlm.captions). A bag is written through a staging
folder and renamed into place (clip_vlm_core.atomic), and rewritten only when its labels changed: one
up to date with LABELS is left as it is. DIR never is, holds or lies inside an input.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clip_vlm_core.atomic import replace_dir, staging_area
from clip_vlm_core.bags import messages as m
from clip_vlm_core.bags.metadata import METADATA_FILE, read_metadata
from clip_vlm_core.bags.reader import Bag, open_bag
from clip_vlm_core.errors import UserError
from clip_vlm_core.label.inputs import refuse_overlap
from clip_vlm_core.output_guard import write_marker, written_by

log = logging.getLogger(__name__)
WRITER = "clip-vlm label"
CAPTION_TOPIC = "/scene_caption"
MARKER_TOPIC = "/scene_caption/marker"
MARKER = m.T["visualization_msgs/msg/Marker"]


@dataclass(frozen=True)
class Caption:
    log_ns: int  # where it goes in the bag
    stamp_ns: int  # the pair's stamp (the marker's header)
    frame_id: str
    text: str


def check_bags_folder(folder: str | Path, labels: str | Path) -> None:
    """--write-bags DIR is a folder (or nothing yet), and neither it nor LABELS lies in the other (the inputs
    are checked by inputs.refuse_overlap)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--write-bags {folder} is a file, not a folder for bags: choose another --write-bags")
    refuse_overlap(folder, "--write-bags", [("--out LABELS", str(labels), labels)])


def marker(caption: str, stamp_ns: int, frame_id: str) -> memoryview:
    """The node's caption marker (clip_vlm.messages.caption_marker) as CDR: white text 3 m above the car."""
    T = m.T
    return m.serialize(MARKER(
        header=m.header(stamp_ns, frame_id or m.BASE_FRAME), ns="scene_caption", id=0,
        type=MARKER.TEXT_VIEW_FACING, action=MARKER.ADD,
        pose=T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=3.0),
                                         orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
        scale=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.5),
        color=T["std_msgs/msg/ColorRGBA"](r=1.0, g=1.0, b=1.0, a=1.0),
        lifetime=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=0), frame_locked=False, points=[], colors=[],
        texture_resource="", texture=T[m.COMPRESSED_IMAGE](header=m.header(0, ""), format="", data=_no_bytes()),
        uv_coordinates=[], text=caption, mesh_resource="",
        mesh_file=T["visualization_msgs/msg/MeshFile"](filename="", data=_no_bytes()), mesh_use_embedded_materials=False,
    ))


def _no_bytes() -> Any:
    import numpy as np

    return np.zeros(0, dtype=np.uint8)


def up_to_date(target: Path, bag_id: str, settings: str, captions: int) -> bool:
    """Whether `target` is our labelled copy of this bag with these labels already."""
    if not (target / METADATA_FILE).is_file() or written_by(target) != WRITER:
        return False
    try:
        read_metadata(target, str(target))  # bounded and checked before YAML reads it
        info = yaml.safe_load((target / METADATA_FILE).read_text("utf-8"))["rosbag2_bagfile_information"]
        custom = info.get("custom_data") or {}
    except (UserError, OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return False
    return (custom.get("clip_vlm.source_bag_id") == bag_id and custom.get("clip_vlm.settings_id") == settings
            and custom.get("clip_vlm.captions") == str(captions))


def write_labelled_bag(source: str | Path, shown: str, target: str | Path, bag_id: str, settings: str,
                       captions: Sequence[Caption]) -> dict[str, Any]:
    """Write `target` (see the module's docstring); return what was done: status written | up to date."""
    target = Path(target)
    if up_to_date(target, bag_id, settings, len(captions)):
        return {"status": "up to date", "target": str(target)}
    if target.exists() and written_by(target) != WRITER:
        raise UserError(f"{target} exists and was not written by clip-vlm label; move it away to write the "
                        f"labelled copy of {shown} there")
    from rosbags.rosbag2 import StoragePlugin

    with open_bag(source) as bag, staging_area(target) as area:
        plugin = StoragePlugin.SQLITE3 if bag.storage == "sqlite3" else StoragePlugin.MCAP
        staged = area / target.name
        copied = _write(bag, staged, plugin, sorted(captions, key=lambda c: (c.log_ns, c.stamp_ns)),
                        {"clip_vlm.source_bag": shown, "clip_vlm.source_bag_id": bag_id,
                         "clip_vlm.settings_id": settings, "clip_vlm.captions": str(len(captions))})
        write_marker(staged, WRITER, entries=sorted(os.listdir(staged)))
        replace_dir(staged, target)
    return {"status": "written", "target": str(target), "messages": copied, "captions": len(captions)}


def _write(bag: Bag, path: Path, plugin: Any, captions: list[Caption], custom: dict[str, str]) -> int:
    from rosbags.rosbag2 import Writer

    writer = Writer(path, version=8, storage_plugin=plugin)
    for key, value in custom.items():
        writer.set_custom_data(key, value)
    writer.open()
    try:
        copied = _copy(bag, writer, captions)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return copied


def _copy(bag: Bag, writer: Any, captions: list[Caption]) -> int:
    definitions = _recorded_definitions(bag)
    ours = {CAPTION_TOPIC, MARKER_TOPIC}
    connections = {}
    for topic in bag.topics:
        if topic.name in ours:
            continue
        msgdef, digest = _definition(topic.msgtype, *definitions.get(topic.name, ("", "")))
        connections[topic.name] = writer.add_connection(
            topic.name, topic.msgtype, typestore=m.TYPESTORE, msgdef=msgdef, rihs01=digest,
            serialization_format=topic.serialization_format, offered_qos_profiles=list(topic.offered_qos))
    caption_conn = writer.add_connection(CAPTION_TOPIC, m.STRING, typestore=m.TYPESTORE, offered_qos_profiles=[m.LATCHED_QOS])
    marker_conn = writer.add_connection(MARKER_TOPIC, MARKER.__msgtype__, typestore=m.TYPESTORE,
                                        offered_qos_profiles=[m.STREAM_QOS])
    pending = list(reversed(captions))  # popped from the end: earliest first

    def write_captions_before(ns: int | None) -> None:
        while pending and (ns is None or pending[-1].log_ns < ns):
            caption = pending.pop()
            writer.write(caption_conn, caption.log_ns, m.string(caption.text))
            writer.write(marker_conn, caption.log_ns, marker(caption.text, caption.stamp_ns, caption.frame_id))

    copied = 0
    for topic, log_ns, raw in bag.messages(list(connections)):
        write_captions_before(log_ns)  # a caption goes after every message of its instant, its frames included
        writer.write(connections[topic], log_ns, raw)
        copied += 1
    write_captions_before(None)
    return copied


def _definition(msgtype: str, recorded: str, digest: str) -> tuple[str | None, str | None]:
    """(definition, RIHS01 type hash) to record for a copied topic: the input's definition, hashed here if
    the input did not record its hash (rosbags' MCAP files do not); else, for a type rosbags knows, its
    own (None, None); else the input's (possibly empty) definition with a hash of zeros, as nothing better
    is known (the messages are copied as they are either way)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    if recorded and digest:
        return recorded, digest
    if recorded and not recorded.startswith("=" * 80 + "\nIDL: "):
        try:
            store = get_typestore(Stores.EMPTY)
            store.register(get_types_from_msg(recorded, msgtype))
            return recorded, store.hash_rihs01(msgtype)
        except Exception:  # noqa: BLE001 - a definition rosbags cannot parse: fall back below
            log.debug("definition of %s not parsed", msgtype, exc_info=True)
    if msgtype in m.TYPESTORE.types:
        return None, None
    return recorded, "RIHS01_" + "0" * 64


def _recorded_definitions(bag: Bag) -> dict[str, tuple[str, str]]:
    """Each topic's message definition and type hash as the bag's storage recorded them (empty if not).

    The bag's storage files as the reader made them readable (checked, and inflated if compressed whole):
    `Bag` keeps no definitions, so they are read here with rosbags, under the reader's own error handling.
    """
    from rosbags.rosbag2 import Reader

    found: dict[str, tuple[str, str]] = {}
    for path in bag._storage_paths():
        with bag._reading(path):
            reader = Reader(path)
            reader.open()
            try:
                for connection in reader.connections:
                    if connection.topic not in found or not found[connection.topic][0]:
                        found[connection.topic] = (connection.msgdef.data or "", connection.digest or "")
            finally:
                reader.close()
    return found


def captions_from_rows(rows: list[dict[str, Any]]) -> list[Caption]:
    return [Caption(int(r["log_time_ns"]), int(r["stamp_ns"]), r["frame_id"] or "", r["caption"]) for r in rows]


def write_bags_batch(batch: dict[str, Any]) -> dict[str, list]:
    """Ray Data's entry (tasks): columns source, shown, target, bag_id, settings_id, captions (JSON rows)."""
    results = []
    for source, shown, target, bag_id, settings, rows in zip(batch["source"], batch["shown"], batch["target"],
                                                             batch["bag_id"], batch["settings_id"], batch["captions"],
                                                             strict=True):
        try:
            done = write_labelled_bag(str(source), str(shown), str(target), str(bag_id), str(settings),
                                      captions_from_rows(json.loads(str(rows))))
        except UserError as exc:
            done = {"status": "skipped", "target": str(target), "why": str(exc)}
        except Exception as exc:  # a damaged bag found while copying it: said, and the other bags go on
            log.debug("writing %s failed", target, exc_info=True)
            done = {"status": "skipped", "target": str(target),
                    "why": f"bag {shown} cannot be copied ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"}
        results.append(json.dumps({"bag": str(shown), **done}))
    return {"result": results}
