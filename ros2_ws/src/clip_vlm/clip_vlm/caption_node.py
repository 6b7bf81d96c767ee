"""`caption_node`: camera views in, one scene caption out on /scene_caption; questions in on
scene_question, answers out on scene_answer (what it does: clip_vlm.captioning).

Run it as `ros2 run clip_vlm caption_node --ros-args -p policy:=all` or `.venv/bin/caption_node --ros-args ...`;
`caption_lifecycle_node` is the same node managed through the lifecycle (clip_vlm.lifecycle_node).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions

from clip_vlm.captioning import Captioning
from clip_vlm_core.errors import UserError
from clip_vlm_core.teardown import bounded_teardown

NODE_NAME = "caption_node"
SPIN_SLICE_S = 0.1  # the executor's wait returns this often, so Ctrl-C is seen even with no timer running


class CaptionNode(Node):
    """Configured and active from the start: captions flow as soon as frames do."""

    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        self.captioning = Captioning(self)
        self.captioning.configure()
        self.captioning.activate()

    def set_parameters_atomically(self, parameter_list: list[Parameter]) -> SetParametersResult:
        # The parameter services call this on every distro (see Captioning.set_parameters_atomically).
        return self.captioning.set_parameters_atomically(parameter_list, super().set_parameters_atomically)

    def close(self) -> None:
        self.captioning.deactivate()
        self.captioning.wait_for_acknowledgements()


def main(args: list[str] | None = None) -> int:
    """Console-script entry point: run the node, then leave without the interpreter's slow teardown."""
    _exit(run(CaptionNode, args))


def _exit(code: int) -> None:
    # Everything is shut down by now (worker joined, node destroyed, rclpy shut down); what is left
    # is Python unloading torch/transformers, which takes 1-2 s and would break the promise that
    # Ctrl-C ends the node within 2 s.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(make_node: Callable[[], Node], args: list[str] | None = None) -> int:
    """Spin the node `make_node` builds until Ctrl-C; a refused start is one line and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Ctrl-C and SIGTERM (ros2 launch's) arrive as KeyboardInterrupt, not as rclpy's shutdown: the context
    # stays valid, so the node can wait for its last captions and answers to be acknowledged before it goes.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except RCLError as exc:  # a malformed --ros-args rule, e.g. `-p model:=` with nothing after it
        print(f"{NODE_NAME}: error: the ROS arguments cannot be parsed ({str(exc).split(', at ')[0]})",
              file=sys.stderr)
        return 2
    node = None
    code = 0
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_SLICE_S)
    except UserError as exc:
        print(f"{NODE_NAME}: error: {exc}", file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Shutting down: a second Ctrl-C or SIGTERM must not break off the cleanup. A terminal's Ctrl-C under
        # `ros2 launch` is two: the terminal's to the process group, then launch's own a moment later, which
        # landed inside node.close() (a KeyboardInterrupt there, or an abort from rclpy's C++ while a
        # subscription was being destroyed). The cleanup is bounded (the worker's join, a quarter of a
        # second for acknowledgements), so nothing more is needed to stop it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if node is not None:
            node.close()
        # The DDS teardown is bounded too (clip_vlm_core.teardown): a rare middleware deadlock in it would
        # otherwise leave a node that ignores Ctrl-C (ignored above) until someone kills it. It ends with the
        # node's own exit code: its captions are out by then.
        with bounded_teardown(exit_code=code):
            if node is not None:
                node.destroy_node()
            rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
