"""How fast `clip-vlm label` labels on this machine: pairs/s on Ray Data against a plain loop.

    python -m clip_vlm_core.label.bench                          # ~600 pairs in 6 bags, workers 1 and 2
    python -m clip_vlm_core.label.bench --pairs 1200 --workers 1 2 4 --checkpoint runs/x/best

The bags are synthetic nuScenes scenes at full size (1600x900 JPEGs of camera-like size, made by
clip_vlm_core.bags.bench) converted by `bag convert` with sweeps. The same pairs are labelled
1. by a plain single-process loop: open each bag, pair its frames (pairs.bag_pairs), decode each batch
   of `--batch-size` pairs on the model's device and caption it, one batch after another;
2. by `clip-vlm label`'s library call on Ray Data (Ray started afresh each time), with each worker count.
Each measurement is repeated `--rounds` times, the runs taken in turn (each round in another order) so
that other work on a shared machine weighs on all of them, and medians are reported. Every figure is a
steady state: the pairs after the first batch (the loop) or after the first rows that
reached the driver (Ray), over the time from then to the last. Ray's start-up and the time to its first
rows (workers starting, loading the model) are printed apart. The overhead at 1 worker is
1 - (Ray's pairs/s at 1 worker) / (the loop's pairs/s).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

from clip_vlm_core.config import DecodingConfig


@dataclasses.dataclass
class Measure:
    name: str
    pairs: int
    steady_pairs: int
    steady_s: float
    start_s: float = 0.0  # Ray's start-up
    first_s: float = 0.0  # to the first result: model loading (and, on Ray, workers starting)

    @property
    def rate(self) -> float:
        return self.steady_pairs / self.steady_s if self.steady_s > 0 else 0.0


def make_bags(root: Path, bags: int, pairs_per_bag: int) -> list[Path]:
    """`bags` bags of about `pairs_per_bag` pairs: synthetic scenes, keyframes and 4 sweeps between them."""
    from clip_vlm_core.bags.bench import synthetic_tree
    from clip_vlm_core.bags.convert import BagConvertOptions, convert_scene
    from clip_vlm_core.bags.scene_plan import load_nuscenes

    sweeps = 4
    samples = max(2, -(-(pairs_per_bag + sweeps) // (sweeps + 1)))
    tree = synthetic_tree(root / "nuscenes", bags, samples, sweeps)
    nusc = load_nuscenes(tree, "v1.0-mini")
    options = BagConvertOptions(sweeps=True, progress=False)
    return [convert_scene(nusc, scene["name"], root / "bags", options) for scene in nusc.scene[:bags]]


def plain_loop(bags: list[Path], checkpoint: str | None, batch_size: int, decoding: DecodingConfig) -> Measure:
    """The same pairs captioned by one process, one batch after another, without Ray."""
    from clip_vlm_core.bags.reader import open_bag
    from clip_vlm_core.label.pairs import bag_pairs, camera_topics
    from clip_vlm_core.model import SceneCaptioner

    started = time.perf_counter()
    captioner = SceneCaptioner.from_pretrained(checkpoint, "cpu")
    settings = captioner.decoding_in_effect(decoding)
    pairs, first_done, first_pairs = 0, None, 0

    def caption(batch: list) -> None:
        nonlocal pairs, first_done, first_pairs
        samples = [dict(zip(captioner.views, p.images, strict=True)) for p in batch]
        flat = [image for s in samples for image in s.values()]
        decoded = iter(captioner.decode_frames(flat))
        samples = [{view: next(decoded) for view in s} for s in samples]
        captioner.caption(samples, decoding=settings)
        pairs += len(batch)
        if first_done is None:
            first_done, first_pairs = time.perf_counter(), pairs

    for path in bags:
        with open_bag(path) as bag:
            batch = []
            for pair in bag_pairs(bag, camera_topics(bag, captioner.views), 50.0):
                batch.append(pair)
                if len(batch) == batch_size:
                    caption(batch)
                    batch = []
            if batch:
                caption(batch)
    return Measure("plain loop, 1 process", pairs, pairs - first_pairs, time.perf_counter() - first_done,
                   first_s=first_done - started)


def on_ray(bags: list[Path], labels: Path, checkpoint: str | None, batch_size: int, decoding: DecodingConfig,
           workers: int) -> Measure:
    from clip_vlm_core.label import run
    from clip_vlm_core.label.labeller import LabelSettings

    settings = LabelSettings(checkpoint=checkpoint, decoding=decoding, batch_size=batch_size)
    result = run.label([str(b) for b in bags], labels, settings, workers=workers, progress=False, say=lambda _: None)
    report = result.report
    return Measure(f"Ray Data, {result.workers.describe()}", report.labelled, report.steady_pairs, report.steady_s,
                   report.ray_start_s, report.first_rows_s)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, load average {load}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=600, help="pairs in all (default %(default)s)")
    parser.add_argument("--bags", type=int, default=6, help="bags they are in, at most 10 (default %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts (default 1 2)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per model call (default %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=DecodingConfig().max_new_tokens)
    parser.add_argument("--checkpoint", default=None, help="model (default: the embedded one)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measure everything this many times, in turn, each round in another order (default %(default)s)")
    args = parser.parse_args(argv)
    decoding = DecodingConfig(max_new_tokens=args.max_new_tokens)
    # Each plain loop runs in a fresh process (as a Ray worker does), so what this one imported costs it nothing.
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="clip-vlm-label-bench-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        with spawn.Pool(1) as pool:
            bags = pool.apply(make_bags, (tmp, args.bags, -(-args.pairs // args.bags)))
        print(f"machine: {machine()}")
        print(f"{len(bags)} bags made in {time.perf_counter() - started:.1f} s; batch size {args.batch_size}, "
              f"max_new_tokens {args.max_new_tokens}, model {args.checkpoint or 'embedded-default'}, CPU")
        runs = [("loop", 0), *(("ray", w) for w in args.workers)]
        measured: dict[tuple[str, int], list[Measure]] = {run: [] for run in runs}
        for round_ in range(args.rounds):
            for kind, workers in runs[round_ % len(runs):] + runs[: round_ % len(runs)]:  # drift spread over all
                if kind == "loop":
                    with spawn.Pool(1) as pool:
                        result = pool.apply(plain_loop, (bags, args.checkpoint, args.batch_size, decoding))
                else:
                    result = on_ray(bags, tmp / f"labels-{round_}-{workers}", args.checkpoint, args.batch_size, decoding,
                                    workers)
                measured[(kind, workers)].append(result)
                print(f"  round {round_ + 1}: {result.name}: {result.rate:.2f} pairs/s "
                      f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        _report(measured, runs)


def _report(measured: dict[tuple[str, int], list[Measure]], runs: list[tuple[str, int]]) -> None:
    from clip_vlm_core.latency import percentile

    def median(values: list[float]) -> float:
        return percentile(values, 50)

    base = median([m.rate for m in measured[("loop", 0)]])
    print(f"\nmedians of {len(measured[runs[0]])} rounds (steady state; Ray's start-up and first rows apart)")
    print(f"{'run':<80} {'pairs':>6} {'steady pairs':>13} {'pairs/s':>8} {'vs loop':>8} {'Ray start s':>12} "
          f"{'first rows s':>13}  per round")
    for run in runs:
        ms = measured[run]
        rate = median([m.rate for m in ms])
        print(f"{ms[0].name:<80} {ms[0].pairs:>6} {ms[0].steady_pairs:>13} {rate:>8.2f} {rate / base if base else 0:>7.2f}x "
              f"{median([m.start_s for m in ms]):>12.1f} {median([m.first_s for m in ms]):>13.1f}  "
              + " ".join(f"{m.rate:.2f}" for m in ms))
    if ("ray", 1) in measured and base:
        one = median([m.rate for m in measured[("ray", 1)]])
        print(f"engine overhead at 1 worker: {100 * (1 - one / base):+.1f} % of the plain loop's pairs/s "
              f"(target <= 10 %; negative: faster)")


if __name__ == "__main__":
    main()
