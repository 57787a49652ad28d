"""``dnmf fit``: factorize an input into a run store."""

import contextlib
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import errors  # errors.ConvergenceWarning: made (with scikit-learn) when used
from ..errors import (
    ClusterLostError,
    InvalidParameterError,
)
from ._app import _exit_code, app
from ._inputs import _make_parent, _prepare_input, _put_back, _refuse_foreign, _zarr_array_info
from ._masks import MaskOpt, MissingOpt, check_missing_options, prepare_mask
from ._options import (
    DtypeName,
    ExtrapolateName,
    ForgetPer,
    IndexColOpt,
    InitName,
    LayerOpt,
    RawOpt,
    SolverName,
    _parse_loss,
    _parse_size,
    reading_options,
)
from ._output import _absolute, _quote, _say
from ._runs import (
    _has_commit,
    _holding,
    _interrupted,
    _lost,
    _recover,
    _replacing,
    _report_fit,
)
from ._scheduler import (
    PanelSizeOpt,
    SchedulerFileOpt,
    SchedulerOpt,
    _check_scheduler,
    _scheduler,
    _scheduler_args,
)


def _alpha_h(value: str) -> float | str:
    if value == "same":
        return "same"
    try:
        alpha = float(value)
    except ValueError:
        alpha = -1.0
    if not (alpha >= 0 and math.isfinite(alpha)):
        raise typer.BadParameter(f"must be 'same' or a non-negative number, got {value!r}.")
    return alpha


def _check_extrapolate_on(solver: str, loss: Any, masked: bool) -> None:
    """``--extrapolate on`` where it is unavailable: one line, before anything is read."""
    from .._extrapolation import supported

    if not supported(solver, loss):
        why = f"--solver {solver} with --loss {loss}"
    elif masked:
        why = "--missing or --mask (masked fits)"
    else:
        return
    raise InvalidParameterError(
        f"--extrapolate on is for --solver hals or als with --loss frobenius, not {why}. "
        f"Use --extrapolate auto (extrapolate where available) or --extrapolate off.")


