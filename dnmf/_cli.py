"""The command line moved to :mod:`dnmf.cli` (one module per command).

Kept so that ``dnmf`` scripts installed before the move (``dnmf._cli:main``) go on
working; new code imports :mod:`dnmf.cli`.
"""

from __future__ import annotations

from .cli import app, main, run

__all__ = ["app", "main", "run"]
