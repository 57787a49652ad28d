"""What the commands print: status lines (standard error), results (standard output)
and the formatting of sizes, durations, paths and messages.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Iterator
from typing import Any

import typer


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


#: How many messages the running command has printed (see ``_dispatch``: a Ctrl-C
#: that Typer turns into a silent exit 130 before the command said anything).
SAID = [0]


def _say(message: str) -> None:
    """A progress or status message for people (standard error)."""
    SAID[0] += 1
    _stderr().print(message, markup=False)


def _result(message: str) -> None:
    """A result line (standard output)."""
    SAID[0] += 1
    typer.echo(message)


def _one_line(message: str) -> str:
    """Lines joined into one; a line that ends without punctuation gets a semicolon."""
    parts = [part.strip() for part in str(message).splitlines() if part.strip()]
    joined = [p if i == len(parts) - 1 or p[-1] in ".:;,!?" else p + ";"
              for i, p in enumerate(parts)]
    return " ".join(joined)


def _cli_terms(message: str) -> str:
    """The library speaks Python (``overwrite=True``); the command line has options."""
    import re

    for python, option in (
        (r"\boverwrite=True\b", "--overwrite"),
        (r"\bmax_iter=", "--max-iter "),
        (r"\bmax_iter >=", "--max-iter >="),
        (r"\bout=(?=['\"])", "--out "),
        # missing values (dnmf fit/rank --missing, --mask)
        (r"\bLeave missing=None\b", "Leave out --missing"),
        (r"\bmissing='(nan|unstored)'", r"--missing \1"),
        (r"Drop such (rows|columns) first, e\.g\. X\[[^\]]*\]\.",
         r"Drop such \1 from INPUT (and the mask) first."),
        (r"\bmask=(?=[.,;)]|\s)", "--mask"),
    ):
        message = re.sub(python, option, message)
    return message


def _absolute(path: str) -> str:
    """Local paths made absolute: Dask workers do not share this process's directory."""
    return path if "://" in path else os.path.abspath(path)


def _quote(path: str | os.PathLike[str]) -> str:
    return shlex.quote(os.fspath(path))


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _row_progress(description: str) -> Iterator[Any]:
    """A transient Rich bar over rows read, on a terminal; nothing otherwise."""
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    console = _stderr()
    bar = RichProgress(
        "[bold]{task.description}", BarColumn(), MofNCompleteColumn(), "rows",
        TimeRemainingColumn(), console=console, transient=True,
        disable=not (console.is_interactive or console.is_jupyter),
    )
    task = bar.add_task(description, total=None)

    def on_rows(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield on_rows


def _fmt_duration(seconds: float) -> str:
    from .._progress import format_duration

    return f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)

