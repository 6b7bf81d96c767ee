"""A DDS teardown that hangs ends the process in bounded time (clip_vlm_core.teardown).

The hang is played by a C call that holds the GIL (`ctypes.PyDLL`'s `sleep` keeps it, as rclpy's node
destruction does): no Python thread or signal handler could act during it, and the watchdog must still, with
the exit code the caller asked for.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from helper_exit import assert_helper_done

from clip_vlm_core.teardown import WATCHDOG_LINE

HANG = "import ctypes; ctypes.PyDLL(None).sleep(60)  # a C call that keeps the GIL, as a deadlocked DDS call"


def run(code: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - started


@pytest.mark.parametrize("teardown, code", [
    ("from clip_vlm_core.teardown import arm_exit_watchdog\narm_exit_watchdog(exit_code=0, seconds=1.0)\n"
     "destroy_node()", 0),
    ("from clip_vlm_core.teardown import bounded_teardown\nwith bounded_teardown(exit_code=3, seconds=1.0):\n"
     "    destroy_node()", 3),
    ("from clip_vlm_core.teardown import bounded_teardown\nwith bounded_teardown(exit_code=1, seconds=1.0):\n"
     "    destroy_node()", 1),
])
def test_a_teardown_that_hangs_holding_the_gil_ends_the_process_with_its_stacks_and_the_code_asked(teardown, code):
    done, seconds = run(f"print('results')\ndef destroy_node():\n    {HANG}\n{teardown}")
    assert done.returncode == code
    assert seconds < 30  # not the 60 s the hang would last
    assert done.stdout == "results\n"  # written before the hang, to a pipe (buffered), and not lost by the exit
    assert done.stderr.splitlines()[0].startswith(WATCHDOG_LINE)
    assert "destroy_node" in done.stderr  # where it hung, for a report to the middleware


def test_without_posix_timers_the_stacks_still_come_and_the_process_ends_with_code_1():
    done, seconds = run("import clip_vlm_core.teardown as teardown\nteardown._exit_timer = None\n"
                        f"teardown.arm_exit_watchdog(exit_code=0, seconds=1.0)\n{HANG}")
    assert done.returncode == 1 and seconds < 30
    assert done.stderr.splitlines()[0].startswith(WATCHDOG_LINE)


def test_a_teardown_that_ends_in_time_leaves_the_process_to_go_on():
    done, _ = run("import time\nfrom clip_vlm_core.teardown import bounded_teardown\n"
                  "with bounded_teardown(exit_code=0, seconds=1.0):\n    time.sleep(0.1)\ntime.sleep(2.5)\n"
                  "print('went on')\nraise SystemExit(4)")
    assert (done.returncode, done.stdout, done.stderr) == (4, "went on\n", "")


def test_arming_again_takes_the_latest_limit_and_code():
    done, seconds = run("from clip_vlm_core.teardown import arm_exit_watchdog\n"
                        f"arm_exit_watchdog(exit_code=0, seconds=60.0)\narm_exit_watchdog(exit_code=7, seconds=1.0)\n"
                        f"{HANG}")
    assert done.returncode == 7 and seconds < 30


def test_a_helper_ended_by_its_watchdog_is_a_warning_and_any_other_failure_fails():
    hung, _ = run(f"from clip_vlm_core.teardown import arm_exit_watchdog\nprint('results')\n"
                  f"arm_exit_watchdog(exit_code=0, seconds=1.0)\n{HANG}")
    assert hung.stdout == "results\n"
    with pytest.warns(UserWarning, match="hung in its DDS teardown"):
        assert_helper_done(hung.returncode, hung.stderr, "the probe")
    broken, _ = run("raise SystemExit('the probe saw no captions')")
    with pytest.raises(AssertionError, match="the probe saw no captions"):
        assert_helper_done(broken.returncode, broken.stderr, "the probe")
    unfinished, _ = run(f"from clip_vlm_core.teardown import arm_exit_watchdog\n"
                        f"arm_exit_watchdog(exit_code=1, seconds=1.0)\n{HANG}")
    with pytest.raises(AssertionError, match="exit code 1"):
        assert_helper_done(unfinished.returncode, unfinished.stderr, "the probe")
