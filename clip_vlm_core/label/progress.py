"""How a label run shows its progress: clip_vlm_core.progress's bar on a terminal, its lines in a log.

The bar counts pairs (labelled now or found in LABELS already) against the estimate from the bags'
metadata, corrected as each bag ends. In a log (a CI job, `nohup`, a pipe) the shared mechanism writes a
line at an interval (`label: 120/512 pairs (23%), 60 s elapsed, ~196 s left, 2.00 pairs/s`), and this adds a
line per bag as it ends; a bag that cannot be labelled is said in either case.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from clip_vlm_core.progress import progress_bar


class Progress:
    def __init__(self, pairs: int, bags: int, stream: IO[str] | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total, self.bags = pairs, bags
        self.done_bags = 0
        self.bar = progress_bar(total=pairs, unit="pairs", desc="label", file=self.stream, enabled=enabled,
                                smoothing=0.1)

    def labelled_pairs(self, count: int) -> None:
        self.bar.update(count)

    def bag_done(self, report: dict[str, Any], estimate: int) -> None:
        """A bag's report arrived: its pairs found in LABELS count as done, and the estimate is corrected."""
        self.done_bags += 1
        already, failed = report.get("already", 0), report.get("failed", 0)
        seen = report.get("labelled", 0) + already + failed
        if seen != estimate:
            self.total += seen - estimate
            self.bar.total = max(self.total, self.bar.n + already + failed)
        self.bar.set_phase(f"{self.done_bags}/{self.bags} bags")
        self.bar.update(already + failed)
        if report.get("error"):
            self.say(f"label: skipped {report['error']}")
        elif self.bar.in_log:
            extra = f", {failed} failed ({report.get('failed_reason', '')})" if failed else ""
            self.say(f"label: [{self.done_bags}/{self.bags} bags] {report['bag']}: {report.get('labelled', 0)} pairs "
                     f"labelled, {already} in LABELS already{extra}")

    def say(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar.in_log:
            print(text, file=self.stream, flush=True)
        else:
            self.bar.write(text, file=self.stream)

    def close(self) -> None:
        self.bar.close()
