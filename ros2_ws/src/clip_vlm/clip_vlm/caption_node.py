"""`caption_node`: camera views in, one scene caption out on /scene_caption; questions in on
scene_question, answers out on scene_answer.

Thin by design: callbacks check and pair frames (clip_vlm_core.stream), a worker thread captions at
`rate_hz` and answers questions ahead of its next caption, and this file turns results into messages. Run it as
`ros2 run clip_vlm caption_node --ros-args -p policy:=all` or `.venv/bin/caption_node --ros-args ...`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from functools import partial
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy._rclpy_pybind11 import RCLError
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from visualization_msgs.msg import Marker

from clip_vlm import messages, parameters
from clip_vlm_core.errors import UserError
from clip_vlm_core.images import EncodedImage
from clip_vlm_core.limits import check_question
from clip_vlm_core.stream import (
    BadFrame,
    CaptionNodeConfig,
    CaptionWorker,
    Frame,
    FramePair,
    FramePairer,
    PairQueue,
    Question,
    QuestionQueue,
    StreamStats,
    image_from_message,
    stamp_to_ns,
)
from clip_vlm_core.stream.config import replace_parameter
from clip_vlm_core.stream.drawing import draw_caption
from clip_vlm_core.stream.frames import black_jpeg, decode_compressed

NODE_NAME = "caption_node"
STOP_TIMEOUT_S = 1.5  # SIGINT must end the process within 2 s, even mid-inference
TIME_JUMP_WARNING_PERIOD_S = 10.0  # a looping bag jumps back every loop: say so, not once per frame


class CaptionNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        self.config = parameters.declare_parameters(self)
        self.captioner = _load_captioner(self.config)
        self.get_logger().info(
            f"model {self.captioner.model_name} on {self.captioner.device}, views {list(self.config.views)}"
        )
        inference = self.captioner.inference or {"settings": "transformers' generate() as is (fast_inference false)"}
        self.get_logger().info("inference: " + "; ".join(f"{k} {v}" for k, v in inference.items()))
        decoding = vars(self.captioner.decoding_in_effect(**self.config.decoding()))  # the model's EOS ids, penalty
        self.get_logger().info("decoding: " + ", ".join(f"{k} {v}" for k, v in decoding.items()))
        views = self.config.views
        self.stats = StreamStats(views)
        self.pairer = FramePairer(
            views,
            max_skew_ns=int(self.config.max_skew_ms * 1e6),
            view_timeout_ns=int(self.config.view_timeout_s * 1e9),
            caption_missing_views=self.config.caption_missing_views,
            started_ns=time.monotonic_ns(),
        )
        self.queue = PairQueue(self.config.policy, self.config.queue_size, int(self.config.max_age_ms * 1e6))
        self._resets_seen = 0
        self.questions = QuestionQueue(self.config.question_queue_size)
        self._freshest_pair: FramePair | None = None  # what a question arriving now is asked about
        # The diagnostics timer runs on the steady clock: under use_sim_time a ROS-time timer would stop
        # whenever /clock does (before a replay starts, after it ends), and with it /diagnostics.
        self._steady_clock = Clock(clock_type=ClockType.STEADY_TIME)

        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.caption_pub = self.create_publisher(String, "scene_caption", latched)
        self.marker_pub = self.create_publisher(Marker, "scene_caption/marker", 10)
        self.image_pub = self.create_publisher(Image, "scene_caption/image", 1)
        self.overlay_pub = (
            self.create_publisher(messages.OverlayText, "scene_caption/overlay", 1) if messages.OverlayText else None
        )
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.answer_pub = self.create_publisher(String, "scene_answer", reliable)
        self.create_subscription(String, "scene_question", self._on_question, reliable)

        image_qos = QoSProfile(
            depth=self.config.qos_depth,
            reliability=ReliabilityPolicy.RELIABLE
            if self.config.qos_reliability == "reliable"
            else ReliabilityPolicy.BEST_EFFORT,
        )
        message_type = CompressedImage if self.config.image_transport == "compressed" else Image
        self._subscriptions_by_view = {
            view: self.create_subscription(
                message_type, self.config.topic_for(view), partial(self._on_image, view), image_qos
            )
            for view in views
        }
        self.worker = CaptionWorker(
            self.captioner,
            self.queue,
            self.stats,
            self._publish,
            rate_hz=self.config.rate_hz,
            batch_size=self.config.batch_size,
            newest_stamp_ns=lambda: self.pairer.newest_stamp_ns,
            source_clock_ns=lambda: self.get_clock().now().nanoseconds,
            decoding=self.config.decoding(),
            questions=self.questions,
            answer=self._publish_answer,
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(1.0, self._publish_diagnostics, clock=self._steady_clock)
        self.worker.start()
        # Resolved names (namespace and remaps applied): what the node really listens to.
        topics = ", ".join(sub.topic_name for sub in self._subscriptions_by_view.values())
        self.get_logger().info(f"captioning {topics} at {self.config.rate_hz} Hz, policy {self.config.policy}")

    # -- parameters -------------------------------------------------------------------------------
    def set_parameters_atomically(self, parameter_list: list[Parameter]) -> SetParametersResult:
        # The parameter services call this on every distro: whole numbers for float parameters arrive
        # here as integers and must stay floats (see clip_vlm.parameters).
        parameter_list = parameters.as_declared_types(parameter_list)
        reason = parameters.refusal(parameter_list)
        if reason is not None:
            return SetParametersResult(successful=False, reason=reason)
        return super().set_parameters_atomically(parameter_list)

    def _on_set_parameters(self, parameters: list) -> SetParametersResult:
        config = self.config
        try:
            for parameter in parameters:
                config = replace_parameter(config, parameter.name, parameter.value)
        except UserError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.config = config
        self.worker.rate_hz = config.rate_hz
        self.worker.decoding = config.decoding()
        self.pairer.caption_missing_views = config.caption_missing_views
        return SetParametersResult(successful=True)

    # -- frames in (executor thread: check, pair, queue; never the model) -------------------------
    def _on_image(self, view: str, msg: Any) -> None:
        received_ns = time.monotonic_ns()
        try:
            # Compressed frames stay encoded (header and limits checked): the worker decodes the ones it
            # captions, in one batch on the model's device. Raw frames are converted here.
            image = image_from_message(msg)
        except BadFrame as exc:
            self.stats.frame_bad(view, str(exc))
            return
        self.stats.frame_received(view)
        frame = Frame(view, stamp_to_ns(msg.header.stamp), received_ns, image, msg.header.frame_id)
        pair = self.pairer.add(frame)
        if self.pairer.counters.resets != self._resets_seen:
            self._on_time_jump(view)
        if pair is not None:
            self._freshest_pair = pair
            self.queue.put(pair)

    def _on_time_jump(self, view: str) -> None:
        # Pairs already queued stay and are captioned: they are real frames. Their stamps now lie ahead
        # of the newest one, so the queue judges their age by the time they waited here alone.
        self._resets_seen = self.pairer.counters.resets
        jump_s = self.pairer.counters.last_jump_ns / 1e9
        self.get_logger().warning(
            f"{view} stamp went back {jump_s:.1f} s (a looping bag or a restarted camera): frame pairing "
            f"restarted ({self._resets_seen} time(s) so far; said at most every {TIME_JUMP_WARNING_PERIOD_S:.0f} s)",
            throttle_duration_sec=TIME_JUMP_WARNING_PERIOD_S,
        )

    # -- questions in (executor thread: attach the freshest pair, queue; never the model) -----------
    def _on_question(self, msg: String) -> None:
        now_ns = time.monotonic_ns()
        try:
            text = check_question(msg.data, "a question on scene_question")
        except UserError as exc:  # empty, too long, or holding chat-template tokens
            self.questions.refused()
            self.get_logger().warning(f"{exc}; not answered")
            return
        pair = self._freshest_pair
        if pair is None or now_ns - pair.received_ns > self.config.max_age_ms * 1e6:
            # Frames older than a pair may be when captioned (max_age_ms) would describe a scene long gone.
            self.questions.unanswerable()
            self.get_logger().warning(f"question {text!r} not answered: no synchronized camera pair in the last "
                                      f"{self.config.max_age_ms:.0f} ms (max_age_ms)")
            return
        dropped = self.worker.ask(Question(text, pair, now_ns))
        if dropped is not None:
            self.get_logger().warning(f"question queue full ({self.config.question_queue_size}): dropped the oldest, "
                                      f"{dropped.text!r}")

    # -- answers out (worker thread) -----------------------------------------------------------------
    def _publish_answer(self, question: Question, answer: str) -> None:
        if not self.context.ok():
            return
        self.answer_pub.publish(String(data=answer))
        self.get_logger().info(f"question {question.text!r} -> answer {answer!r} (frames stamped "
                               f"{question.pair.stamp_ns} ns)")

    # -- captions out (worker thread) -------------------------------------------------------------
    def _publish(self, pair: FramePair, caption: str) -> None:
        if not self.context.ok():  # Ctrl-C arrived during inference: the publishers are gone
            return
        self.caption_pub.publish(String(data=caption))
        self.marker_pub.publish(messages.caption_marker(caption, pair.stamp_ns, pair.frame_id))
        if self.overlay_pub is not None:
            self.overlay_pub.publish(messages.overlay_text(caption))
        if self.config.publish_image and self.image_pub.get_subscription_count() > 0:
            front = pair.images[self.config.views[0]]
            if isinstance(front, EncodedImage):  # decoded on the model's device for the caption; here for people
                front = decode_compressed(front.data)
            self.image_pub.publish(messages.rgb_image(draw_caption(front, caption), pair.stamp_ns, pair.frame_id))

    def _publish_diagnostics(self) -> None:
        silent = self.pairer.silent_views(time.monotonic_ns())
        extra = [*self._pair_accounting(), ("device", str(self.captioner.device)), ("model", self.captioner.model_name),
                 *self.questions.report()]
        if self.stats.source_clock_mismatches:
            extra.append(("source_clock_hint", self._source_clock_hint()))
        report = self.stats.report(silent, extra)
        if silent and self.config.caption_missing_views:
            report.message += " (captioned with a black image in its place)"
        now = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(
            messages.diagnostic_array(report, f"clip_vlm: {self.get_name()}", self.captioner.model_name, now)
        )

    def _pair_accounting(self) -> list[tuple[str, str]]:
        """Where every pair made went: captioned, queued, in flight, or dropped for a named reason.

        At rest, pairs_made == captions + queue_depth + pairs_in_flight + the pairs_dropped_* values.
        """
        counters, queued = self.pairer.counters, self.queue.counters
        pairs_lost = (queued.superseded + queued.overflow + queued.stale + self.stats.dropped_on_error
                      + self.stats.dropped_bad_frame)
        values = [
            ("queue_depth", str(len(self.queue))),
            ("policy", self.config.policy),
            ("batch_limit", str(self.worker.batch_limit)),
            ("pairs_made", str(counters.pairs)),
            ("pairs_in_flight", str(self.worker.in_flight)),
            ("pairs_dropped_superseded", str(queued.superseded)),
            ("pairs_dropped_overflow", str(queued.overflow)),
            ("pairs_dropped_stale", str(queued.stale)),
            ("pairing_resets", str(counters.resets)),
        ]
        for view in self.config.views:
            dropped = counters.unpaired[view] + counters.discarded_at_reset[view] + pairs_lost
            values.append((f"{view}.dropped", str(dropped)))
            values.append((f"{view}.discarded_at_reset", str(counters.discarded_at_reset[view])))
            values.append((f"{view}.substituted_black", str(counters.substituted[view])))
        return values

    def _source_clock_hint(self) -> str:
        if self.get_parameter("use_sim_time").value:
            return "use_sim_time is on: is /clock published (ros2 bag play --clock, clip-vlm bag play --clock)?"
        # Short enough for `ros2 topic echo`, which cuts strings at 128 characters.
        return "replaying a bag? play it with --clock (ros2 bag play, clip-vlm bag play) and set use_sim_time:=true"

    def close(self) -> None:
        if not self.worker.stop(STOP_TIMEOUT_S):
            self.get_logger().warning("an inference call was still running at shutdown; leaving it behind")


def _load_captioner(config: CaptionNodeConfig):
    from clip_vlm_core.model import SceneCaptioner

    captioner = SceneCaptioner.from_pretrained(config.model or None, device=config.device or None,
                                               base_models_root=config.base_models_root or None)
    if set(config.views) != set(captioner.views):
        raise UserError(
            f"parameter views={list(config.views)} does not match the views the model reads {list(captioner.views)}"
        )
    if config.prompt:
        captioner = captioner.with_prompt(config.prompt)
    if config.fast_inference:
        captioner.optimize_for_inference()
    # One caption at start-up, from JPEG bytes as frames arrive, so the first real frame does not pay
    # for lazy initialisation (on a GPU, nvJPEG's too).
    captioner.caption([dict.fromkeys(captioner.views, black_jpeg(64, 64))], max_new_tokens=2)
    return captioner


def main(args: list[str] | None = None) -> int:
    """Console-script entry point: run the node, then leave without the interpreter's slow teardown."""
    code = run(args)
    # Everything is shut down by now (worker joined, node destroyed, rclpy shut down); what is left
    # is Python unloading torch/transformers, which takes 1-2 s and would break the promise that
    # Ctrl-C ends the node within 2 s.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(args: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        rclpy.init(args=args)
    except RCLError as exc:  # a malformed --ros-args rule, e.g. `-p model:=` with nothing after it
        print(f"{NODE_NAME}: error: the ROS arguments cannot be parsed ({str(exc).split(', at ')[0]})",
              file=sys.stderr)
        return 2
    node = None
    code = 0
    try:
        node = CaptionNode()
        rclpy.spin(node)
    except UserError as exc:
        print(f"{NODE_NAME}: error: {exc}", file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
