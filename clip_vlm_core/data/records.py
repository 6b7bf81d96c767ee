"""What a manifest row records of one camera frame: the current frames' (data.manifest) and, with a history,
the past ones' (data.history.PastFrame adds the time offset)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViewRecord:
    path: str  # relative to the dataroot
    sha256: str
    width: int
    height: int
