"""The Ray Data job: bags in, label rows streamed into LABELS as the workers make them.

    bags (one block each, largest first)
      -> map_batches(BagLabeller, compute=ActorPoolStrategy(size=workers), num_cpus/num_gpus per worker)
      -> the driver: rows into LabelStore (exactly once, parts written atomically), reports, progress

Ray runs on this machine by default (`ray.init()`), or joins the cluster `--address` / RAY_ADDRESS names
(every node needs clip-vlm installed and the bags and the checkpoint at the same paths); an already
running Ray in this process (tests) is used as it is. Each worker is one model replica, loaded once;
with GPUs in the cluster each gets one (`gpus_per_worker`), else it gets its share of the CPUs.

A bag is the unit of work: one worker reads, pairs and captions it. Its rows reach the driver in blocks
of about OUTPUT_BLOCK_BYTES as they are made (Ray Data would otherwise gather a whole bag's rows into
one block), so the bar moves and a run killed part-way has written what it had received.

Timing is reported in three parts: Ray's start-up, the time to the first rows (workers starting and
loading the model), and the steady state from the first rows to the last (pairs/s).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip_vlm_core.bags.reader import open_bag
from clip_vlm_core.errors import UserError
from clip_vlm_core.label.inputs import BagInput
from clip_vlm_core.label.labeller import BagLabeller, LabelSettings, done_keys
from clip_vlm_core.label.pairs import camera_topics, estimated_pairs
from clip_vlm_core.label.progress import Progress
from clip_vlm_core.label.store import LabelStore
from clip_vlm_core.label.write_bags import write_bags_batch

log = logging.getLogger(__name__)
OUTPUT_BLOCK_BYTES = 16 << 10  # ~50 label rows: small enough to stream, large enough to cost Ray nothing
# Bags go out only once every worker has loaded its model: without this Ray Data hands bags to the first
# worker ready, and a worker that loads slower (a busy node, a cold disk) may find none left.
WORKERS_READY_S = 600


@dataclass(frozen=True)
class PlannedBag:
    input: BagInput
    estimate: int  # pairs, at most (from the bag's metadata)


def plan_bags(bags: list[BagInput], views: tuple[str, ...], settings: LabelSettings
              ) -> tuple[list[PlannedBag], list[tuple[str, str]]]:
    """Each bag opened here once (its metadata and storage headers checked, nothing inflated) to estimate
    its pairs and find its cameras; a bag that fails is (shown, why), and the run goes on without it."""
    planned, skipped = [], []
    for bag_input in bags:
        try:
            with open_bag(bag_input.path) as bag:
                cameras = camera_topics(bag, views, settings.topic_template, settings.transport)
                planned.append(PlannedBag(bag_input, estimated_pairs(bag, cameras, settings.every_s)))
        except UserError as exc:
            skipped.append((bag_input.shown, str(exc).replace(f"bag {bag_input.path}", f"bag {bag_input.shown}")))
    return planned, skipped


@dataclass(frozen=True)
class Workers:
    """How many model replicas, and what each takes from the cluster."""

    count: int
    cpus: float
    gpus: float
    nodes: int
    cluster_cpus: float
    cluster_gpus: float

    def describe(self) -> str:
        each = f"{self.gpus:g} GPU" if self.gpus else f"{self.cpus:g} CPU{'s' if self.cpus != 1 else ''}"
        return (f"{self.count} worker{'s' if self.count != 1 else ''} ({each}{' each' if self.count > 1 else ''}) on a Ray cluster of "
                f"{self.nodes} node{'s' if self.nodes != 1 else ''}, {self.cluster_cpus:g} CPUs, {self.cluster_gpus:g} GPUs")


def plan_workers(count: int | None, cpus: float | None, gpus: float | None, device: str | None) -> Workers:
    """Workers that fit the running Ray cluster (see `choose_workers`)."""
    import ray

    resources = ray.cluster_resources()
    nodes = [float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    return choose_workers(count, cpus, gpus, device, float(resources.get("CPU", 0)), float(resources.get("GPU", 0)),
                          nodes)


def choose_workers(count: int | None, cpus: float | None, gpus: float | None, device: str | None,
                   total_cpus: float, total_gpus: float, node_cpus: list[float]) -> Workers:
    """By default one worker per GPU, a GPU each (`device` cpu: none); without GPUs one worker with all the
    CPUs, or `count` workers sharing them (never more than the largest node has). What cannot fit is a
    UserError saying what the cluster has."""
    if gpus is None:
        gpus = 1.0 if total_gpus >= 1 and device != "cpu" else 0.0
    if count is None:
        count = max(1, int(total_gpus // gpus)) if gpus else 1
    if cpus is None:
        largest = max(node_cpus, default=total_cpus)
        cpus = 1.0 if gpus else max(1.0, min(largest, float(int(total_cpus // count))))
    if count < 1 or cpus <= 0 or gpus < 0:
        raise UserError("--workers must be at least 1 and --cpus-per-worker above 0")
    if count * gpus > total_gpus + 1e-9:
        raise UserError(f"--workers {count} with {gpus:g} GPU each need {count * gpus:g} GPUs; the Ray cluster has "
                        f"{total_gpus:g}")
    if count * cpus > total_cpus + 1e-9:
        raise UserError(f"--workers {count} with {cpus:g} CPU each need {count * cpus:g} CPUs; the Ray cluster has "
                        f"{total_cpus:g} (lower --workers or --cpus-per-worker)")
    return Workers(count, cpus, gpus, len(node_cpus), total_cpus, total_gpus)


@dataclass
class RunReport:
    bags: list[dict[str, Any]] = field(default_factory=list)  # each bag's report (labeller.BagLabeller.label)
    labelled: int = 0
    already: int = 0
    failed: int = 0
    ray: str = ""  # how Ray came: started (here) | joined ADDRESS | running (in this process already)
    ray_start_s: float = 0.0  # how long ray.init took
    first_rows_s: float = 0.0  # job start to the first rows: workers started, model loaded, first batch
    steady_pairs: int = 0  # pairs labelled after the first rows arrived ...
    steady_s: float = 0.0  # ... in this long
    total_s: float = 0.0
    interrupted: bool = False

    @property
    def steady_pairs_per_s(self) -> float:
        return self.steady_pairs / self.steady_s if self.steady_s > 0 else 0.0


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[tuple[str, float]]:
    """Ray for the run, left at the end; yields (how: "running" | "started" | "joined ADDRESS", seconds it took).

    This process's Ray if it runs already (tests); else the cluster `address` names (or RAY_ADDRESS; "auto":
    the one `ray start` runs on this machine); else a Ray of its own on this machine (`address="local"`, so a
    cluster someone started here with `ray start`, or one killed without `ray stop`, is never joined by
    surprise)."""
    import ray

    if ray.is_initialized():
        yield "running", 0.0
        return
    joined = address or os.environ.get("RAY_ADDRESS") or None
    if joined:
        check_reachable(joined)
    started = time.monotonic()
    try:
        ray.init(address=joined or "local", include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {joined}" if joined else "Ray"
        raise UserError(f"{where} cannot be {'reached' if joined else 'started'} "
                        f"({' '.join(str(exc).split())[:200]})") from None
    try:
        yield (f"joined {joined}" if joined else "started"), time.monotonic() - started
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT nobody answers on is one sentence now, not minutes of Ray retrying."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return  # "auto", or a form Ray reads itself (and says what is wrong with it)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"the Ray cluster at {address} cannot be reached ({exc.strerror or exc}); start it with "
                        f"'ray start --head', or check --address / RAY_ADDRESS") from None


def label_bags(planned: list[PlannedBag], settings: LabelSettings, store: LabelStore, workers: Workers,
               progress: Progress, report: RunReport) -> RunReport:
    """Run the job (Ray already up) and stream its rows into `store`; `report` fills as it goes (so an
    interrupted run still says what it did)."""
    import pyarrow.compute as pc
    import ray.data

    estimates = {str(p.input.path): p.estimate for p in planned}
    order = sorted(planned, key=lambda p: -p.estimate)  # the longest bags first: the last bag ends sooner
    items = [{"path": str(p.input.path), "shown": p.input.shown} for p in order]
    context = ray.data.DataContext.get_current()
    saved = context.target_max_block_size, context.enable_progress_bars, context.wait_for_min_actors_s
    context.target_max_block_size, context.enable_progress_bars = OUTPUT_BLOCK_BYTES, False
    context.wait_for_min_actors_s = WORKERS_READY_S
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its plan and progress lines; ours say what is done
    try:  # the context is sealed into the dataset when it is made
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            # One bag in flight per worker: a bag is minutes of work, and a bag queued behind another on a
            # worker that started first would wait while a later worker has nothing.
            BagLabeller, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=workers.count, max_tasks_in_flight_per_actor=1),
            num_cpus=workers.cpus, num_gpus=workers.gpus or None, batch_format="numpy",
            fn_constructor_kwargs={"settings": _for_workers(settings, workers), "done": done_keys(store.keys)},
        )
    finally:
        context.target_max_block_size, context.enable_progress_bars, context.wait_for_min_actors_s = saved
    started = time.monotonic()
    first_at, first_pairs = None, 0
    try:
        for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            is_report = pc.is_valid(block["report"])
            rows = block.filter(pc.invert(is_report))
            if rows.num_rows:
                store.add(rows)
                now = time.monotonic()
                if first_at is None:
                    first_at, first_pairs = now, rows.num_rows
                    report.first_rows_s = now - started
                report.labelled += rows.num_rows
                report.steady_pairs, report.steady_s = report.labelled - first_pairs, now - first_at
                progress.labelled_pairs(rows.num_rows)
            for text in block.filter(is_report).column("report").to_pylist():
                bag = json.loads(text)
                report.bags.append(bag)
                report.already += bag.get("already", 0)
                report.failed += bag.get("failed", 0)
                progress.bag_done(bag, estimates.get(bag["path"], 0))
    except Exception as exc:
        found = _user_error(exc)
        if found is None and isinstance(exc, ray.exceptions.GetTimeoutError):
            found = UserError(f"the {workers.count} workers did not all start within {WORKERS_READY_S} s ({workers.describe()}): "
                              f"a node is short of what a worker asks, or loading the model failed; see Ray's logs")
        if found is None:
            raise
        raise UserError(str(found)) from None
    finally:
        report.total_s = time.monotonic() - started
    return report


def _for_workers(settings: LabelSettings, workers: Workers) -> LabelSettings:
    """What each worker runs with: on CPUs, torch uses the worker's share of them; no GPU, the CPU."""
    import dataclasses

    threads = 0 if workers.gpus else max(1, int(workers.cpus))
    device = settings.device or (None if workers.gpus else "cpu")
    return dataclasses.replace(settings, threads=threads, device=device)


