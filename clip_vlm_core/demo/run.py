"""`make demo`, step by step (what each step does: clip_vlm_core.demo)."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from clip_vlm_core import demo as demo_package
from clip_vlm_core.config import DEFAULT_VIEWS
from clip_vlm_core.demo.report import Asked, Keyframe, latency_line, render_report
from clip_vlm_core.demo.scene import convert, synthesise
from clip_vlm_core.errors import UserError
from clip_vlm_core.teardown import bounded_teardown

# What the demo plays: what the node subscribes to, and the truth this script times keyframes by. The player
# waits until each has a subscriber.
TRUTH_TOPIC = "/scene_caption_gt"
# The six cameras of `make demo SURROUND=1`, in the order of embedded:surround's training target.
SURROUND_VIEWS = ("CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
# Question types the demo asks about, in held-out phrasings (the embedded model never trained on them).
DEMO_QUESTION_TYPES = ("front.vehicle_colour", "front.lane", "front.light", "back.follows", "both.where")
SURROUND_QUESTION_TYPES = ("front.motion", "back.motion", "front_left.vehicle_type", "back_right.vehicle_colour",
                           "front.light")
STEPS = 8


def camera_topics(views: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"/{view}/image_raw/compressed" for view in views)


class StepFailed(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"demo failed at step '{step}': {reason}")


@dataclass
class Demo:
    out: Path
    bags: Path
    samples: int
    seed: int
    rate: float
    model: str
    timeout_s: float
    views: tuple[str, ...] = DEFAULT_VIEWS
    max_new_tokens: int = 48  # a two-camera caption is ~40 tokens; the six-camera one ~160
    question_types: tuple[str, ...] = DEMO_QUESTION_TYPES
    # Pairs captioned together; with a history, 1: a pair's past frames are kept only once captioned.
    batch_size: int = 4
    keyframes: dict[int, Keyframe] = field(default_factory=dict)  # the scene's, by stamp (ns)
    asked: list[Asked] = field(default_factory=list)
    diagnostics: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)


def _bin(name: str) -> str:
    """A console script of this environment (the venv's), falling back to PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def start_node(demo: Demo, env: dict[str, str]) -> subprocess.Popen:
    # Policy "all" captions every pair of the replay; the bag's 2018 stamps are old, so no age limit.
    # Sim time: the player publishes the bag's /clock, so the node's source latency is in bag time.
    params = {"policy": "all", "rate_hz": 4.0, "batch_size": demo.batch_size, "queue_size": 64,
              "max_new_tokens": demo.max_new_tokens,
              "max_age_ms": 60000.0, "use_sim_time": "true"}
    if demo.model:
        params["model"] = demo.model
    if demo.views != DEFAULT_VIEWS:
        params["views"] = f"[{','.join(demo.views)}]"
    cmd = [_bin("caption_node"), "--ros-args"]
    for name, value in params.items():
        cmd += ["-p", f"{name}:={value}"]
    log = open(demo.out / "caption_node.log", "w")  # noqa: SIM115 - closed with the process
    node = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    demo.processes.append(node)
    return node


def run(demo: Demo) -> int:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String
    from visualization_msgs.msg import Marker

    demo.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ROS_DOMAIN_ID": os.environ.get("ROS_DOMAIN_ID", str(random.randint(100, 200))),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")}
    os.environ.update(env)
    step = "1/8 synthesise a nuScenes scene"
    finished = False
    try:
        print(f"[{step}]")
        scene = synthesise(demo.out, demo.samples, demo.seed, demo.views)
        demo.keyframes = scene.keyframes
        print(f"      {len(scene.keyframes)} keyframes of {scene.name} (seed {demo.seed}, {len(demo.views)} cameras) in "
              f"{scene.root}")
        step = "2/8 convert it to a rosbag2 bag"
        print(f"[{step}]")
        bag = convert(scene, demo.bags, demo.out)
        print(f"      {bag}  (replay it yourself: clip-vlm bag play {bag})")

        step = "3/8 start caption_node"
        print(f"[{step}]  model: {demo.model or 'embedded:default'}; log: {demo.out / 'caption_node.log'}")
        rclpy.init()
        listener = rclpy.create_node("clip_vlm_demo")
        # When each keyframe was played: the bag's ground truth goes out with its frames, keyframe by keyframe.
        # (Not the camera topics: a subscriber of them here could start the replay before the node's.)
        arrivals: dict[int, float] = {}
        listener.create_subscription(String, TRUTH_TOPIC, lambda m: _on_truth(demo, arrivals), 50)
        listener.create_subscription(DiagnosticArray, "/diagnostics", lambda m: _keep_diagnostics(demo, m), 10)
        listener.create_subscription(Marker, "/scene_caption/marker", lambda m: _on_caption(demo, m, arrivals), 50)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        answers: list[tuple[str, float]] = []
        question_pub = listener.create_publisher(String, "/scene_question", reliable)
        listener.create_subscription(String, "/scene_answer", lambda m: answers.append((m.data, time.monotonic())),
                                     reliable)
        executor = SingleThreadedExecutor()
        executor.add_node(listener)
        node = start_node(demo, env)
        started = time.monotonic()
        while not demo.diagnostics:  # the node publishes diagnostics once its model is loaded
            executor.spin_once(timeout_sec=0.2)
            if node.poll() is not None:
                raise StepFailed(step, f"caption_node exited with code {node.returncode}: {_tail(demo.out / 'caption_node.log')}")
            if time.monotonic() - started > demo.timeout_s:
                raise StepFailed(step, f"no /diagnostics from caption_node within {demo.timeout_s:.0f} s")
        print(f"      up in {time.monotonic() - started:.1f} s on {demo.diagnostics.get('device', '?')}")

        step = "4/8 replay the bag"
        played = (*camera_topics(demo.views), TRUTH_TOPIC)
        print(f"[{step}]  clip-vlm bag play {bag} --rate {demo.rate} --clock --start-paused --topics "
              f"{' '.join(played)}")
        play_log = open(demo.out / "bag_play.log", "w")  # noqa: SIM115 - closed with the process
        player = subprocess.Popen([_bin("clip-vlm"), "bag", "play", str(bag), "--rate", str(demo.rate), "--clock",
                                   "--wait-for-subscribers", str(demo.timeout_s), "--start-paused",
                                   "--topics", *played], stdin=subprocess.PIPE,
                                  stdout=play_log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        demo.processes.append(player)
        # The player waits until it sees the node's subscriptions, but the node may not have matched the
        # player's publishers yet, and what it publishes before then is lost to the node (on a busy machine,
        # the first keyframes): the replay starts once the node says every view has matched a publisher.
        _wait_until_matched(demo, executor, player, node, step, listener)
        player.stdin.write(b"\n")
        player.stdin.close()

        step = "5/8 caption every keyframe"
        print(f"[{step}]")
        deadline = None
        while any(k.caption is None for k in demo.keyframes.values()):
            executor.spin_once(timeout_sec=0.1)
            if player.poll() is not None:
                if player.returncode != 0:
                    raise StepFailed("4/8 replay the bag", f"bag play exited with code {player.returncode}: "
                                     f"{_tail(demo.out / 'bag_play.log')}")
                deadline = deadline or time.monotonic() + demo.timeout_s
            if node.poll() is not None:
                raise StepFailed(step, f"caption_node died (code {node.returncode}): {_tail(demo.out / 'caption_node.log')}")
            if deadline and time.monotonic() > deadline:
                ordered = sorted(demo.keyframes.values(), key=lambda k: k.stamp_ns)
                missing = [str(n) for n, k in enumerate(ordered, 1) if k.caption is None]
                raise StepFailed(step, f"{len(missing)} of {len(demo.keyframes)} keyframes (number "
                                 f"{', '.join(missing)}) got no caption "
                                 f"{demo.timeout_s:.0f} s after the replay ended; {_node_figures(demo)}")
        end = time.monotonic() + 1.5  # one more diagnostics message with the final figures
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.1)

        step = "6/8 ask about the scene"
        last = max(demo.keyframes.values(), key=lambda k: k.stamp_ns)
        print(f"[{step}]  about the freshest frames (keyframe {len(demo.keyframes)}), on /scene_question")
        ask_questions(demo, scene.questions.get(last.token, []), question_pub, answers, executor, step)
        question_pub.wait_for_all_acked(_duration(demo.timeout_s))  # before this publisher goes
        right = sum(a.right() for a in demo.asked)
        print(f"      {right}/{len(demo.asked)} answers right; answer latency "
              f"{latency_line((a.latency_ms for a in demo.asked), 50)}")

        step = "7/8 write the report"
        print(f"[{step}]")
        report = write_report(demo, scene.name)
        correct = sum(right == total for right, total in (k.facts_right() for k in demo.keyframes.values()))
        print(f"      {len(demo.keyframes)}/{len(demo.keyframes)} keyframes captioned; all facts right in "
              f"{correct}; end-to-end latency {latency_line((k.latency_ms for k in demo.keyframes.values()), 50, 95)}")
        print(f"      report: {report}")
        step = "8/8 stop everything"
        print(f"[{step}]")
        finished = True
        return 0
    except StepFailed as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except UserError as exc:
        print(f"demo failed at step '{step}': {exc}", file=sys.stderr)
        return 1
    finally:
        _stop(demo.processes)
        if rclpy.ok():
            with bounded_teardown(exit_code=0 if finished else 1):  # the report is written by then
                rclpy.shutdown()


