"""caption_lifecycle_node driven through its lifecycle services from another process, as a lifecycle
manager or `ros2 lifecycle set` drives it, and the launch decision that starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clip_vlm.launch_plan import EXECUTABLES, caption_plan
from test_node import FAST_DECODING, PACKAGE, probe, ros_args, ros_env, stop_node

from clip_vlm_core.teardown import bounded_teardown

LIFECYCLE_NODE = Path(sys.executable).parent / "caption_lifecycle_node"  # the running venv's, as test_node's
CAMERA_TOPICS = ("/CAM_FRONT/image_raw/compressed", "/CAM_BACK/image_raw/compressed")

pytestmark = pytest.mark.skipif(not LIFECYCLE_NODE.exists(), reason="caption_lifecycle_node is not installed: "
                                "run `make venv`")
pytestmark = [pytestmark, pytest.mark.ros]  # `make test` runs these under Kilted and Jazzy


class LifecycleClient:
    """/caption_node's lifecycle services and the graph, seen from this process."""

    def __init__(self, env: dict[str, str]) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=int(env["ROS_DOMAIN_ID"]))
        self.node = rclpy.create_node("lifecycle_test_client", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def call(self, service_type: type, name: str, request: object):
        client = self.node.create_client(service_type, f"/caption_node/{name}")
        try:
            assert client.wait_for_service(timeout_sec=60), f"no /caption_node/{name} service"
            future = client.call_async(request)
            self.executor.spin_until_future_complete(future, timeout_sec=120)  # configure loads the model
            assert future.done(), f"/caption_node/{name} did not answer"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState

        return self.call(GetState, "get_state", GetState.Request()).current_state.label

    def transition(self, label: str) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        transition = Transition(id=getattr(Transition, f"TRANSITION_{label.upper()}"))
        return self.call(ChangeState, "change_state", ChangeState.Request(transition=transition)).success

    def camera_subscribers(self, settle_s: float = 1.0) -> int:
        time.sleep(settle_s)  # the graph learns of a change within a moment
        self.executor.spin_once(timeout_sec=0.1)
        return sum(self.node.count_subscribers(topic) for topic in CAMERA_TOPICS)

    def close(self) -> None:
        import rclpy

        with bounded_teardown(exit_code=1):  # a DDS hang ends the run with its stacks rather than stalling it
            self.node.destroy_node()
            rclpy.shutdown(context=self.context)


def start_lifecycle_node(params: dict, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([str(LIFECYCLE_NODE), *ros_args(params)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # 20-40 s on 2 shared cores
def test_the_lifecycle_node_captions_only_while_active_through_every_transition(tmp_path):
    env = ros_env()
    proc = start_lifecycle_node({"policy": "all", "rate_hz": 20.0, "max_age_ms": 60000.0, **FAST_DECODING}, env)
    client = LifecycleClient(env)
    try:
        assert client.state() == "unconfigured" and client.camera_subscribers() == 0
        assert client.transition("configure") and client.state() == "inactive"
        assert client.camera_subscribers() == 0  # the model is loaded, nothing is subscribed yet
        assert client.transition("activate") and client.state() == "active"
        first = probe(env, tmp_path, [{"kind": "pairs", "count": 3, "rate": 5.0},
                                      {"kind": "wait_captions", "count": 3, "timeout": 30.0}])
        assert [m["stamp_ns"] for m in first["markers"]] == first["sent_pairs"]
        assert client.transition("deactivate") and client.state() == "inactive"
        assert client.camera_subscribers() == 0
        assert client.transition("cleanup") and client.state() == "unconfigured"  # the model is freed
        assert client.transition("configure") and client.transition("activate")  # loaded again, a new worker
        again = probe(env, tmp_path, [{"kind": "pairs", "count": 2, "rate": 5.0},
                                      {"kind": "wait_captions", "count": 2, "timeout": 30.0}])
        assert [m["stamp_ns"] for m in again["markers"]] == again["sent_pairs"]
        assert client.transition("active_shutdown") and client.state() == "finalized"
        assert client.camera_subscribers() == 0
    finally:
        client.close()
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(10)
        stopped_in = time.monotonic() - start
    log = proc.stdout.read()
    assert code == 0 and stopped_in < 2.0 and "Traceback" not in log, log[-3000:]
    assert log.count("model embedded-default on cpu") == 2  # loaded on each configure
    assert log.count("captioning /CAM_FRONT/image_raw/compressed") == 2  # once per activation


def test_a_failed_configure_is_said_in_one_sentence_and_leaves_the_node_unconfigured():
    env = ros_env()
    proc = start_lifecycle_node({"model": "/no/such/checkpoint"}, env)
    client = LifecycleClient(env)
    try:
        assert client.state() == "unconfigured"
        assert not client.transition("configure")
        assert client.state() == "unconfigured"  # ready to be configured again
    finally:
        client.close()
        stop_node(proc)
    log = proc.stdout.read()
    failed = [line for line in log.splitlines() if "configure failed: " in line]
    assert len(failed) == 1 and "/no/such/checkpoint" in failed[0] and "Traceback" not in log, log[-3000:]


def test_a_parameter_out_of_range_refuses_the_lifecycle_node_at_start_as_the_plain_one():
    done = subprocess.run([str(LIFECYCLE_NODE), *ros_args({"rate_hz": 0.0})], env=ros_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("caption_node: error: parameter rate_hz")


@pytest.mark.parametrize(("lifecycle", "executable"), [("false", "caption_node"), ("true", "caption_lifecycle_node"),
                                                       ("True", "caption_lifecycle_node")])
def test_the_launch_argument_lifecycle_chooses_the_managed_node(lifecycle, executable):
    params = str(PACKAGE / "config" / "caption.yaml")
    plan = caption_plan(params, "", "", "car1", "false", "false", lifecycle, lambda name: False)
    assert (plan.executable, plan.lifecycle) == (executable, executable == EXECUTABLES[True])
    assert (Path(LIFECYCLE_NODE).parent / plan.executable).exists()