def _user_error(exc: BaseException) -> UserError | None:
    """The UserError a worker raised (a checkpoint it cannot load, ...), out of Ray's wrappers."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, UserError):
            return current
        stack += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


def write_bags(reports: list[dict[str, Any]], names: dict[str, str], store: LabelStore, folder: str,
               progress: Progress) -> list[dict[str, Any]]:
    """The labelled copy of every bag this run labelled (write_bags.py), as Ray tasks; their results."""
    import ray.data

    from clip_vlm_core.label.store import rows_of

    done = [r for r in reports if not r.get("error") and r.get("bag_id")]
    if not done:
        return []
    table = store.read(["bag_id", "settings_id", "log_time_ns", "stamp_ns", "frame_id", "caption"])
    items = []
    for r in done:
        rows = rows_of(table, r["bag_id"], r["settings_id"]).to_pylist()
        items.append({"source": r["path"], "shown": r["bag"], "target": str(Path(folder, names[r["path"]])),
                      "bag_id": r["bag_id"], "settings_id": r["settings_id"], "captions": json.dumps(rows)})
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            write_bags_batch, batch_size=1, num_cpus=1, batch_format="numpy")
    finally:
        context.enable_progress_bars = saved
    results = []
    for row in dataset.iter_rows():
        result = json.loads(row["result"])
        results.append(result)
        if result["status"] == "skipped":
            progress.say(f"label: --write-bags skipped {result['bag']}: {result['why']}")
    return results