def _wait_until_matched(demo: Demo, executor, player: subprocess.Popen, node: subprocess.Popen, step: str,
                        listener) -> None:
    """Spin until the node's /diagnostics show a matched publisher on every view (`<VIEW>.publishers`) and this
    script's listener sees the player's ground truth publisher (keyframes are timed by it: a run whose
    listener saw it late measured no latency at all)."""
    views = [key for key in demo.diagnostics if key.endswith(".publishers") and not key.startswith("scene_question")]
    demo.diagnostics = {}
    deadline = time.monotonic() + 2 * demo.timeout_s  # the player waits up to timeout_s for subscribers first
    while not (demo.diagnostics and all(int(demo.diagnostics.get(key, "0")) > 0 for key in views)
               and listener.count_publishers(TRUTH_TOPIC) > 0):
        executor.spin_once(timeout_sec=0.1)
        for process, what in ((player, "bag play"), (node, "caption_node")):
            if process.poll() is not None:
                log = demo.out / ("bag_play.log" if process is player else "caption_node.log")
                raise StepFailed(step, f"{what} exited with code {process.returncode} before the replay began: "
                                       f"{_tail(log)}")
        if time.monotonic() > deadline:
            raise StepFailed(step, f"caption_node matched no publisher of the replay on {', '.join(views)} within "
                                   f"{2 * demo.timeout_s:.0f} s; {_node_figures(demo)}")


