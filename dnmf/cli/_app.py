"""The Typer application every command registers on, its root options and exit codes.

Holds no command: each command lives in a module of its own (``fit.py``, ``convert.py``,
...) that decorates its function with ``@app.command()``; :mod:`dnmf.cli` imports them.

The command modules do not use ``from __future__ import annotations``: Typer reads the
annotation of every parameter of every command to build ``dnmf --help``, and a string
annotation costs it a compile and an eval each, about 40 ms of the command's 0.2 s
(benchmarks/bench_startup.py). Names needed only for type checking are quoted instead.
"""

from __future__ import annotations

from typing import Annotated

import typer

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


app = typer.Typer(
    name="dnmf",
    help="Non-negative matrix factorization V ≈ W·H of matrices larger than memory, "
    "on Dask and Zarr.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"dnmf {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", is_eager=True,
        callback=_print_version)] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show full tracebacks and debug logs on errors (anywhere on the "
        "command line; or set DNMF_DEBUG=1).")] = False,
    storage_option: Annotated[list[str] | None, typer.Option(
        "--storage-option", metavar="KEY=VALUE",
        help="An fsspec option for s3:// (and other URL) stores, e.g. "
        "endpoint_url=http://127.0.0.1:9000 (anywhere on the command line; repeatable; "
        "VALUE is JSON when it parses).")] = None,
) -> None:
    """Non-negative matrix factorization V ≈ W·H of matrices larger than memory.

    Start with "dnmf demo"; a fit is "dnmf fit DATA --rank K --out
    RUN.zarr". Ctrl-C keeps a resumable checkpoint.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's time limit, ``kill``): handled like Ctrl-C."""


def _exit_code(exc: BaseException) -> int:
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED

