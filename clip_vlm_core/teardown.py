"""Leaving ROS 2 in bounded time: a watchdog over the DDS teardown.

Deleting a DDS participant (destroying a node, shutting an rclpy context down) can deadlock inside the
middleware, rarely and more often on a loaded machine and while a peer leaves at the same moment (Fast DDS:
eProsima/Fast-DDS#235, ros2/rmw_fastrtps#695; rclpy: ros2/rclpy#456). This project's CI saw it twice, in a
test where a player and its subscriber leave together: once the subscriber, once `clip-vlm bag play`
itself, each after its work was done. rclpy destroys a node without releasing the GIL, so no Python thread
or signal handler can act during the hang. Two native timers can, and are armed before the teardown:

- at `seconds`, faulthandler's watchdog thread prints where every thread was (a "Timeout (0:00:10)!" line,
  then the stacks: what a bug report to the middleware needs);
- a moment later a POSIX timer ends the process with `exit_code`: what the work before the teardown earned
  (0 once everything was done and reported), so a command whose results are out still succeeds, and one
  that failed still fails. Output written before arming is flushed first.

When the teardown ends in time the timers are disarmed and the process goes on as usual. Where POSIX
timers are missing (not Linux), faulthandler ends the process itself, with code 1.

No ROS import here: callers hand in their own teardown.
"""

from __future__ import annotations

import ctypes
import faulthandler
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# A healthy teardown takes well under a second here (a node and its context, Kilted or Jazzy, loaded 2-core
# VM); ten seconds is a hang, and short enough that a Ctrl-C'd tool or a test does not wait on it for long.
TEARDOWN_LIMIT_S = 10.0

# The first line faulthandler writes when the watchdog fires (tests tell a teardown hang by it).
WATCHDOG_LINE = "Timeout ("

# Between the stacks and the exit: the stacks of a few threads take microseconds to write, but the two timers
# are separate threads, and on a loaded machine either may start late.
_EXIT_AFTER_STACKS_S = 1.0


class _SigevThread(ctypes.Structure):
    _fields_ = [("function", ctypes.c_void_p), ("attribute", ctypes.c_void_p)]


class _SigevUnion(ctypes.Union):
    _fields_ = [("pad", ctypes.c_int * 12), ("tid", ctypes.c_int), ("thread", _SigevThread)]


class _Sigevent(ctypes.Structure):  # struct sigevent (glibc, 64 bytes on 64-bit Linux)
    _fields_ = [("value", ctypes.c_void_p), ("signo", ctypes.c_int), ("notify", ctypes.c_int), ("un", _SigevUnion)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("interval", _Timespec), ("value", _Timespec)]


_SIGEV_THREAD = 2
_CLOCK_MONOTONIC = 1


class _ExitTimer:
    """A POSIX timer whose expiry runs libc's `_exit(code)` on a thread of its own (SIGEV_THREAD, the
    timer's value handed to `_exit` as its argument): no Python code and no GIL on the way out."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._timer: ctypes.c_void_p | None = None
        if not hasattr(self._libc, "timer_create"):
            raise OSError("no POSIX timers here")

    def arm(self, seconds: float, code: int) -> None:
        self.cancel()
        event = _Sigevent(notify=_SIGEV_THREAD, value=code & 0xFF)
        event.un.thread.function = ctypes.cast(self._libc._exit, ctypes.c_void_p).value
        timer = ctypes.c_void_p()
        if self._libc.timer_create(_CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(timer)) != 0:
            raise OSError(ctypes.get_errno(), "timer_create failed")
        whole = int(seconds)
        when = _Itimerspec(value=_Timespec(whole, int((seconds - whole) * 1e9)))
        self._timer = timer
        if self._libc.timer_settime(timer, 0, ctypes.byref(when), None) != 0:
            self.cancel()
            raise OSError(ctypes.get_errno(), "timer_settime failed")

    def cancel(self) -> None:
        if self._timer is not None:
            self._libc.timer_delete(self._timer)
            self._timer = None


try:
    _exit_timer: _ExitTimer | None = _ExitTimer()
except OSError:
    _exit_timer = None


def arm_exit_watchdog(*, exit_code: int, seconds: float | None = None) -> None:
    """Unless this process is gone (or the watchdog disarmed) within `seconds`: print every thread's stack to
    stderr, then end the process with `exit_code`, the code the work done so far earned.

    For a script whose work is done and whose results are out: arm, tear down, exit; the interpreter's own
    exit is covered too. Arming again replaces the limit and the code. `seconds`: TEARDOWN_LIMIT_S unless given."""
    seconds = TEARDOWN_LIMIT_S if seconds is None else seconds
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # the process may end without Python's own flush
        except (OSError, ValueError):
            pass  # a reader that went away, or a closed stream: the caller's own flush reports it
    exits_itself = _exit_timer is None
    if not exits_itself:
        try:
            _exit_timer.arm(seconds + _EXIT_AFTER_STACKS_S, exit_code)
        except OSError:
            exits_itself = True
    faulthandler.dump_traceback_later(seconds, exit=exits_itself, file=sys.__stderr__)


def disarm_exit_watchdog() -> None:
    faulthandler.cancel_dump_traceback_later()
    if _exit_timer is not None:
        _exit_timer.cancel()


@contextmanager
def bounded_teardown(*, exit_code: int, seconds: float | None = None) -> Iterator[None]:
    """The block in it (a node's destruction, a context's shutdown) ends within `seconds`, or the process does,
    with its stacks on stderr and `exit_code`.

    For a library call that returns to its caller afterwards (`bag play`, the demo): the watchdog is
    disarmed when the block ends."""
    arm_exit_watchdog(exit_code=exit_code, seconds=seconds)
    try:
        yield
    finally:
        disarm_exit_watchdog()