def ask_questions(demo: Demo, held_out: list[dict], question_pub, answers: list, executor, step: str) -> None:
    """One question at a time (answers carry no id, so each waits for its answer), printed with the truth."""
    from std_msgs.msg import String

    pairs = {p["type"]: p for p in held_out}
    matched_by = time.monotonic() + demo.timeout_s
    while question_pub.get_subscription_count() == 0:  # a question published before that is lost
        executor.spin_once(timeout_sec=0.05)
        if time.monotonic() > matched_by:
            raise StepFailed(step, f"caption_node's /scene_question subscription not seen within {demo.timeout_s:.0f} s")
    for kind in demo.question_types:
        asked = Asked(pairs[kind]["question"], pairs[kind]["answer"])
        expected, sent = len(answers) + 1, time.monotonic()
        question_pub.publish(String(data=asked.question))
        while len(answers) < expected:
            executor.spin_once(timeout_sec=0.05)
            if time.monotonic() - sent > demo.timeout_s:
                raise StepFailed(step, f"no answer on /scene_answer to {asked.question!r} within {demo.timeout_s:.0f} s")
        asked.answer, at = answers[-1]
        asked.latency_ms = (at - sent) * 1000
        demo.asked.append(asked)
        mark = "right" if asked.right() else "WRONG"
        print(f"  Q: {asked.question}\n      answer: {asked.answer:<12} truth: {asked.truth:<12} {mark}  "
              f"({asked.latency_ms:.0f} ms)")


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


FIGURES = ("pairs_made", "captions", "queue_depth", "pairs_in_flight", "pairs_dropped_overflow", "pairs_dropped_stale",
           "pairs_dropped_on_error")
VIEW_FIGURES = ("received", "dropped", "publishers")


def _node_figures(demo: Demo) -> str:
    """Where the node says the frames went, from its last /diagnostics: what a failure report needs."""
    keys = (*(f"{view}.received" for view in demo.views), *FIGURES,
            *(f"{view}.{what}" for what in VIEW_FIGURES[1:] for view in demo.views))
    figures = ", ".join(f"{key} {demo.diagnostics[key]}" for key in keys if key in demo.diagnostics)
    return f"the node's last figures: {figures or 'none received'}"


