"""Everything the node and the library under it report, through the node's rclpy logger.

The node's logger writes to the console, to /rosout and to the log files, at the level `--ros-args
--log-level` sets. The worker and the node's callbacks report through a `ThrottledLog` over that logger
(clip_vlm_core.stream.logs); what the library reports through Python's logging (the model loading, a
fallback of the fast decoder) is forwarded to it too, throttled per message template, so nothing of the
node goes to stderr behind ROS's back.

The logger is called without rclpy's own throttle arguments: rclpy keys throttling on the call site, and
one site here serves every message.
"""

from __future__ import annotations

import logging
from typing import Any

from clip_vlm_core.stream.logs import ThrottledLog

LIBRARY_LOGGER = "clip_vlm_core"


class RclpyLogSink:
    """A `LogSink` writing to an rclpy logger."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def info(self, text: str) -> None:
        self._logger.info(text)

    def warning(self, text: str) -> None:
        self._logger.warning(text)

    def error(self, text: str) -> None:
        self._logger.error(text)


class ForwardToNodeLogger(logging.Handler):
    """Python logging records to a node's `ThrottledLog`; warnings and errors of one template throttled."""

    def __init__(self, log: ThrottledLog) -> None:
        super().__init__(level=logging.INFO)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            if record.levelno >= logging.ERROR:
                self.log.error(text, key=f"{record.name}:{record.msg}")
            elif record.levelno >= logging.WARNING:
                self.log.warning(text, key=f"{record.name}:{record.msg}")
            else:
                self.log.info(text)
        except Exception:  # a logging failure must never become the node's failure
            self.handleError(record)


def forward_library_logging(log: ThrottledLog) -> ForwardToNodeLogger:
    """Route clip_vlm_core's Python logging to `log` (and no longer to stderr); returns the handler."""
    handler = ForwardToNodeLogger(log)
    library = logging.getLogger(LIBRARY_LOGGER)
    library.addHandler(handler)
    library.setLevel(logging.INFO)
    library.propagate = False
    return handler


def stop_forwarding(handler: ForwardToNodeLogger) -> None:
    library = logging.getLogger(LIBRARY_LOGGER)
    library.removeHandler(handler)
    if not library.handlers:
        library.propagate = True
