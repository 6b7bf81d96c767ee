"""Leaving ROS 2 in bounded time: a watchdog over the DDS teardown.

Deleting a DDS participant (destroying a node, shutting an rclpy context down) can deadlock inside the
middleware, rarely and more often on a loaded machine (Fast DDS: eProsima/Fast-DDS#235; rclpy:
ros2/rclpy#456). This project's CI saw it once: a test subscriber printed everything it had received and
then never exited. The blocked call is C++ that may hold the GIL, so no Python thread or signal handler
can end it; faulthandler's watchdog is a C thread and can. Armed before the teardown, it lets the process
go on as usual when the teardown ends in time, and otherwise, after `TEARDOWN_LIMIT_S`, prints where
every thread was (a "Timeout (0:00:10)!" line, then the stacks: what a bug report to the middleware
needs) and exits with code 1.

No ROS import here: callers hand in their own teardown.
"""

from __future__ import annotations

import faulthandler
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# A healthy teardown takes well under a second here (a node and its context, Kilted or Jazzy, loaded 2-core
# VM); ten seconds is a hang, and short enough that a Ctrl-C'd tool or a test does not wait on it for long.
TEARDOWN_LIMIT_S = 10.0

# The first line faulthandler writes when the watchdog fires (tests tell a teardown hang by it).
WATCHDOG_LINE = "Timeout ("


def arm_exit_watchdog(seconds: float = TEARDOWN_LIMIT_S) -> None:
    """End this process with the stacks on stderr and code 1 unless it is gone (or disarmed) within `seconds`.

    For a script whose work is done and whose results are out: arm, tear down, exit; the interpreter's
    own exit is covered too."""
    sys.stderr.flush()
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.__stderr__)


def disarm_exit_watchdog() -> None:
    faulthandler.cancel_dump_traceback_later()


@contextmanager
def bounded_teardown(seconds: float = TEARDOWN_LIMIT_S) -> Iterator[None]:
    """The block in it (a node's destruction, a context's shutdown) ends within `seconds`, or the process does.

    For a library call that returns to its caller afterwards (`bag play`, the demo): the watchdog is
    disarmed when the block ends."""
    arm_exit_watchdog(seconds)
    try:
        yield
    finally:
        disarm_exit_watchdog()