def _keep_diagnostics(demo: Demo, msg) -> None:
    for status in msg.status:
        demo.diagnostics = {kv.key: kv.value for kv in status.values} | {"message": status.message}


def _duration(seconds: float):
    from rclpy.duration import Duration

    return Duration(nanoseconds=int(seconds * 1e9))


def _on_truth(demo: Demo, arrivals: dict[int, float]) -> None:
    """The n-th ground truth of the replay came with the n-th keyframe: note when."""
    played = sorted(demo.keyframes)[len(arrivals):]
    if played:
        arrivals[played[0]] = time.monotonic()


def _on_caption(demo: Demo, marker, arrivals: dict[int, float]) -> None:
    stamp = _ns(marker.header.stamp)
    keyframe = demo.keyframes.get(stamp)
    if keyframe is None or keyframe.caption is not None:
        return
    keyframe.caption = marker.text
    if stamp in arrivals:
        keyframe.latency_ms = (time.monotonic() - arrivals[stamp]) * 1000
    done = sum(k.caption is not None for k in demo.keyframes.values())
    right, total = keyframe.facts_right()
    latency = f"{keyframe.latency_ms:5.0f} ms" if keyframe.latency_ms is not None else "    ? ms"
    print(f"  [{done:2d}/{len(demo.keyframes)}] latency {latency}   facts right {right}/{total}")
    print(f"      truth:   {keyframe.truth}")
    print(f"      caption: {keyframe.caption}")


def write_report(demo: Demo, scene: str) -> Path:
    from clip_vlm_core.atomic import write_text

    path = demo.out / "report.html"
    page = render_report(scene, demo.model, demo.keyframes.values(), demo.asked, demo.diagnostics)
    write_text(path, page)  # the shared atomic writer: a full disk leaves the previous report whole
    return path


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text().strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
    for proc in processes:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def prepare_model(out: Path, model: str, clip: str) -> str:
    """MODEL/CLIP given: build a checkpoint of those base models with an untrained connector (downloads
    weights where the hub is reachable) for the node to load; nothing given: the embedded model."""
    if not model and not clip:
        return ""
    if model and not clip and (Path(model) / "clip_vlm_config.json").is_file():
        return str(Path(model).resolve())  # already a clip-vlm checkpoint
    from clip_vlm_core.config import CaptionerConfig
    from clip_vlm_core.model import SceneCaptioner

    config = CaptionerConfig(**({"qwen_model": model} if model else {}), **({"clip_model": clip} if clip else {}))
    folder = out / "model"
    shutil.rmtree(folder, ignore_errors=True)
    SceneCaptioner.build(config).save_pretrained(folder)
    return str(folder.resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clip_vlm_core.demo", description=demo_package.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="work folder (default %(default)s)")
    parser.add_argument("--bags", type=Path, default=Path("bags"), help="where the bag goes (default %(default)s/)")
    parser.add_argument("--samples", type=int, default=12, help="keyframes in the scene (default %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="scene seed; the embedded model was trained on seed 0")
    parser.add_argument("--rate", type=float, default=1.0, help="replay speed (default %(default)s)")
    parser.add_argument("--model", default=os.environ.get("MODEL", ""), help="Qwen2.5-VL hub id/folder or checkpoint")
    parser.add_argument("--clip", default=os.environ.get("CLIP", ""), help="OpenCLIP model name or folder")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the node (default %(default)s)")
    parser.add_argument("--surround", action="store_true", default=os.environ.get("SURROUND", "") not in ("", "0"),
                        help="six cameras: a drive seen by all six, captioned by embedded:surround (six views with a "
                        "3-frame history; each view's caption named); also SURROUND=1, as in `make demo SURROUND=1`")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        model = prepare_model(args.out, args.model, args.clip)
    except UserError as exc:
        print(f"demo failed at step 'prepare the model': {exc}", file=sys.stderr)
        return 1
    demo = Demo(args.out, args.bags, args.samples, args.seed, args.rate, model, args.timeout)
    if args.surround:
        demo.model = demo.model or "embedded:surround"
        demo.views, demo.max_new_tokens, demo.question_types = SURROUND_VIEWS, 192, SURROUND_QUESTION_TYPES
        demo.batch_size = 1
    code = run(demo)
    print(f"demo {'finished' if code == 0 else 'FAILED'} in {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
