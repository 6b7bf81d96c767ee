"""`clip-vlm bag`: turn nuScenes scenes into rosbag2 bags, inspect them, and replay them without rosbag2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clip_vlm_core.bags.play import DEFAULT_WAIT_S, PlaySummary
from clip_vlm_core.errors import UserError

CONVERT_EPILOG = """examples:
  clip-vlm bag convert --dataroot data/nuscenes --version v1.0-mini --scene scene-0061 --out bags/
  clip-vlm bag convert --dataroot data/nuscenes --version v1.0-mini --all --sweeps \\
      --cameras CAM_FRONT CAM_BACK CAM_FRONT_LEFT --captions data/nuinteract --out bags/
  clip-vlm bag convert ... --raw --storage sqlite3      # decoded rgb8 images in a .db3 bag

Storage: MCAP (the default) is what Iron, Jazzy and later record and play out of the box. Humble plays
only sqlite3: install ros-humble-rosbag2-storage-mcap (rosdep does, for the clip_vlm package), or
convert with --storage sqlite3. 'clip-vlm bag play' reads both.

Each scene becomes one bag folder named after it (bags/scene-0061), rosbag2 metadata version 8 so
ROS 2 Humble and later play it:
  /<CAM>/image_raw/compressed  sensor_msgs/CompressedImage  the dataset's JPEG bytes, unchanged
  /<CAM>/image_raw             sensor_msgs/Image (rgb8)     instead, with --raw
  /<CAM>/camera_info           sensor_msgs/CameraInfo       from the calibrated sensor
  /tf                          tf2_msgs/TFMessage           map -> base_link per image (ego pose)
  /tf_static                   tf2_msgs/TFMessage           base_link -> <CAM>, latched (transient local)
  /scene_caption_gt            std_msgs/String              with --captions, at each keyframe

--captions reads a NuInteract folder exactly as 'clip-vlm data build' does: every .json file in it,
whatever it is called, records found by sample token, 'gemini_caption' or 'gpt_caption', the
--caption-keys joined (FRONT then BACK by default; with more than two --cameras, each camera's own caption
after its name, "Front: ... Front left: ...", as 'data build' writes targets over them). So
/scene_caption_gt at a keyframe is the caption 'data build' trains on over the same cameras. A keyframe without a caption gets none (counted in the summary); a captions
folder with no record for any keyframe of a scene is an error.

An existing bag is replaced only with --overwrite, and never when it is or holds the dataroot or the
captions. Every image must be a regular file inside the dataroot, within 8192x8192 pixels and 32 MiB."""

INFO_EPILOG = """examples:
  clip-vlm bag info bags/scene-0061
  clip-vlm bag info talker.mcap          # a single storage file, as 'ros2 bag record' users pass them around

