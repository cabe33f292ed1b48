"""Adapter helper: how the run-queue adapters log a signal the broker never got.

A delivery's `retry` and `extend` never raise: when the broker cannot be told,
the run comes back after `ack_wait` anyway. Each lost signal is logged, at
WARNING for the first one until the broker answers again (each adapter says
when: on reconnect, or when a call succeeds), then at DEBUG, so an outage warns
once rather than once per held run and timer tick.
"""

from __future__ import annotations

import logging


class LostSignals:
    """Logs "run queue signal lost" at WARNING once until `reset()`, then at DEBUG.

    Logs to the adapter's own logger, so its records keep the adapter's name.
    """

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._warned = False

    def __call__(self, what: str, run_id: str, error: BaseException) -> None:
        """Log that signal `what` ("retry", "extension") for `run_id` was lost."""
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        self._log.log(
            level,
            "run queue signal lost",
            extra={"signal": what, "run_id": run_id, "error": repr(error)},
        )

    def reset(self) -> None:
        """The broker answers again: the next lost signal is a warning."""
        self._warned = False
