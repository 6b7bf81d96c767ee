"""`ReliabilityFollower`: the image subscriptions' reliability, following what the cameras offer.

A reliable subscription hears nothing from a best-effort publisher (DDS calls the pair incompatible), and
many camera drivers publish with the sensor-data profile, which is best effort. With `qos_reliability`
`auto` (the default) a view's subscription follows rosbag2's rule for its recorder: reliable until publishers
are seen, then best effort if any publisher offers it, else reliable. The node re-creates the subscription
once per change and counts the changes. A best-effort subscription hears reliable publishers too, but large
raw frames may not arrive through it (measured: none of a reliable publisher's 1600x900 raw frames reached
a best-effort reader in another process under Fast DDS defaults), so reliable stays the choice whenever
every publisher offers it. `reliable` or `best_effort` pins the choice; then an incompatible publisher is
counted and explained per view in /diagnostics.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

AUTO, RELIABLE, BEST_EFFORT = "auto", "reliable", "best_effort"
QOS_RELIABILITIES = (AUTO, RELIABLE, BEST_EFFORT)


def followed_reliability(offered: Iterable[str], current: str) -> str:
    """rosbag2's rule: best effort if any publisher offers it, else reliable; no publishers keep `current`."""
    offered = list(offered)
    if not offered:
        return current
    return BEST_EFFORT if BEST_EFFORT in offered else RELIABLE


@dataclass
class ReliabilityFollower:
    """One view's reliability: `setting` is the parameter, `current` what the subscription asks now."""

    view: str
    setting: str
    current: str = ""
    changes: int = 0
    incompatible: int = 0  # publishers found whose offer this subscription cannot accept
    incompatible_reason: str = ""

    def __post_init__(self) -> None:
        if self.setting not in QOS_RELIABILITIES:
            raise ValueError(f"unknown reliability setting {self.setting!r}")
        if not self.current:
            self.current = RELIABLE if self.setting == AUTO else self.setting

    def follow(self, offered: Iterable[str]) -> bool:
        """Publishers now offer these reliabilities; True when the subscription must be re-created."""
        if self.setting != AUTO:
            return False
        wanted = followed_reliability(offered, self.current)
        if wanted == self.current:
            return False
        self.current = wanted
        self.changes += 1
        self.incompatible_reason = ""  # the new subscription meets what is offered now
        return True

    def incompatible_publisher(self, policy: str) -> str:
        """A publisher whose offer does not meet this subscription's `policy` was found: count it and return
        the explanation."""
        self.incompatible += 1
        if policy == "reliability" and self.current == RELIABLE:
            pinned = " (qos_reliability:=reliable; auto or best_effort would hear it)" if self.setting == RELIABLE else ""
            self.incompatible_reason = f"{self.view}'s publisher offers best effort; this node asks reliable{pinned}"
        else:
            self.incompatible_reason = (f"{self.view}'s publisher offers a {policy} this node's request "
                                        f"({self.current}) cannot accept")
        return self.incompatible_reason

    def report(self) -> list[tuple[str, str]]:
        values = [(f"{self.view}.qos_reliability", self.current), (f"{self.view}.qos_changes", str(self.changes)),
                  (f"{self.view}.qos_incompatible", str(self.incompatible))]
        if self.incompatible_reason:
            values.append((f"{self.view}.qos_incompatible_reason", self.incompatible_reason))
        return values
