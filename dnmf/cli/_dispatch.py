"""Running one command line: one-line warnings and errors, quiet logs, SIGTERM
handled like Ctrl-C, and the exit status. A user's mistake prints ``error: ...`` on
standard error and exits non-zero (2 for a bad command line, 1 otherwise, 130 when
interrupted, 143 when terminated), never a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import warnings
from typing import Any

import typer

from ..errors import (
    DnmfError,
    InvalidParameterError,
)
from . import _output
from ._app import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, Terminated, app
from ._output import _cli_terms, _one_line


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    if _internal_noise(message, category):
        return
    sys.stderr.write(f"warning: {_one_line(str(message))}\n")


#: A warning about a library's internals that says nothing to the user: a Ctrl-C that
#: lands while zarr is between creating one of its read coroutines and awaiting it
#: leaves that coroutine to be collected with this RuntimeWarning (the interrupted
#: pass is not committed; nothing is lost).
_UNAWAITED = r"coroutine .* was never awaited"


def _internal_noise(message: Any, category: type[Warning]) -> bool:
    return issubclass(category, RuntimeWarning) and re.match(_UNAWAITED, str(message)) is not None


def _help_only(args: list[str]) -> bool:
    """The command line only asks for help or the version (no command runs)."""
    return not args or any(a in ("--help", "-h", "--version") for a in args)


def _quiet_logs(debug: bool, dask_too: bool = True) -> None:
    import logging

    if debug:
        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
        logging.getLogger("dnmf").setLevel(logging.DEBUG)
        return
    # A lost scheduler is reported as dnmf's own error, with how to continue; the
    # client's log of its failed reconnection would only repeat it.
    levels = {"distributed": "error", "distributed.client": "critical",
              "tornado": "critical", "bokeh": "error",
              # distributed sets this one to "error" itself; a Ctrl-C that lands in
              # distributed's sync() before its future exists makes the cancel
              # callback log a NameError traceback here (a distributed bug) after the
              # interrupt has been reported.
              "tornado.application": "critical",
              # zarr's writes run as asyncio tasks: when one fails (a full disk) the
              # others are dropped with "Task was destroyed but it is pending!" noise
              # after the error has been reported on one line.
              "asyncio": "critical"}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level.upper())
    # Importing distributed sets its loggers from Dask's config (INFO by default):
    # quiet there too, unless the user's own config says otherwise.
    if not dask_too:
        return
    import dask

    dask.config.set({"distributed.logging": {
        **levels, **(dask.config.get("distributed.logging", None) or {})}})


def _click_errors() -> tuple[type[Exception], type[Exception]]:
    """Click's UsageError and ClickException, as the installed Typer uses them.

    Typer 0.12–0.2x uses Click itself; newer versions carry their own copy.
    """
    mro = typer.BadParameter.__mro__
    usage = next(c for c in mro if c.__name__ == "UsageError")
    base = next(c for c in mro if c.__name__ == "ClickException")
    return usage, base


def _usage_message(exc: Any) -> str:
    message = _one_line(exc.format_message())
    ctx = exc.ctx
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"error: {message}{hint}"


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def run(argv: list[str]) -> int:
    """Run one command line; return its exit status (what :func:`main` exits with).

    Installs, for the duration of the command, a SIGTERM handler (to commit like
    Ctrl-C) and one-line warnings; both are restored afterwards.
    """
    args = list(argv)
    cut = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:cut] or os.environ.get("DNMF_DEBUG", "") not in ("", "0")
    args = [a for i, a in enumerate(args) if not (a == "--debug" and i < cut)]
    args, storage = _storage_options(args)
    # Help and the version never reach Dask: they need not pay for importing it.
    _quiet_logs(debug, dask_too=not _help_only(args[:cut]))
    saved_showwarning = warnings.showwarning
    if not debug:
        warnings.showwarning = _show_warning
    saved_sigterm: Any = None
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        saved_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    if isinstance(storage, str):
        _fail(storage)
        return EXIT_USAGE
    saved_conf = _apply_storage_options(storage, args) if storage else None
    try:
        return _dispatch(args, debug)
    finally:
        if saved_conf is not None:
            import fsspec.config

            fsspec.config.conf.clear()
            fsspec.config.conf.update(saved_conf)
        warnings.showwarning = saved_showwarning
        if saved_sigterm is not None:
            signal.signal(signal.SIGTERM, saved_sigterm)
        sys.stdout.flush()


def _storage_options(args: list[str]) -> tuple[list[str], dict[str, Any] | str]:
    """``--storage-option KEY=VALUE`` (repeatable, anywhere before ``--``) taken out of
    the command line, parsed; a malformed one is returned as the error message."""
    cut = args.index("--") if "--" in args else len(args)
    kept: list[str] = []
    found: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if i < cut and a == "--storage-option":
            if i + 1 >= cut:
                return args, "--storage-option needs KEY=VALUE (see 'dnmf --help')"
            found.append(args[i + 1])
            i += 2
            continue
        if i < cut and a.startswith("--storage-option="):
            found.append(a.partition("=")[2])
        else:
            kept.append(a)
        i += 1
    if not found:
        return kept, {}
    from ..io._remote import parse_storage_option

    try:
        return kept, dict(parse_storage_option(text) for text in found)
    except DnmfError as exc:
        return kept, str(exc)


def _apply_storage_options(options: dict[str, Any], args: list[str]) -> dict[str, Any]:
    """fsspec defaults for the protocols of the URLs on the command line (s3 if none);
    returns the configuration to restore afterwards."""
    import copy

    import fsspec.config

    from ..io._remote import protocol_of, set_storage_options

    saved = copy.deepcopy(dict(fsspec.config.conf))
    protocols = sorted({protocol_of(a) for a in args if "://" in a} - {"file"}) or ["s3"]
    for protocol in protocols:
        set_storage_options(protocol, **options)
    return saved


def _unreachable(exc: BaseException, args: list[str]) -> str | None:
    """The one line for an object store (or other URL) that cannot be reached."""
    chain = [exc]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        nxt = chain[-1].__cause__ or chain[-1].__context__
        if nxt in chain or len(chain) > 8:
            break
        chain.append(nxt)
    names = {type(e).__name__ for e in chain}
    network = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
               "ClientConnectorError", "ServerTimeoutError", "ReadTimeoutError",
               "ConnectionRefusedError", "NoCredentialsError"}
    if not names & network:
        return None
    urls = [a for a in args if "://" in a]
    what = ", ".join(urls) if urls else "the object store"
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("FSSPEC_S3_ENDPOINT_URL")
    at = f" (endpoint {endpoint})" if endpoint else ""
    return (f"cannot reach {what}{at}: {type(exc).__name__}: {_one_line(str(exc))}. Check "
            f"the endpoint, the credentials and the network.")


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")


def _dispatch(args: list[str], debug: bool) -> int:
    usage_error, click_error = _click_errors()
    said = _output.SAID[0]
    try:
        rc = app(args=args, prog_name="dnmf", standalone_mode=False)
        if rc == EXIT_INTERRUPTED and _output.SAID[0] == said:
            # Typer turns a Ctrl-C the command did not handle (it came before the
            # command had started anything) into a silent exit 130: say it.
            _fail("interrupted before the command started its work: nothing was done.")
        return rc if isinstance(rc, int) else 0
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # plain "dnmf": show the help
            typer.echo(exc.format_message())  # type: ignore[attr-defined]
            return 0
        if debug:
            raise
        sys.stderr.write(_usage_message(exc) + "\n")
        return EXIT_USAGE
    except click_error as exc:
        if debug:
            raise
        _fail(_one_line(exc.format_message()))  # type: ignore[attr-defined]
        return int(getattr(exc, "exit_code", EXIT_ERROR))
    except typer.Abort:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except DnmfError as exc:
        if debug:
            raise
        _fail(_one_line(_cli_terms(str(exc))))
        # A bad option value is a usage error, whoever noticed it.
        return EXIT_USAGE if isinstance(exc, InvalidParameterError) else EXIT_ERROR
    except OSError as exc:
        if debug:
            raise
        unreachable = _unreachable(exc, args)
        if unreachable:
            _fail(unreachable)
            return EXIT_ERROR
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        _fail(f"{exc.strerror or exc}{where}")
        return EXIT_ERROR
    except Exception as exc:
        if debug:
            raise
        unreachable = _unreachable(exc, args)
        if unreachable:
            _fail(unreachable)
            return EXIT_ERROR
        _fail(f"unexpected {type(exc).__name__}: {_one_line(str(exc))} (this is a bug in "
              f"dnmf: run again with --debug for the traceback and report it)")
        return EXIT_ERROR


def main(argv: list[str] | None = None) -> None:
    """The ``dnmf`` entry point: run the command line and exit with its status."""
    # Coroutines collected as the process exits (after run() has restored the default
    # warning display) would print zarr's internals too (_UNAWAITED).
    warnings.filterwarnings("ignore", message=_UNAWAITED, category=RuntimeWarning)
    try:
        status = run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        # Ctrl-C before the command's own handling (while Dask is imported): one line.
        _fail("interrupted while dnmf was starting: nothing was done.")
        status = 130
    sys.exit(status)

