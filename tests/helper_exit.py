"""How a test tells that one of its helper processes (tests/helpers) did its work.

Exit code 0. A helper arms the teardown watchdog (clip_vlm_core.teardown) once its results are out, with
code 0: a DDS teardown that hung after them ends it with its stacks on stderr and still code 0, which is no
failure of what the test checks. That is reported as a warning with the stacks, so a middleware hang stays
visible without failing the test it did not touch. The tools under test (`clip-vlm bag play`, the node) do
the same with the code their work earned, and their tests call `warn_if_teardown_hung` on their stderr.
"""

from __future__ import annotations

import warnings

from clip_vlm_core.teardown import WATCHDOG_LINE


def warn_if_teardown_hung(stderr: str, what: str) -> None:
    if any(line.startswith(WATCHDOG_LINE) for line in stderr.splitlines()):
        warnings.warn(f"{what} hung in its DDS teardown after its work and was ended by its watchdog: "
                      f"{stderr[-3000:]}", stacklevel=3)


def assert_helper_done(returncode: int | None, stderr: str, what: str = "the helper") -> None:
    assert returncode == 0, f"{what} failed (exit code {returncode}): {stderr[-2000:]}"
    warn_if_teardown_hung(stderr, what)