@app.command()
def fit(
    input: Annotated[str, typer.Argument(
        metavar="INPUT", help="A Zarr array (path or URL) or any file that 'dnmf convert' reads.",
        show_default=False)],
    rank: Annotated[int, typer.Option(
        "--rank", "-k", min=1, metavar="K", help="The rank K of W·H.", show_default=False)],
    out: Annotated[str, typer.Option(
        "--out", "-o", metavar="RUN", help="The run store to write (RUN.zarr).",
        show_default=False)],
    solver: Annotated[SolverName | None, typer.Option(
        help="auto (hals for frobenius, amu for kl, mu for masked kl and other "
             "losses), hals, mu (multiplicative updates), als (alternating NNLS) or amu "
             "(accelerated MU, KL only) [default: auto; not with --online].",
        show_default=False)] = None,
    loss: Annotated[str, typer.Option(
        metavar="LOSS", help="frobenius, kullback-leibler (kl), itakura-saito (is) or any "
        "number beta (the beta-divergence); other than frobenius with --solver mu "
        "(kl also amu) or --online.")] = "frobenius",
    init: Annotated[InitName | None, typer.Option(
        help="Initialisation [default: nndsvda if K <= min(n, m), else random].",
        show_default=False)] = None,
    extrapolate: Annotated[ExtrapolateName | None, typer.Option(
        help="Extrapolation with restarts (HALS and ALS, Frobenius): auto (where "
             "available), on (refused elsewhere) or off (plain iterations) "
             "[default: auto; not with --online].", show_default=False)] = None,
    max_iter: Annotated[int, typer.Option("--max-iter", min=1,
                                          help="Maximum number of iterations.")] = 200,
    tol: Annotated[float, typer.Option(min=0.0, help="Stop when the loss decreases by less "
                                       "than this (relative) in an iteration.")] = 1e-4,
    seed: Annotated[int | None, typer.Option(
        min=0, help="Random seed [default: a fresh one, recorded in the run].",
        show_default=False)] = None,
    alpha_w: Annotated[float, typer.Option("--alpha-w", min=0.0,
                                           help="Regularisation of W.")] = 0.0,
    alpha_h: Annotated[str, typer.Option("--alpha-h", parser=_alpha_h, metavar="FLOAT|same",
                                         help="Regularisation of H ('same': as W).")] = "same",
    l1_ratio: Annotated[float, typer.Option("--l1-ratio", min=0.0, max=1.0,
                                            help="L1 share of the regularisation.")] = 0.0,
    checkpoint_every: Annotated[int | None, typer.Option(
        "--checkpoint-every", min=1, help="Commit a checkpoint every N iterations [default: "
        "10; with --online: N batches, default once per pass over INPUT].",
        show_default=False)] = None,
    online: Annotated[bool, typer.Option(
        "--online", help="Online NMF (dnmf.MiniBatchNMF): update H batch by batch instead "
        "of one pass over INPUT per iteration; --max-iter counts passes.")] = False,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="With --online: rows per batch.")] = 1024,
    forget_factor: Annotated[float, typer.Option(
        "--forget-factor", min=0.0, max=1.0,
        help="With --online: weight of past batches in H's running sums.")] = 0.7,
    forget_per: Annotated[ForgetPer, typer.Option(
        "--forget-per",
        help="With --online: --forget-factor per pass over INPUT (scikit-learn's rule) "
        "or per batch (as a partial_fit loop).")] = ForgetPer.pass_,
    fresh_restarts: Annotated[bool, typer.Option(
        "--fresh-restarts", help="With --online: solve each batch's W to convergence.")
    ] = False,
    in_flight: Annotated[int, typer.Option(
        "--in-flight", min=1, help="With --online on a Dask cluster: batches sent to the "
        "workers at once (the result depends on this, not on the cluster's size).")] = 4,
    scheduler: SchedulerOpt = None,
    scheduler_file: SchedulerFileOpt = None,
    dtype: Annotated[DtypeName | None, typer.Option(
        help="Convert INPUT to this dtype first [default: keep].", show_default=False)] = None,
    chunk_rows: Annotated[int | None, typer.Option(
        "--chunk-rows", min=1, help="Rows per chunk when INPUT is converted.",
        show_default=False)] = None,
    dataset: Annotated[str | None, typer.Option(
        help="The array inside an HDF5 file, a Zarr group or an .npz archive.",
        show_default=False)] = None,
    transpose: Annotated[bool, typer.Option(
        "--transpose", help="Factorize the transpose of INPUT.")] = False,
    cache: Annotated[bool | None, typer.Option(
        "--cache/--no-cache", show_default=False,
        help="Keep V in memory after its first read (--cache: whatever its size, only "
             "if it fits), or read it every pass. Default: kept when at most 1 GiB "
             "(and an eighth of the free memory).")
    ] = None,
    panel_size: PanelSizeOpt = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a different run at --out (kept if this fit fails).")] = False,
    dense: Annotated[bool, typer.Option(
        "--dense", help="Convert a sparse INPUT to a dense array first [default: sparse "
        "INPUT is fitted sparse, as a CSR Zarr group].")] = False,
    layer: LayerOpt = None,
    raw: RawOpt = False,
    index_col: IndexColOpt = "auto",
    missing: MissingOpt = None,
    mask: MaskOpt = None,
) -> None:
    """Factorize INPUT ≈ W·H and store the run (W, H, state) in --out.

    Shows a live progress bar. Ctrl-C commits a checkpoint and prints the command
    that continues the run; running the same fit command again also continues it.
    Zarr, .npy (memory-mapped) and HDF5/h5ad/10x inputs are read where they are, by
    row panels; any other INPUT is first converted to OUT's name with .input.zarr,
    kept next to the run so that 'dnmf resume' can read it.
    """
    started = time.perf_counter()
    _check_scheduler(scheduler, scheduler_file)
    if online and solver is not None:
        raise InvalidParameterError(
            f"--solver {solver.value} does not apply with --online: online NMF updates W "
            f"and H by multiplicative steps. Drop --solver, or drop --online.")
    if not online and (batch_size != 1024 or forget_factor != 0.7 or fresh_restarts
                       or in_flight != 4 or forget_per is not ForgetPer.pass_):
        raise InvalidParameterError(
            "--batch-size, --forget-factor, --forget-per, --fresh-restarts and --in-flight "
            "apply only with --online.")
    check_missing_options(missing, mask, online=online, dense=dense)
    if online and extrapolate is not None:
        raise InvalidParameterError(
            f"--extrapolate {extrapolate.value} does not apply with --online: it "
            f"extrapolates HALS and ALS iterations. Drop --extrapolate, or drop --online.")
    loss_name = _parse_loss(loss)
    from .._validation import resolve_solver  # numpy: not at import (dnmf --help)

    masked = missing is not None or mask is not None
    solver = SolverName(resolve_solver((solver or SolverName.auto).value, loss_name, masked))
    if extrapolate is ExtrapolateName.on:
        _check_extrapolate_on(solver.value, loss_name, masked)
    extrapolate = extrapolate or ExtrapolateName.auto
    panel_bytes = None if panel_size is None else _parse_size(panel_size, "--panel-size")
    sched = _scheduler_args(scheduler, scheduler_file)
    if "://" not in out and Path(out).resolve() == Path(input).resolve():
        raise InvalidParameterError("--out must not be INPUT itself.")
    if not overwrite:
        _refuse_foreign(out)
    out_existed = "://" in out or Path(out).exists()
    if "://" not in out:
        _make_parent(out)
    _recover(out)
    try:
        with _holding(out):
            report = _fit_holding(
                input, out, rank, solver, loss_name, init, max_iter, tol, seed, alpha_w,
                alpha_h, l1_ratio, checkpoint_every, scheduler, scheduler_file, dtype,
                chunk_rows, dataset, transpose, cache, panel_bytes, overwrite, dense,
                out_existed, sched, reading_options(layer, raw, index_col),
                online=online, batch_size=batch_size, forget_factor=forget_factor,
                forget_per=forget_per.value,
                fresh_restarts=fresh_restarts, in_flight=in_flight, started=started,
                missing=missing.value if missing else None, mask=mask,
                extrapolate=extrapolate.param)
    finally:
        if not out_existed and "://" not in out:
            with contextlib.suppress(OSError):
                os.rmdir(out)  # only if empty: a fit stopped before its first commit
    if report:
        _report_fit(out, started, sched)


