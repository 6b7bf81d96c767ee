"""Measure the caption node against the captioner it wraps, and print the numbers.

    .venv/bin/python tests/helpers/node_bench.py [--model PATH] [--device cpu] [--seconds 4]

1. The node's added latency: p50 of (source stamp -> caption received by another process) for
   1600x900 front/back JPEG pairs, against the p50 of calling SceneCaptioner.caption directly on the
   same JPEG bytes (the captioner decodes them, as it does for the node; `--direct-from decoded`
   gives it the frames decoded to arrays beforehand, as versions that decoded in the callback did).
   The two alternate, one pair to the node then one direct call, `--rounds` times, so both see the
   same machine load; a 1 pair/s stream to the node is timed as well.
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
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from clip_vlm_core.teardown import bounded_teardown

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


_DIRECT_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="direct")


def in_thread(fn):
    """fn() run on another thread, as the node's worker runs the captioner (see direct_p50_ms): always the
    same thread, as the node's worker is, so neither pays for a new thread's OpenMP team."""
    return _DIRECT_THREAD.submit(fn).result()


def direct_p50_ms(captioner, jpegs: list[bytes], max_new_tokens: int, runs: int = 7,
                  decoded: bool = False) -> tuple[float, str]:
    """p50 of the captioner alone on the pair's JPEG bytes (or on the decoded arrays), and the caption
    it gives (greedy: always the same).

    Called from a thread, as the node's worker calls it: on a loaded 2-core machine torch's main-thread
    OpenMP pool was measured 10-20x slower than the same call from another thread, which would make
    the node look faster than the bare captioner.
    """
    return in_thread(lambda: _direct(captioner, jpegs, max_new_tokens, runs, decoded))


def direct_sample(jpegs: list[bytes], decoded: bool) -> dict:
    from clip_vlm_core.stream.frames import decode_compressed

    if decoded:
        return {"CAM_FRONT": decode_compressed(jpegs[0]), "CAM_BACK": decode_compressed(jpegs[1])}
    from clip_vlm_core.images import EncodedImage

    return {"CAM_FRONT": EncodedImage.checked(jpegs[0]), "CAM_BACK": EncodedImage.checked(jpegs[1])}


def direct_once_ms(captioner, jpegs: list[bytes], max_new_tokens: int, decoded: bool) -> float:
    frames = direct_sample(jpegs, decoded)  # decoded arrays: outside the timing, as the node hands them over
    start = time.perf_counter()
    captioner.caption([frames], max_new_tokens=max_new_tokens)
    return (time.perf_counter() - start) * 1e3


def _direct(captioner, jpegs: list[bytes], max_new_tokens: int, runs: int, decoded: bool) -> tuple[float, str]:
    caption = captioner.caption([direct_sample(jpegs, decoded)], max_new_tokens=max_new_tokens)[0]
    times = [direct_once_ms(captioner, jpegs, max_new_tokens, decoded) for _ in range(runs)]
    return statistics.median(times), caption


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rates", default="2,5,10,15,20,30", help="input rates to sweep ('' for none)")
    parser.add_argument("--slow-seconds", type=float, default=6.0, help="how long the 1 pair/s run lasts")
    parser.add_argument("--rounds", type=int, default=30, help="alternating node/direct rounds")
    parser.add_argument("--direct-from", choices=("jpeg", "decoded"), default="jpeg",
                        help="what the direct call gets: the JPEG bytes, or frames decoded beforehand")
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
        decoded = args.direct_from == "decoded"
        direct, direct_caption = direct_p50_ms(captioner, jpegs, args.max_new_tokens, decoded=decoded)
        print(f"captioner called directly on one 1600x900 front/back pair ({args.direct_from}): p50 {direct:.1f} ms")
        node_process = psutil.Process(node.pid)

        def node_once_ms(timeout: float = 30.0) -> float:
            """One pair to the node, and the time until its caption is back (source stamp -> marker)."""
            probe.markers.clear()
            stamp_ns, header = probe.stamp()
            for view, data in zip(("CAM_FRONT", "CAM_BACK"), jpegs, strict=True):
                probe.pubs[view].publish(CompressedImage(header=header, format="jpeg", data=data))
            end = time.monotonic() + timeout
            while not any(m["stamp_ns"] == stamp_ns for m in probe.markers) and time.monotonic() < end:
                # Blocks until the marker arrives (stamped in its callback), so this process does not
                # poll for CPU the node needs on a 2-core machine.
                probe.spin_for(0.05)
            marker = next(m for m in probe.markers if m["stamp_ns"] == stamp_ns)
            return (marker["received_ns"] - stamp_ns) / 1e6

        node_ms, direct_ms = [], []
        for _ in range(args.rounds):
            node_ms.append(node_once_ms())
            probe.spin_for(0.1)  # the node's worker idle again, its diagnostics out of the way
            direct_ms.append(in_thread(lambda: direct_once_ms(captioner, jpegs, args.max_new_tokens, decoded)))
        node_p50, direct_p50 = statistics.median(node_ms), statistics.median(direct_ms)
        print(f"alternating, {args.rounds} rounds: node p50 {node_p50:.1f} ms, direct p50 {direct_p50:.1f} ms -> "
              f"added by the node {node_p50 - direct_p50:.1f} ms ({node_p50 / direct_p50:.3f}x); "
              f"median of per-round ratios {statistics.median(n / d for n, d in zip(node_ms, direct_ms, strict=True)):.3f}, "
              f"of per-round differences {statistics.median(n - d for n, d in zip(node_ms, direct_ms, strict=True)):.1f} ms")

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

        slow = run_rate(1.0, max(6.0, args.slow_seconds))  # one pair a second: no queueing, the node's own delay
        if any(m["text"] != direct_caption for m in probe.markers):
            print("warning: the node's captions differ from the direct call's: are both loading the same model?")
        print(f"node, 1 pair/s, rate_hz 20: end-to-end p50 {slow['p50']:.1f} ms over {slow['captions']} captions "
              f"-> added by the node {slow['p50'] - direct:.1f} ms ({slow['p50'] / direct:.3f}x the direct call; "
              "DDS both ways, header checks, pairing, hand-over to the worker, publishing)")
        direct_again, _ = direct_p50_ms(captioner, jpegs, args.max_new_tokens, decoded=decoded)
        print(f"captioner called directly again right after: p50 {direct_again:.1f} ms "
              f"(node / mean of both direct figures: {slow['p50'] / ((direct + direct_again) / 2):.3f}x)")
        best = 0.0
        print("input Hz  pairs sent  frames received  captions  latency p50/p95 ms  RSS growth MB  sustained")
        for rate in (float(r) for r in args.rates.split(",") if r):
            r = run_rate(rate, args.seconds)
            ok = r["received"] >= 0.95 * r["sent"] and r["p95"] < 1000.0 and r["rss_growth_mb"] < 20.0
            best = rate if ok else best
            print(f"{rate:8.1f}  {r['sent']:10d}  {r['received']:15d}  {r['captions']:8d}  "
                  f"{r['p50']:8.1f} / {r['p95']:7.1f}  {r['rss_growth_mb']:13.1f}  {'yes' if ok else 'no'}")
        print(f"highest sustained input rate under policy latest: {best:.0f} Hz per camera (2 x 1600x900 JPEG)")
        again, _ = direct_p50_ms(captioner, jpegs, args.max_new_tokens, decoded=decoded)
        print(f"captioner called directly again after the sweep: p50 {again:.1f} ms (the spread is machine load)")
    finally:
        with bounded_teardown(exit_code=1):
            probe.destroy_node()
            rclpy.try_shutdown()
        node.send_signal(signal.SIGINT)
        node.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
