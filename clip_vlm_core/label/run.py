"""One `clip-vlm label` run, start to end: what the CLI calls, and what tests and scripts call.

1. the inputs expanded into bags (inputs.py) and LABELS checked by the output guard, created and locked
   (store.py), --write-bags DIR checked (write_bags.py), all before Ray starts;
2. each bag opened once here: a bag that cannot be read is reported and skipped (`strict`: an error);
3. Ray up (pipeline.ray_session), the workers planned (pipeline.plan_workers), the job run into LABELS
   (pipeline.label_bags), the labelled bags written (pipeline.write_bags);
4. a `LabelResult` for the summary. Ctrl-C writes what was received and ends the run as interrupted.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip_vlm_core.errors import UserError
from clip_vlm_core.label.inputs import expand_inputs, refuse_overlap
from clip_vlm_core.label.keys import model_identity
from clip_vlm_core.label.labeller import LabelSettings
from clip_vlm_core.label.pipeline import (
    RunReport,
    Workers,
    check_reachable,
    label_bags,
    plan_bags,
    plan_workers,
    ray_session,
)
from clip_vlm_core.label.pipeline import write_bags as write_labelled_bags
from clip_vlm_core.label.progress import Progress
from clip_vlm_core.label.store import open_store
from clip_vlm_core.label.write_bags import check_bags_folder

MIN_STEADY_S = 1.0  # a steady state shorter than this is no measurement


@dataclass
class LabelResult:
    report: RunReport
    bags: int = 0  # bags given to the workers
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (bag or input, why), all stages
    parts_written: int = 0
    rows_written: int = 0
    duplicates: int = 0
    workers: Workers | None = None
    written_bags: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""


def label(inputs: Sequence[str | Path], out: str | Path, settings: LabelSettings, *, write_bags: str | Path | None = None,
          address: str | None = None, workers: int | None = None, cpus_per_worker: float | None = None,
          gpus_per_worker: float | None = None, overwrite: bool = False, strict: bool = False,
          rows_per_part: int = 5000, part_seconds: float = 30.0, progress: bool = True,
          say: Callable[[str], None] = print) -> LabelResult:
    """Label the bags the inputs name into LABELS `out` (see the module's docstring)."""
    identity = model_identity(settings.checkpoint)
    settings = dataclasses.replace(settings, model_name=identity.name, model_sha256=identity.sha256)
    given = [("input", str(i), Path(i)) for i in inputs if Path(i).exists() or Path(i).is_symlink()]
    scan = expand_inputs(inputs)
    found = [*given, *(("input bag", b.shown, b.path) for b in scan.bags)]
    outputs = [("--out", out)] + ([("--write-bags", write_bags)] if write_bags is not None else [])
    for flag, target in outputs:  # before anything is read or written
        refuse_overlap(target, flag, found)
        if flag == "--write-bags":
            check_bags_folder(target, out)
    planned, unreadable = plan_bags(scan.bags, identity.views, settings)
    skipped = [*scan.skipped, *unreadable]
    if strict and skipped:
        raise UserError(_skip_text(*skipped[0]) + " (--strict)")
    for shown, why in skipped:
        say(f"clip-vlm label: skipped {_skip_text(shown, why)}")
    if not planned:
        raise UserError(f"no bag to label: {_skip_text(*skipped[0])}" if skipped else "no bag to label")
    result = LabelResult(RunReport(), bags=len(planned), skipped=skipped, model=identity.name)
    if address or os.environ.get("RAY_ADDRESS"):
        check_reachable(address or os.environ["RAY_ADDRESS"])  # before LABELS is made
    with open_store(out, _guarded_models(settings), overwrite, rows_per_part, part_seconds) as store:
        bar = Progress(sum(p.estimate for p in planned), len(planned), enabled=progress)
        try:
            with ray_session(address) as (how, seconds):
                result.report.ray, result.report.ray_start_s = how, seconds
                result.workers = plan_workers(workers, cpus_per_worker, gpus_per_worker, settings.device)
                label_bags(planned, settings, store, result.workers, bar, result.report)
                store.flush()
                failed = [(r["bag"], r["error"]) for r in result.report.bags if r.get("error")]
                result.skipped += failed
                if write_bags is not None:
                    names = {str(p.input.path): p.input.name for p in planned}
                    result.written_bags = write_labelled_bags(result.report.bags, names, store, str(write_bags), bar)
        except KeyboardInterrupt:
            result.report.interrupted = True
        finally:
            bar.close()
            store.flush()
            result.parts_written, result.rows_written, result.duplicates = (store.parts_written, store.written,
                                                                            store.duplicates)
    if strict and not result.report.interrupted and any(r.get("error") for r in result.report.bags):
        first = next(r for r in result.report.bags if r.get("error"))
        raise UserError(f"{first['error']} (--strict; the other bags' rows are in {out})")
    return result


def _guarded_models(settings: LabelSettings) -> dict[str, Path | str | None]:
    """The model's files, which LABELS may not be or hold (the output guard; the bags: refuse_overlap)."""
    from clip_vlm_core.model.model_refs import embedded_assets

    guarded: dict[str, Path | str | None] = {}
    if settings.checkpoint and Path(settings.checkpoint).exists():
        guarded["checkpoint"] = settings.checkpoint
    guarded["embedded model"] = embedded_assets()
    guarded["base models folder"] = settings.base_models_root
    return guarded


def _skip_text(shown: str, why: str) -> str:
    """'INPUT: why', without saying the bag twice when the reason names it already."""
    return why if why.startswith(f"bag {shown}") else f"{shown}: {why}"


def summary(result: LabelResult, out: str | Path, settings: LabelSettings | None = None) -> str:
    """What the run did, for people: rows, skips, timing, workers, labelled bags."""
    report = result.report
    lines = [f"labelled {report.labelled:,} pairs of {result.bags} bag{'s' if result.bags != 1 else ''} into {out} "
             f"({report.already:,} in it already, {report.failed:,} failed; {result.parts_written} part"
             f"{'s' if result.parts_written != 1 else ''} written){' - interrupted: run again to finish' if report.interrupted else ''}"]
    if result.duplicates:
        lines.append(f"  {result.duplicates:,} rows made twice were written once (a bag named under two paths)")
    for bag in report.bags:
        if bag.get("failed"):
            lines.append(f"  {bag['bag']}: {bag['failed']} pairs failed ({bag['failed_reason']})")
        if bag.get("bad_frames"):
            lines.append(f"  {bag['bag']}: {bag['bad_frames']} frames refused ({bag['bad_reason']})")
    if result.skipped:
        lines.append(f"skipped {len(result.skipped)}: " + "; ".join(_skip_text(*s) for s in result.skipped[:3])
                     + (" ..." if len(result.skipped) > 3 else ""))
    if result.workers is not None:
        ray_start = {"started": f"Ray start-up {report.ray_start_s:.1f} s", "running": "Ray running already"}.get(
            report.ray, f"{report.ray} in {report.ray_start_s:.1f} s")
        steady = (f"steady state {report.steady_pairs:,} pairs in {report.steady_s:.1f} s = "
                  f"{report.steady_pairs_per_s:.2f} pairs/s" if report.steady_s >= MIN_STEADY_S
                  else "too few pairs for a steady state")
        first = (f"first rows after {report.first_rows_s:.1f} s (workers starting, model loading); {steady}"
                 if report.labelled else "no new rows")
        lines.append(f"timing: {ray_start}; {first}; {result.workers.describe()}")
    written = [b for b in result.written_bags if b["status"] == "written"]
    if result.written_bags:
        current = sum(b["status"] == "up to date" for b in result.written_bags)
        failed = len(result.written_bags) - len(written) - current
        lines.append(f"labelled bags: {len(written)} written, {current} up to date already"
                     + (f", {failed} skipped" if failed else ""))
    return "\n".join(lines)