A bag folder is described from its metadata.yaml, as 'ros2 bag info' does: nothing is inflated. Any
rosbag2 bag reads: sqlite3 or MCAP, split into several files or not, zstd-compressed per file or per
message, metadata versions 1 to 9. Sizes a bag declares are checked before anything is read (see the
README's safety limits); a damaged or hostile bag is refused in one sentence naming the problem."""

PLAY_EPILOG = """examples:
  clip-vlm bag play bags/scene-0061 --clock     # with a node started with use_sim_time:=true
  clip-vlm bag play bags/scene-0061 --rate 2 --loop --topics /CAM_FRONT/image_raw/compressed /tf_static
  clip-vlm bag play bags/scene-0061 --remap /CAM_FRONT/image_raw/compressed:=/car1/CAM_FRONT/image_raw/compressed

  clip-vlm bag play talker.db3          # a single storage file plays too
  clip-vlm bag play labelled/scene-0061 --start-offset 12.5   # from a match 'clip-vlm search' printed

Publishes with rclpy (install the 'ros' extra), for machines without rosbag2; where rosbag2 is
installed, 'ros2 bag play' does the same (--clock, --rate, --loop, --remap mean the same there). Each
topic gets the QoS its publisher offered when recorded (so /tf_static is latched), else reliable,
volatile, keep last 10, as 'ros2 bag play' chooses. --remap renames only the player's own topics.
Before the first message it waits for subscribers (up to 10 s; until none has appeared for 0.5 s after
the first), so a node that is already up misses no frame; with nobody listening it says so and plays.
Waiting is one-sided: this side sees a subscriber that may not have matched it yet. --start-paused then
holds the replay until Enter, for a script that first checks the subscriber's side (the demo waits for
the node's /diagnostics to show its `<VIEW>.publishers` at 1 or more).
A topic is played only if its type is a message of an installed ROS 2 interface package (found through
the ament index, as ROS finds them; nothing a bag names is imported otherwise), its name is a valid topic
name and it is CDR; other topics (e.g. tf2_msgs where it is not installed) are skipped and reported. A bag
with nothing playable, or whose played counts differ from what 'bag info' shows, exits 2. Ctrl-C stops."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bag",
        help="convert nuScenes scenes to rosbag2, inspect or replay bags",
        description="Convert nuScenes scenes into rosbag2 bags, show what a bag holds, or replay it.",
    )
    verbs = parser.add_subparsers(dest="bag_command", metavar="ACTION", required=True)
    _register_convert(verbs)
    _register_info(verbs)
    _register_play(verbs)


def _register_convert(verbs: argparse._SubParsersAction) -> None:
    from clip_vlm_core.config import DEFAULT_VIEWS, NUSCENES_CAMERAS

    p = verbs.add_parser("convert", help="write one rosbag2 bag per nuScenes scene", epilog=CONVERT_EPILOG,
                         description="Write one rosbag2 bag per nuScenes scene: camera images, camera info, TF and "
                         "captions.")
    p.add_argument("--dataroot", type=Path, required=True, help="nuScenes root folder (holds samples/, sweeps/, v1.0-*/)")
    p.add_argument("--version", default="v1.0-mini", help="nuScenes version folder (default %(default)s)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--scene", nargs="+", metavar="NAME", help="scene names, e.g. scene-0061 scene-0103")
    which.add_argument("--all", action="store_true", help="every scene of the version")
    p.add_argument("--cameras", nargs="+", default=list(DEFAULT_VIEWS), metavar="CAM",
                   help=f"cameras to include, from {' '.join(NUSCENES_CAMERAS)} (default: {' '.join(DEFAULT_VIEWS)})")
    p.add_argument("--sweeps", action="store_true", help="every camera frame (~12 Hz), not only keyframes (2 Hz)")
    p.add_argument("--raw", action="store_true", help="decoded rgb8 sensor_msgs/Image instead of the JPEG bytes")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap",
                   help="bag storage (default %(default)s); sqlite3 plays on a stock ROS 2 Humble, which has no MCAP plugin")
    p.add_argument("--captions", type=Path, default=None, metavar="DIR",
                   help="NuInteract folder of .json files (any names): adds /scene_caption_gt at each keyframe")
    p.add_argument("--caption-keys", nargs="+", default=None, metavar="KEY",
                   help="NuInteract caption keys joined into the caption, as in 'data build' (default: FRONT BACK for "
                   "up to two --cameras; for more, each camera's own caption, named: 'Front: ... Front left: ...')")
    p.add_argument("--out", type=Path, default=Path("bags"), help="folder the bags go into (default %(default)s/)")
    p.add_argument("--overwrite", action="store_true", help="replace bags that already exist")
    p.add_argument("--stats", action="store_true", help="print seconds and MB/s per scene (python -m clip_vlm_core.bags.bench for a full benchmark)")
    p.set_defaults(func=run_convert)


def _register_info(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "info",
        help="show a bag's topics, types, counts, time span and storage",
        description="Show what a rosbag2 bag holds: topics, types, message counts, offered QoS, start, end, "
        "duration and storage.",
        epilog=INFO_EPILOG,
    )
    p.add_argument("bag", type=Path, help="bag folder (holds metadata.yaml), or a single .mcap or .db3 file")
    p.set_defaults(func=run_info)


def _register_play(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("play", help="publish a bag's messages with rclpy at their recorded timing", epilog=PLAY_EPILOG,
                         description="Publish a bag's messages on ROS 2 at their recorded timing, scaled by --rate.")
    p.add_argument("bag", type=Path, help="bag folder (holds metadata.yaml), or a single .mcap or .db3 file")
    p.add_argument("--rate", type=float, default=1.0, help="speed factor; 2 plays twice as fast (default %(default)s)")
    p.add_argument("--loop", action="store_true", help="start again at the end until Ctrl-C")
    p.add_argument("--topics", nargs="+", default=None, metavar="TOPIC", help="play only these topics (default: all)")
    p.add_argument("--qos-reliability", choices=("reliable", "best_effort"), default=None,
                   help="override every topic's reliability (default: as recorded, else reliable)")
    p.add_argument("--wait-for-subscribers", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS",
                   help="wait up to this long for subscribers before the first message; 0 starts at once "
                   "(default %(default)s)")
    p.add_argument("--clock", type=float, nargs="?", const=40.0, default=0.0, metavar="HZ",
                   help="publish the bag's time on /clock at HZ (default 40 when given), as 'ros2 bag play "
                   "--clock' does, for nodes with use_sim_time:=true")
    p.add_argument("--start-offset", type=float, default=0.0, metavar="SECONDS",
                   help="start this many seconds into the bag, as 'ros2 bag play --start-offset' (e.g. the time "
                   "'clip-vlm search' prints for a match)")
    p.add_argument("--start-paused", action="store_true",
                   help="after the wait for subscribers, hold the first message until a line (Enter) on stdin; "
                   "a script starts the replay once its subscribers say they are ready")
    p.add_argument("-m", "--remap", nargs="+", default=[], metavar="OLD:=NEW",
                   help="publish topic OLD of the bag as NEW, e.g. /CAM_FRONT/image_raw/compressed:=/car1/CAM_FRONT/image_raw/compressed")
    p.set_defaults(func=run_play)


def run_convert(args: argparse.Namespace) -> int:
    from clip_vlm_core.bags.convert import BagConvertOptions, convert_scenes
    from clip_vlm_core.bags.info import read_bag_info
    from clip_vlm_core.bags.scene_plan import load_nuscenes

    options = BagConvertOptions(
        cameras=tuple(args.cameras), sweeps=args.sweeps, raw=args.raw, storage=args.storage,
        captions=args.captions, caption_keys=args.caption_keys, overwrite=args.overwrite,
    )
    nusc = load_nuscenes(args.dataroot, args.version)
    names = [s["name"] for s in nusc.scene] if args.all else args.scene
    captioned = uncaptioned = 0
    for scene in convert_scenes(nusc, names, args.out, options):
        captioned, uncaptioned = captioned + scene.captioned, uncaptioned + scene.uncaptioned
        if args.stats:
            info = read_bag_info(scene.path)
            bag_mb = info.size_bytes / 1e6
            print(f"{scene.path}: {info.message_count} messages, {bag_mb:.1f} MB bag in {scene.seconds:.2f} s "
                  f"({bag_mb / scene.seconds:.0f} MB/s)")
        else:
            print(scene.path)
    if options.captions is not None:
        print(f"/scene_caption_gt: {captioned} keyframes captioned; {uncaptioned} without a caption in "
              f"{options.captions} (keys {' '.join(options.keys_read)}) skipped")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from clip_vlm_core.bags.info import format_bag_info, read_bag_info

    print(format_bag_info(read_bag_info(args.bag)))
    return 0


def run_play(args: argparse.Namespace) -> int:
    from clip_vlm_core.bags.play import play_bag

    if args.rate <= 0:
        raise UserError(f"--rate must be positive, got {args.rate}")
    if args.wait_for_subscribers < 0:
        raise UserError(f"--wait-for-subscribers cannot be negative, got {args.wait_for_subscribers}")
    if args.clock < 0:
        raise UserError(f"--clock must be a positive rate in Hz, got {args.clock}")
    # The summary is printed before the player leaves ROS 2 (a middleware hang there must not lose it).
    play_bag(
        args.bag, rate=args.rate, loop=args.loop, topics=args.topics, reliability=args.qos_reliability,
        wait_for_subscribers=args.wait_for_subscribers, report=True, clock_hz=args.clock,
        remap=_remaps(args.remap), start_when=_enter_on_stdin if args.start_paused else None,
        start_offset=args.start_offset, on_done=_print_play_summary,
    )
    return 0


def _print_play_summary(summary: PlaySummary) -> None:
    stopped = " (interrupted)" if summary.interrupted else ""
    topics = len(summary.played_topics)
    print(f"published {summary.published} messages on {topics} topic{'s' if topics != 1 else ''} in "
          f"{summary.seconds:.2f} s{stopped}{'' if summary.expected else ' (the played topics hold no messages)'}")
    for topic, why in summary.skipped.items():
        print(f"skipped {topic}: {why}")


def _enter_on_stdin() -> None:
    print("paused before the first message: press Enter to play", file=sys.stderr, flush=True)
    sys.stdin.readline()  # end of input plays too: nobody is left to resume it


def _remaps(rules: list[str]) -> dict[str, str]:
    remap = {}
    for rule in rules:
        old, sep, new = rule.partition(":=")
        if not sep or not old or not new:
            raise UserError(f"--remap {rule!r} must read OLD:=NEW, e.g. /CAM_FRONT/image_raw/compressed:=/car1/CAM_FRONT/image_raw/compressed")
        remap[old] = new
    return remap
