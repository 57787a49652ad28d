"""The progress display: live bar, plain lines, pace and ETA, verbose levels."""

from __future__ import annotations

import io
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

import dnmf
from dnmf import _progress
from dnmf._engine import FitState
from dnmf._progress import Progress, display_mode, format_duration


class Clock:
    """A stand-in for time.perf_counter that advances by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(_progress.time, "perf_counter", c)
    return c


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, force_jupyter=False, width=200,
                   color_system=None), buf


def _run(progress: Progress, clock: Clock, losses: list[float], step: float = 0.5,
         init_loss: float = 100.0) -> None:
    state = FitState(W=[], H=np.zeros((1, 1)), init_loss=init_loss)
    with progress:
        for loss in losses:
            clock.now += step
            state.loss_history.append(loss)
            state.iteration += 1
            progress.update(state)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00"), (59.6, "1:00"), (75.2, "1:15"), (3725, "1:02:05"), (math.inf, "?"),
     (math.nan, "?"), (-1, "?")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_silent_when_verbose_0(clock, capsys):
    console, buf = _console(terminal=True)
    _run(Progress(0, 10, console=console), clock, [50.0, 40.0])
    assert buf.getvalue() == ""
    assert capsys.readouterr().err == ""


def test_plain_lines_first_and_last_with_pace_and_eta(clock):
    console, buf = _console(terminal=False)
    _run(Progress(1, 10, console=console), clock, [50.0, 40.0, 35.0], step=2.0)
    lines = buf.getvalue().splitlines()
    # The first iteration at once; then nothing until PLAIN_INTERVAL; the last at exit.
    assert len(lines) == 2
    assert lines[0].startswith("fit: iteration 1/10  loss 50  rel. change 5.00e-01")
    assert "2 s/it" in lines[0] and "ETA 0:18" in lines[0]
    assert lines[1].startswith("fit: iteration 3/10  loss 35  rel. change 1.25e-01")
    assert "ETA 0:14" in lines[1]  # 7 iterations left at 2 s each


def test_plain_lines_every_interval(clock, monkeypatch):
    monkeypatch.setattr(_progress, "PLAIN_INTERVAL", 0.0)
    console, buf = _console(terminal=False)
    _run(Progress(1, 4, console=console), clock, [4.0, 3.0, 2.0, 1.0])
    assert [line.split()[2] for line in buf.getvalue().splitlines()] == [
        "1/4", "2/4", "3/4", "4/4"
    ]


def test_live_bar_on_a_terminal(clock):
    console, buf = _console(terminal=True)
    _run(Progress(1, 5, console=console, description="resume"), clock,
         [9.0, 8.0, 7.5, 7.25, 7.2], step=0.25)
    out = buf.getvalue()
    assert "resume" in out and "5/5" in out
    assert "loss 7.2" in out and "0.25 s/it" in out and "ETA 0:00" in out
    assert "Δ 6.90e-03" in out  # (7.25 - 7.2) / 7.25


def test_dashboard_link_on_a_cluster(clock):
    console, buf = _console(terminal=False)
    backend = SimpleNamespace(dashboard_link="http://127.0.0.1:8787/status")
    _run(Progress(1, 2, backend, console=console), clock, [2.0, 1.0])
    assert buf.getvalue().splitlines()[0] == "Dask dashboard: http://127.0.0.1:8787/status"


def test_verbose_2_logs_every_iteration(clock, caplog):
    console, _ = _console(terminal=False)
    with caplog.at_level(logging.INFO, logger="dnmf"):
        _run(Progress(2, 3, console=console), clock, [3.0, 2.0, 1.0])
    assert [r.getMessage().split()[2] for r in caplog.records] == ["1/3", "2/3", "3/3"]


def test_pace_averages_recent_iterations(clock):
    console, buf = _console(terminal=False)
    progress = Progress(1, 100, console=console)
    state = FitState(W=[], H=np.zeros((1, 1)), init_loss=10.0)
    with progress:
        for i, step in enumerate([1.0] * 20 + [3.0] * _progress.PACE_WINDOW):
            clock.now += step
            state.loss_history.append(10.0 - i * 0.01)
            progress.update(state)
    assert "3 s/it" in buf.getvalue().splitlines()[-1]


def test_display_mode(monkeypatch):
    assert display_mode(SimpleNamespace(is_jupyter=False, is_interactive=True)) == "live"
    assert display_mode(SimpleNamespace(is_jupyter=False, is_interactive=False)) == "plain"
    jupyter = SimpleNamespace(is_jupyter=True, is_interactive=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    assert display_mode(jupyter) == "live"
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert display_mode(jupyter) == "plain"


def test_estimator_verbose_1_shows_progress(capsys):
    X = np.random.default_rng(0).random((60, 8))
    with pytest.warns(dnmf.ConvergenceWarning):
        dnmf.NMF(3, max_iter=5, tol=0, verbose=1, random_state=0, scheduler="threads").fit(X)
    err = capsys.readouterr().err
    assert "fit: iteration 1/5" in err and "fit: iteration 5/5" in err


def test_estimator_verbose_0_is_silent(capsys):
    X = np.random.default_rng(0).random((60, 8))
    with pytest.warns(dnmf.ConvergenceWarning):
        dnmf.NMF(3, max_iter=3, tol=0, random_state=0, scheduler="threads").fit(X)
    assert capsys.readouterr().err == ""
