"""Progress of long work, seen on a terminal and in a log alike: the one mechanism every long command uses.

On a terminal, `progress_bar` is a plain tqdm bar. Anywhere else (a CI log, `nohup`, a pipe, a captured
stderr) tqdm would stay silent (its `disable=None`) or redraw one line with carriage returns; here it
writes whole lines instead: once `CLIP_VLM_PROGRESS_SECONDS` seconds (default 10) have passed, then at
most once every as many seconds as work completes, and once at the end:

    eval [base: questions]: 320/1,440 outputs (22%), 70 s elapsed, ~245 s left, 4.57 outputs/s

So a long run that prints nothing else still shows, in its log, that it is alive and how far it is, and
work done within the first interval, or refused in it, writes nothing: an error stays one sentence.
(0 seconds: a line at the start and at every update.)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

INTERVAL_ENV = "CLIP_VLM_PROGRESS_SECONDS"
DEFAULT_INTERVAL_S = 10.0


def log_interval_s() -> float:
    """Seconds between two progress lines in a log: $CLIP_VLM_PROGRESS_SECONDS, or 10 (0: a line per update)."""
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_INTERVAL_S
    except ValueError:
        value = DEFAULT_INTERVAL_S
    return max(value, 0.0) if value == value else DEFAULT_INTERVAL_S  # NaN: the default


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal behind it
        return False


class _WholeLines:
    """The log stream, less the bare line ends and carriage returns tqdm writes to move past or clear its bar."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        if text.strip("\r\n"):
            self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


class LoggedProgress(tqdm):
    """tqdm that, where its stream is not a terminal, writes whole lines at an interval instead of a bar."""

    def __init__(self, iterable: Iterable | None = None, *args: Any, file: IO[str] | None = None, **kwargs: Any) -> None:
        file = file if file is not None else sys.stderr
        self.in_log = not _is_terminal(file)
        if self.in_log:
            interval = log_interval_s()
            # miniters=0 and no dynamic miniters: time alone decides when a line is due; tqdm's delay keeps
            # the first line back for one interval (and close() silent when none was written).
            kwargs.update(mininterval=interval, maxinterval=max(interval, 1.0), miniters=0, delay=interval,
                          dynamic_ncols=False, ncols=None)
            file = _WholeLines(file)
        self._last_written: tuple | None = None
        super().__init__(iterable, *args, file=file, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool | None:
        if not self.in_log:
            return super().display(msg, pos)
        line = msg if msg is not None else self.log_line()
        if (self.n, self.desc) != self._last_written:  # close() repeats the last update's line otherwise
            self._last_written = (self.n, self.desc)
            self.fp.write(line + "\n")
            self.fp.flush()
        return True

    def log_line(self) -> str:
        """`desc: done/total unit (share), elapsed, time left, rate`: what a progress line in a log says."""
        figures = self.format_dict
        done, total, elapsed, unit = figures["n"], figures["total"], figures["elapsed"], figures["unit"]
        line = f"{self.desc}: {done:,}/{total:,} {unit} ({100 * done / total:.0f}%)" if total else (
            f"{self.desc}: {done:,} {unit}")
        parts = [line, f"{elapsed:.0f} s elapsed"]
        rate = done / elapsed if done and elapsed > 0 else None
        if rate and total and total >= done:
            parts.append(f"~{(total - done) / rate:.0f} s left")
        if rate:
            parts.append(f"{rate:.2f} {unit}/s" if rate < 100 else f"{rate:,.0f} {unit}/s")
        return ", ".join(parts)

    def set_phase(self, phase: str) -> None:
        """Name what is being done now (in brackets after the description), without a line of its own."""
        if self.disable:  # a disabled tqdm keeps no description
            return
        if not hasattr(self, "_plain_desc"):
            self._plain_desc = self.desc
        self.set_description_str(f"{self._plain_desc} [{phase}]", refresh=False)


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> LoggedProgress:
    """A progress bar on a terminal, progress lines in a log (see the module's note); nothing when not
    `enabled`. Takes tqdm's arguments (total, desc, unit, file, ...)."""
    kwargs.setdefault("dynamic_ncols", True)
    return LoggedProgress(iterable, disable=not enabled, **kwargs)