def _anndata_hint(exc: errors.InvalidInputError, input: str,
                  reading: Any) -> errors.InvalidInputError:
    """Negative values in the X of an AnnData input: X is then usually scaled or
    centred data (scanpy's pp.scale), and the counts are in raw or a layer: say so."""
    chosen = dict(reading or {})
    if (not str(exc).startswith("Negative values")
            or chosen.get("layer") or chosen.get("raw")
            or not (input.rstrip("/").endswith((".h5ad", ".zarr")))):
        return exc
    from ..io import open_source

    try:
        source = open_source(input)
    except Exception:  # the hint is optional; the error stands
        return exc
    if source.format not in ("h5ad", "anndata-zarr"):
        return exc
    return errors.InvalidInputError(
        f"{exc} In an AnnData file, a negative X is usually scaled or centred data: fit "
        f"the counts or normalised values instead, with --raw (raw/X) or --layer NAME.")


def _fit_holding(input: str, out: str, rank: int, solver: Any, loss_name: str, init: Any,
                 max_iter: int, tol: float, seed: int | None, alpha_w: float, alpha_h: Any,
                 l1_ratio: float, checkpoint_every: int, scheduler: Any, scheduler_file: Any,
                 dtype: Any, chunk_rows: int | None, dataset: str | None, transpose: bool,
                 cache: bool | None, panel_bytes: int | None, overwrite: bool, dense: bool,
                 out_existed: bool, sched: str, reading: Any = None, *, online: bool = False,
                 batch_size: int = 1024, forget_factor: float = 0.7,
                 forget_per: str = "pass",
                 fresh_restarts: bool = False, in_flight: int = 4,
                 started: float = 0.0, missing: str | None = None,
                 mask: str | None = None, extrapolate: bool | str = "auto") -> bool:
    """The conversion and the fit, under the run's lock (see :func:`_holding`)."""
    import dnmf

    try:
        # scikit-learn (the estimators' mixins, the ConvergenceWarning) is imported now,
        # before a cluster starts: a Ctrl-C during that second of imports finds nothing
        # to stop and nothing written.
        dnmf.MiniBatchNMF if online else dnmf.NMF  # noqa: B018
        errors.ConvergenceWarning  # noqa: B018
    except KeyboardInterrupt as exc:
        _say("interrupted before the fit started: nothing was written.")
        raise typer.Exit(_exit_code(exc)) from None
    try:
        path, created, aside = _prepare_input(
            input, out, dtype=dtype.value if dtype else None, chunk_rows=chunk_rows,
            transpose=transpose, dataset=dataset, overwrite=overwrite, dense=dense,
            reading=reading, missing=missing,
        )
    except KeyboardInterrupt as exc:
        _say(f"interrupted while converting {input}: nothing was written.")
        raise typer.Exit(_exit_code(exc)) from None
    replaced: dict[str, bool] = {}
    mask_array = mask_created = mask_aside = None
    try:
        if mask is not None:
            try:
                mask_array, mask_created, mask_aside = prepare_mask(
                    mask, path, out, overwrite=overwrite)
            except KeyboardInterrupt as exc:
                _say(f"interrupted while copying the mask {mask}.")
                raise typer.Exit(_exit_code(exc)) from None
        if online:
            with _scheduler(scheduler, scheduler_file) as client:
                _fit_online(
                    path, out, client, rank=rank, loss=loss_name,
                    init=init.value if init else None, max_iter=max_iter, tol=tol,
                    seed=seed, alpha_w=alpha_w, alpha_h=alpha_h, l1_ratio=l1_ratio,
                    batch_size=batch_size, forget_factor=forget_factor,
                    forget_per=forget_per,
                    fresh_restarts=fresh_restarts, every=checkpoint_every,
                    overwrite=overwrite, started=started, in_flight=in_flight,
                )
            return False
        with _scheduler(scheduler, scheduler_file) as client, \
                _replacing(out, overwrite, replaced) as ow:
            est = dnmf.NMF(
                rank, solver=solver.value, beta_loss=loss_name,
                init=init.value if init else None, max_iter=max_iter, tol=tol,
                random_state=seed, alpha_W=alpha_w, alpha_H=alpha_h, l1_ratio=l1_ratio,
                verbose=1, scheduler=client, out=_absolute(out),
                checkpoint_every=10 if checkpoint_every is None else checkpoint_every,
                overwrite=ow, cache="auto" if cache is None else cache,
                panel_bytes=panel_bytes, missing=missing, extrapolate=extrapolate,
            )
            shape, stored, _, sparse = _zarr_array_info(path)
            where = "local threads" if client == "threads" else "the Dask cluster"
            kind = f"{stored}, sparse" if sparse else f"{stored}"
            how = [f"--missing {missing}"] if missing else []
            how += [f"--mask {mask}"] if mask else []
            observed = f", observed entries only ({', '.join(how)})" if how else ""
            _say(f"fitting {path} ({shape[0]} × {shape[1]} {kind}) with rank {rank}, "
                 f"{solver.value}, on {where}{observed}: reading the data and initialising "
                 f"first")
            try:
                with warnings.catch_warnings():
                    # The summary below says whether the fit converged.
                    warnings.simplefilter("ignore", errors.ConvergenceWarning)
                    est.fit(_absolute(path), mask=mask_array)
            except KeyboardInterrupt as exc:
                raise _interrupted(out, sched, exc) from None
            except ClusterLostError as exc:
                raise _lost(out, sched, exc) from None
            except errors.InvalidInputError as exc:
                raise _anndata_hint(exc, input, reading) from None
    except KeyboardInterrupt as exc:
        # Ctrl-C while the cluster starts or stops, or before the fit began: the same
        # report (what is committed, how to go on), never a silent exit.
        raise _interrupted(out, sched, exc) from None
    except BaseException as exc:
        failed = not isinstance(exc, typer.Exit | KeyboardInterrupt)
        if failed and not (_has_online_commit(out) if online else _has_commit(out)):
            # Leave no debris of a fit that never committed: what this command made.
            if not out_existed:
                shutil.rmtree(out, ignore_errors=True)
            if created is not None and aside is None:
                shutil.rmtree(created, ignore_errors=True)
            if mask_created is not None and mask_aside is None:
                shutil.rmtree(mask_created, ignore_errors=True)
        raise
    finally:
        if mask_aside is not None:
            committed = replaced["committed"] if "committed" in replaced else _has_commit(out)
            if committed:
                shutil.rmtree(mask_aside, ignore_errors=True)
            else:
                _put_back(mask_created, mask_aside)
        if aside is not None:
            # The conversion replaced another one. If the new fit committed, the run
            # that read the old one is gone; if not, that run is back (or there was
            # none) and so is its input.
            committed = replaced["committed"] if "committed" in replaced else _has_commit(out)
            if committed:
                shutil.rmtree(aside, ignore_errors=True)
            else:
                _put_back(Path(path), aside)
    return True



