"""`clip-vlm label --address` on a two-node Ray cluster on this one machine (`ray start --head`, then `ray start
--address` as a second node, each with one CPU): the same job, its bags split across the two nodes' workers."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from intact import REPO

from clip_vlm_core.bags.reader import open_bag
from clip_vlm_core.label.pairs import bag_pairs, camera_topics

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`ray start ... --block`: the node runs as long as this process (and its group) does."""
    node = subprocess.Popen([str(RAY), "start", "--block", "--num-cpus=1", "--disable-usage-stats", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        line = node.stdout.readline()
        lines.append(line)
        if not line or "Running subprocesses are monitored" in line:
            break
    assert node.poll() is None, "".join(lines)[-3000:]
    return node


@pytest.mark.skipif(not RAY.exists(), reason="the ray command is not installed: run `make venv`")
def test_a_two_node_cluster_on_this_machine_runs_the_same_job(scene_bags, tmp_path):
    # Token authentication, as Ray sets it up by default, with a token of this test's own (no file in ~/.ray).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    # A temporary folder of its own (short: Ray's sockets live in it): the cluster's address is recorded there,
    # not in /tmp/ray/ray_current_cluster, where a later `ray.init()` on this machine would look for it.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    nodes = []
    try:
        nodes.append(start_node(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"], env))
        nodes.append(start_node([f"--address=127.0.0.1:{port}"], env))
        labels = tmp_path / "labels"
        done = subprocess.run([sys.executable, "-m", "clip_vlm_core", "label", *map(str, scene_bags), "--out", str(labels),
                               "--address", f"127.0.0.1:{port}", "--workers", "2", "--max-new-tokens", "12"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGKILL)  # the node and every process it started
            node.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on a Ray cluster of 2 nodes, 2 CPUs" in done.stdout and f"joined 127.0.0.1:{port}" in done.stdout
    rows = pq.ParquetDataset(sorted(labels.glob("part-*.parquet"))).read().to_pylist()
    assert len({r["key"] for r in rows}) == len(rows) == 30
    for bag in scene_bags:
        with open_bag(bag) as opened:
            pairs = {p.stamps_ns for p in bag_pairs(opened, camera_topics(opened, ("CAM_FRONT", "CAM_BACK")), 50.0)}
        assert {tuple(r["view_stamps_ns"]) for r in rows if r["bag"] == str(bag)} == pairs
    nodes_used = {r["worker"].split(" on node ")[1].split()[0] for r in rows}
    assert len(nodes_used) == 2, nodes_used  # both nodes' workers labelled
