"""The ``dnmf`` console script (and ``python -m dnmf``).

A Ctrl-C while the command line is still being imported (typer, the command modules;
a second or two on a loaded machine) would otherwise end in Python's traceback of the
import that was interrupted. Here it is one line, exit status 130, nothing done.
"""

from __future__ import annotations

import sys

INTERRUPTED = 130  # 128 + SIGINT, as the shells report it


def _interrupted() -> None:
    sys.stderr.write("error: interrupted while dnmf was starting: nothing was done.\n")
    sys.exit(INTERRUPTED)


def main() -> None:
    try:
        from .cli import main as run_main
    except KeyboardInterrupt:
        _interrupted()
    run_main()  # reports a Ctrl-C before its commands handle one themselves