def _has_online_commit(path: str) -> bool:
    from ..errors import DnmfError

    try:
        from .._store import RunStore, as_location

        return RunStore(as_location(_absolute(path))).read_manifest() is not None
    except (DnmfError, OSError, ValueError):
        return False


def _fit_online(path: str, out: str, client: object, *, rank: int, loss: str,
                init: str | None, max_iter: int, tol: float, seed: int | None,
                alpha_w: float, alpha_h: float | str, l1_ratio: float, batch_size: int,
                forget_factor: float, fresh_restarts: bool, every: int | None,
                overwrite: bool, started: float, in_flight: int = 4,
                forget_per: str = "pass") -> None:
    """``dnmf fit --online``: a MiniBatchNMF with its state committed to OUT."""
    import dnmf

    est = dnmf.MiniBatchNMF(
        rank, init=init, batch_size=batch_size, beta_loss=loss, tol=tol, max_iter=max_iter,
        alpha_W=alpha_w, alpha_H=alpha_h, l1_ratio=l1_ratio, forget_factor=forget_factor,
        forget_per=forget_per,
        fresh_restarts=fresh_restarts, random_state=seed, scheduler=client,
        out=_absolute(out), checkpoint_every=every, overwrite=overwrite,
        in_flight=in_flight,
    )
    shape, stored, _, sparse = _zarr_array_info(path)
    where = "local threads" if client == "threads" else "the Dask cluster"
    kind = f"{stored}, sparse" if sparse else f"{stored}"
    _say(f"fitting {path} ({shape[0]} × {shape[1]} {kind}) online with rank {rank}, "
         f"batches of {min(batch_size, shape[0])} rows, on {where}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", errors.ConvergenceWarning)
            est.fit(_absolute(path))
    except KeyboardInterrupt as exc:
        _say(f"interrupted: the online state is committed in {out}; run the same command "
             f"again to continue.")
        raise typer.Exit(_exit_code(exc)) from None
    took = time.perf_counter() - started
    stopped = ("stopped by its stopping rule" if est.n_iter_ < max_iter
               else f"stopped at --max-iter {max_iter}")
    from ._output import _result

    _result(f"{stopped} after {est.n_steps_} batches ({est.n_iter_} passes): "
            f"reconstruction error {est.reconstruction_err_:.6g}, in {took:.1f} s. Online "
            f"run saved to {out}")
    _result(f"next: dnmf info {_quote(out)}  |  dnmf top {_quote(out)}  |  dnmf export "
            f"{_quote(out)} --out DIR")
