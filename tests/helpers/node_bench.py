"""Measure the caption node against the captioner it wraps, and print the numbers.

    .venv/bin/python tests/helpers/node_bench.py [--model PATH] [--device cpu] [--seconds 4]

1. The node's added latency: p50 of (source stamp -> caption received by another process) for
   1600x900 front/back JPEG pairs, minus the p50 of calling SceneCaptioner.caption directly on the
   same decoded frames.
2. The highest input rate of two 1600x900 compressed streams the node sustains under policy latest:
   each rate runs for --seconds; sustained means >= 95 % of frames received, caption latency p95
   under 1 s and the node's RSS not growing by more than 20 MB over the step.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 1600, 900


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, python {platform.python_version()}"


def synthetic_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (HEIGHT // 50, WIDTH // 50, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(small).resize((WIDTH, HEIGHT)).save(out, format="JPEG", quality=85)
    return out.getvalue()


def load_captioner(model: str, device: str):
    from clip_vlm_core.model import SceneCaptioner

    return SceneCaptioner.from_pretrained(model or None, device=device or None)


def direct_p50_ms(captioner, jpegs: list[bytes], max_new_tokens: int, runs: int = 5) -> tuple[float, str]:
    """p50 of the captioner alone on the decoded pair, and the caption it gives (greedy: always the same).

    Called from a thread, as the node's worker calls it: on a loaded 2-core machine torch's main-thread
    OpenMP pool was measured 10-20x slower than the same call from another thread, which would make
    the node look faster than the bare captioner.
    """
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_direct(captioner, jpegs, max_new_tokens, runs)))
    worker.start()
    worker.join()
    return result[0]


def _direct(captioner, jpegs: list[bytes], max_new_tokens: int, runs: int) -> tuple[float, str]:
    from clip_vlm_core.stream.frames import decode_compressed

    sample = {"CAM_FRONT": decode_compressed(jpegs[0]), "CAM_BACK": decode_compressed(jpegs[1])}
    caption = captioner.caption([sample], max_new_tokens=max_new_tokens)[0]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        captioner.caption([sample], max_new_tokens=max_new_tokens)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), caption


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rates", default="2,5,10,15,20,30")
    args = parser.parse_args()
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    jpegs = [synthetic_jpeg(0), synthetic_jpeg(1)]
    print(f"machine: {machine()}")
    import rclpy
    from node_probe import Probe
    from sensor_msgs.msg import CompressedImage

    node = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "caption_node"), "--ros-args", "-p", "policy:=latest", "-p", "rate_hz:=20.0",
         *(["-p", f"model:={args.model}"] if args.model else []), *(["-p", f"device:={args.device}"] if args.device else []),
         "-p", f"max_new_tokens:={args.max_new_tokens}", "-p", "publish_image:=false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    captioner = load_captioner(args.model, args.device)  # while the node loads its own copy
    rclpy.init()
    probe = Probe("compressed")
    try:
        probe.wait_for_node(120.0)
        direct, direct_caption = direct_p50_ms(captioner, jpegs, args.max_new_tokens)
        print(f"captioner called directly, one 1600x900 front/back pair: p50 {direct:.1f} ms")
        node_process = psutil.Process(node.pid)

        def run_rate(rate: float, seconds: float) -> dict:
            probe.markers.clear()
            sent_before = {v: int(probe.diagnostics.get(f"{v}.received", "0")) for v in ("CAM_FRONT", "CAM_BACK")}
            rss_before = node_process.memory_info().rss
            end, sent, next_send = time.monotonic() + seconds, 0, time.monotonic()
            while time.monotonic() < end:
                _, header = probe.stamp()
                for view, data in zip(("CAM_FRONT", "CAM_BACK"), jpegs, strict=True):
                    probe.pubs[view].publish(CompressedImage(header=header, format="jpeg", data=data))
                sent += 1
                next_send += 1.0 / rate
                probe.spin_for(max(0.0, next_send - time.monotonic()))
            probe.spin_for(1.5)  # the last captions and one more diagnostics message
            received = min(int(probe.diagnostics.get(f"{v}.received", "0")) - sent_before[v] for v in sent_before)
            latencies = [(m["received_ns"] - m["stamp_ns"]) / 1e6 for m in probe.markers]
            return {
                "sent": sent,
                "received": received,
                "captions": len(latencies),
                "p50": statistics.median(latencies) if latencies else float("nan"),
                "p95": float(np.percentile(latencies, 95)) if latencies else float("nan"),
                "rss_growth_mb": (node_process.memory_info().rss - rss_before) / 2**20,
            }

        slow = run_rate(1.0, max(6.0, args.seconds))  # one pair a second: no queueing, the node's own delay
        if any(m["text"] != direct_caption for m in probe.markers):
            print("warning: the node's captions differ from the direct call's: are both loading the same model?")
        print(f"node, 1 pair/s, rate_hz 20: end-to-end p50 {slow['p50']:.1f} ms -> added by the node "
              f"{slow['p50'] - direct:.1f} ms ({slow['p50'] / direct:.2f}x the direct call; includes JPEG decode, "
              f"DDS both ways and on average half a 50 ms tick)")
        best = 0.0
        print("input Hz  pairs sent  frames received  captions  latency p50/p95 ms  RSS growth MB  sustained")
        for rate in (float(r) for r in args.rates.split(",")):
            r = run_rate(rate, args.seconds)
            ok = r["received"] >= 0.95 * r["sent"] and r["p95"] < 1000.0 and r["rss_growth_mb"] < 20.0
            best = rate if ok else best
            print(f"{rate:8.1f}  {r['sent']:10d}  {r['received']:15d}  {r['captions']:8d}  "
                  f"{r['p50']:8.1f} / {r['p95']:7.1f}  {r['rss_growth_mb']:13.1f}  {'yes' if ok else 'no'}")
        print(f"highest sustained input rate under policy latest: {best:.0f} Hz per camera (2 x 1600x900 JPEG)")
        again, _ = direct_p50_ms(captioner, jpegs, args.max_new_tokens)
        print(f"captioner called directly again after the sweep: p50 {again:.1f} ms (the spread is machine load)")
    finally:
        probe.destroy_node()
        rclpy.try_shutdown()
        node.send_signal(signal.SIGINT)
        node.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
