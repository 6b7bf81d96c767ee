"""How a test tells that one of its helper processes (tests/helpers) did its work.

Exit code 0; or code 1 from the teardown watchdog (clip_vlm_core.teardown) that a helper arms once its
results are out: the DDS teardown after them hung, which is no failure of what the test checks. That is
reported as a warning with the helper's stacks, so a middleware hang stays visible without failing the
test it did not touch.
"""

from __future__ import annotations

import warnings

from clip_vlm_core.teardown import WATCHDOG_LINE


def assert_helper_done(returncode: int | None, stderr: str, what: str = "the helper") -> None:
    if returncode == 1 and any(line.startswith(WATCHDOG_LINE) for line in stderr.splitlines()):
        warnings.warn(f"{what} hung in its DDS teardown after its results were out and was ended by its "
                      f"watchdog: {stderr[-3000:]}", stacklevel=2)
        return
    assert returncode == 0, f"{what} failed (exit code {returncode}): {stderr[-2000:]}"
