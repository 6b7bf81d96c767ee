"""How a label run shows its progress: a bar on a terminal, plain lines in a log.

On a terminal, a tqdm bar counts pairs (labelled now or found in LABELS already) against the estimate
from the bags' metadata, corrected as each bag ends; a bag that cannot be labelled is said above it.
Anywhere else (a CI log, `nohup`, a pipe) there is no bar: a line every `interval_s` seconds
(`label: 120/512 pairs (23 %), 1/3 bags, 9.8 pairs/s`) and a line per bag as it ends.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from tqdm import tqdm


class Progress:
    def __init__(self, pairs: int, bags: int, stream: IO[str] | None = None, interval_s: float = 10.0,
                 enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.terminal = enabled and self.stream.isatty()
        self.total, self.bags = pairs, bags
        self.done_pairs = self.done_bags = self.labelled = 0
        self.interval_s = interval_s
        self.started = self._last_line = time.monotonic()
        self.bar = tqdm(total=pairs, unit="pair", desc="label", file=self.stream, disable=not self.terminal,
                        dynamic_ncols=True, smoothing=0.1)

    def labelled_pairs(self, count: int) -> None:
        self.done_pairs += count
        self.labelled += count
        self.bar.update(count)
        self._maybe_line()

    def bag_done(self, report: dict[str, Any], estimate: int) -> None:
        """A bag's report arrived: its pairs found in LABELS count as done, and the estimate is corrected."""
        self.done_bags += 1
        already, failed = report.get("already", 0), report.get("failed", 0)
        self.done_pairs += already + failed
        self.bar.update(already + failed)
        seen = report.get("labelled", 0) + already + failed
        if seen != estimate:
            self.total += seen - estimate
            self.bar.total = max(self.total, self.bar.n)
            self.bar.refresh()
        if report.get("error"):
            self.say(f"label: skipped {report['error']}")
        elif not self.terminal:
            extra = f", {failed} failed ({report.get('failed_reason', '')})" if failed else ""
            self.say(f"label: [{self.done_bags}/{self.bags} bags] {report['bag']}: {report.get('labelled', 0)} pairs "
                     f"labelled, {already} in LABELS already{extra}")
        self._maybe_line()

    def say(self, text: str) -> None:
        if not self.enabled:
            return
        if self.terminal:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _maybe_line(self) -> None:
        now = time.monotonic()
        if self.terminal or now - self._last_line < self.interval_s:
            return
        self._last_line = now
        self.say(self.line())

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        share = f" ({100 * self.done_pairs / self.total:.0f} %)" if self.total else ""
        rate = self.labelled / elapsed if elapsed > 0 else 0.0
        return (f"label: {self.done_pairs:,}/{self.total:,} pairs{share}, {self.done_bags}/{self.bags} bags, "
                f"{rate:.1f} pairs/s, {elapsed:.0f} s")

    def close(self) -> None:
        self.bar.close()
