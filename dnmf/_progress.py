"""Progress of a fit as people see it: a Rich live display, or plain lines in a log.

The driver calls :meth:`Progress.update` after every iteration with its
:class:`~dnmf._engine.FitState`. With ``verbose >= 1`` a live bar shows the
iteration, the loss, its relative change, seconds per iteration, the time left at
that pace and, on a cluster, the dashboard link; in Jupyter the same display renders
in the notebook through Rich (live when ipywidgets is installed). When the output is
not a terminal (a batch job's log file, a pipe) a live bar would be unreadable, so
one plain line is written every few seconds instead, and one at the end.
``verbose >= 2`` also logs every iteration to the ``dnmf`` logger. This module owns
presentation only: it never changes the fit.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Progress", "display_mode", "format_duration"]

logger = logging.getLogger("dnmf")

#: Seconds between two plain progress lines when the output is not a terminal.
PLAIN_INTERVAL = 10.0
#: Iterations the seconds-per-iteration estimate averages over.
PACE_WINDOW = 10


def format_duration(seconds: float) -> str:
    """``75.2`` → ``"1:15"``, ``3725`` → ``"1:02:05"``; unknown → ``"?"``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _relative_change(history: list[float], init_loss: float | None) -> float:
    if not history:
        return math.nan
    previous = history[-2] if len(history) >= 2 else init_loss
    if previous is None or previous == 0:
        return math.nan
    return (previous - history[-1]) / previous


def display_mode(console: Any) -> str:
    """"live" on a terminal or in Jupyter (with ipywidgets), else "plain" lines."""
    if console.is_jupyter:
        import importlib.util

        # Without ipywidgets Rich can only show a live display once it has ended.
        return "live" if importlib.util.find_spec("ipywidgets") is not None else "plain"
    return "live" if console.is_interactive else "plain"


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


class Progress:
    """Context manager receiving the driver's per-iteration state.

    Parameters
    ----------
    verbose : int
        0 shows nothing; 1 a live display (plain lines when not on a terminal);
        2 also a ``logging`` line per iteration.
    max_iter : int
        The iteration at which the fit stops at the latest (the bar's total).
    backend : Backend, optional
        Where the fit runs; its dashboard link is shown when it is a cluster.
    console : rich.console.Console, optional
        Where to draw; standard error by default.
    description : str, default="fit"
        The label in front of the bar.
    """

    def __init__(
        self,
        verbose: int,
        max_iter: int,
        backend: Any = None,
        *,
        console: Console | None = None,
        description: str = "fit",
    ) -> None:
        self.verbose = int(verbose or 0)
        self.max_iter = int(max_iter)
        self.backend = backend
        self.description = description
        self._console = console
        self._live: Any = None
        self._task: Any = None
        self._plain = False
        self._last_time = time.perf_counter()
        self._last_plain = -math.inf
        self._intervals: deque[float] = deque(maxlen=PACE_WINDOW)
        self._line = ""
        self._iteration = 0
        self._printed: int | None = None

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> Progress:
        self._last_time = time.perf_counter()
        if self.verbose < 1:
            return self
        console = self._console or _stderr_console()
        self._console = console
        link = getattr(self.backend, "dashboard_link", None)
        if link:
            from ._backend import describe_dashboard

            text = describe_dashboard(link).replace(link, f"[link={link}]{link}[/link]", 1)
            console.print(f"Dask dashboard: {text}", highlight=False)
        self._plain = display_mode(console) == "plain"
        if not self._plain:
            self._live = self._make_live(console)
            self._live.start()
        return self

    def _make_live(self, console: Console) -> Any:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
        from rich.progress import Progress as RichProgress

        live = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss [cyan]{task.fields[loss]}"),
            TextColumn("Δ {task.fields[change]}"),
            TextColumn("{task.fields[pace]}"),
            TextColumn("ETA {task.fields[eta]}"),
            console=console,
            transient=False,
        )
        self._task = live.add_task(
            self.description, total=self.max_iter, completed=0,
            loss="-", change="-", pace="- s/it", eta="?",
        )
        return live

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif self._plain and self._line and self._printed != self._iteration:
            self._write_plain()  # the last iteration, unless its line is already out
        return None

    # --------------------------------------------------------------- update
    def update(self, state: Any) -> None:
        """Show the state after one iteration (a :class:`~dnmf._engine.FitState`)."""
        if self.verbose <= 0:
            return  # silent: not even the line is needed (small fits run ~1 ms/iteration)
        now = time.perf_counter()
        self._intervals.append(now - self._last_time)
        self._last_time = now
        history = state.loss_history
        iteration = len(history) or int(state.iteration)
        self._iteration = iteration
        loss = history[-1] if history else math.nan
        change = _relative_change(history, getattr(state, "init_loss", None))
        pace = sum(self._intervals) / len(self._intervals)
        remaining = max(self.max_iter - iteration, 0)
        eta = format_duration(pace * remaining)
        change_text = f"{change:.2e}" if math.isfinite(change) else "-"
        self._line = (
            f"{self.description}: iteration {iteration}/{self.max_iter}  loss {loss:.6g}  "
            f"rel. change {change_text}  {pace:.3g} s/it  ETA {eta}"
        )
        if self.verbose >= 2:
            logger.info(self._line)
        if self.verbose < 1:
            return
        if self._live is not None:
            self._live.update(
                self._task, completed=min(iteration, self.max_iter), loss=f"{loss:.6g}",
                change=change_text, pace=f"{pace:.3g} s/it", eta=eta,
            )
        elif self._plain:
            first = self._printed is None
            if first or iteration >= self.max_iter or now - self._last_plain >= PLAIN_INTERVAL:
                self._write_plain()

    def _write_plain(self) -> None:
        assert self._console is not None
        self._console.print(self._line, highlight=False, markup=False, soft_wrap=True)
        self._last_plain = time.perf_counter()
        self._printed = self._iteration
