"""The ``dnmf`` command: convert, fit, resume, info, transform, export, top, plot, demo.

Each command is a thin layer over the library (:class:`dnmf.NMF`, the run store,
:mod:`dnmf._convert`, :mod:`dnmf._plot`) in a module of its own: it parses options,
prepares inputs and schedulers, and turns outcomes into messages for people. The
shared pieces are ``_app`` (the Typer application), ``_output`` (what is printed),
``_options`` (shared option types), ``_scheduler`` (where to compute), ``_inputs``
(input preparation), ``_runs`` (run stores and their replacement) and ``_dispatch``
(running a command line: errors, warnings, signals, exit status).

Errors follow one rule: a user's mistake prints one line ``error: ...`` on standard
error and exits non-zero, never a traceback unless ``--debug`` is given. No command
destroys what is already written when it fails: outputs are written under temporary
names and renamed into place.

A new command is a new module here, imported below so that it registers on ``app``.
"""

from __future__ import annotations

from . import (  # noqa: F401  (each command registers on app)
    convert,
    demo,
    export,
    fit,
    info,
    plot,
    rank,
    resume,
    top,
    transform,
)
from ._app import app
from ._dispatch import main, run

__all__ = ["app", "main", "run"]
