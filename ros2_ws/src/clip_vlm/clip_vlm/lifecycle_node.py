"""`caption_lifecycle_node`: caption_node as a managed (lifecycle) node, for Nav2-style bring-up.

It starts unconfigured, with its parameters declared and checked, and does what caption_node does one
transition at a time (clip_vlm.captioning): configure loads the model and creates the publishers,
activate subscribes and starts captioning, deactivate stops it (the model stays loaded), cleanup frees
the model, shutdown does whatever of that is left. Drive it with a lifecycle manager, or by hand:

    ros2 run clip_vlm caption_lifecycle_node
    ros2 lifecycle set /caption_node configure
    ros2 lifecycle set /caption_node activate

A configure that fails (a checkpoint that does not exist, views the model does not read) is logged in one
sentence and leaves the node unconfigured, ready to try again.
"""

from __future__ import annotations

import sys

from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter

from clip_vlm.caption_node import NODE_NAME, _exit, run
from clip_vlm.captioning import Captioning
from clip_vlm_core.errors import UserError


class CaptionLifecycleNode(LifecycleNode):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        self.captioning = Captioning(self)
        self._configured = self._active = False

    def set_parameters_atomically(self, parameter_list: list[Parameter]) -> SetParametersResult:
        return self.captioning.set_parameters_atomically(parameter_list, super().set_parameters_atomically)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.captioning.configure()
        except UserError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            self.captioning.cleanup()
            return TransitionCallbackReturn.FAILURE
        self._configured = True
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.captioning.activate()
        self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._free()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"a transition from {state.label} raised an error: captioning stopped, model freed")
        self.close()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured, ready to be configured again

    def close(self) -> None:
        """Whatever is left to undo, from any state (shutdown, an error, Ctrl-C)."""
        self._stop()
        self._free()

    def _stop(self) -> None:
        if self._active:
            self.captioning.deactivate()
            self._active = False

    def _free(self) -> None:
        if self._configured:
            self.captioning.cleanup()
            self._configured = False


def main(args: list[str] | None = None) -> int:
    _exit(run(CaptionLifecycleNode, args))


if __name__ == "__main__":
    sys.exit(main())
