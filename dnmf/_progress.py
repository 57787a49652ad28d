"""Progress reporting of a fit: log lines now, a live display for verbose >= 1.

Owns nothing but presentation; it is told about each iteration by the driver.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any

__all__ = ["Progress"]

logger = logging.getLogger("dnmf")


class Progress:
    """Context manager receiving the driver's per-iteration state."""

    def __init__(self, verbose: int, max_iter: int, backend: Any = None) -> None:
        self.verbose = verbose
        self.max_iter = max_iter
        self.backend = backend
        self._last = time.perf_counter()

    def __enter__(self) -> Progress:
        self._last = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def update(self, state: Any) -> None:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        if self.verbose:
            history = state.loss_history
            change = (history[-2] - history[-1]) / history[-2] if len(history) > 1 and history[-2] else float("nan")
            logger.info(
                "iteration %d/%d loss %.6g rel. change %.3g (%.3fs)",
                len(history), self.max_iter, history[-1], change, elapsed,
            )
