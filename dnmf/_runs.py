"""Runs as the user handles them: :class:`Run` (a committed snapshot), :func:`open_run`
and :func:`resume`.

An interface over the estimator and the run store's fit (:mod:`dnmf._run`): it reads
manifests back and continues a run through :class:`dnmf.NMF`. Nothing below imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _engine
from ._run import committed_H, committed_panels, lazy_W, recorded_bounds
from ._store import ZIP_WORKDIR_SUFFIX, Location, RunStore, as_location
from .errors import (
    InvalidInputError,
    InvalidParameterError,
    StoreError,
)

if TYPE_CHECKING:
    from ._estimator import NMF

__all__ = ["OnlineRun", "Run", "open_run", "resume"]


class Run:
    """A committed snapshot of a run, as :func:`open_run` reads it.

    Attributes
    ----------
    W : dask.array.Array of shape (n_samples, n_components)
        Read lazily from the committed W buffer; each chunk is checked against its
        checksum when it is read.
    H : ndarray of shape (n_components, n_features)
    iteration : int
        Iterations done.
    loss_history : list of float
        The objective (data term plus penalties) after each iteration.
    params : dict
        The parameters of the run (``random_state`` is the seed actually used).
    complete : bool
        The fit finished (converged, stopped by its callback, or reached max_iter).
    stop_reason : {"converged", "callback", "max_iter"} or None
    fingerprint : dict
        V's shape, dtype, storage chunks and the checksum of sampled panels.
    source : dict
        Where V came from (``location`` is None for in-memory data).
    dnmf_version, created, updated : str
    path : str
    """

    def __init__(self, store: RunStore, manifest: dict[str, Any], *,
                 verify: bool = True, out: Any = None) -> None:
        self.store = store
        self.manifest = manifest
        self.path = str(store.location)
        #: what to pass as ``out`` to continue this run (the zip, the Store object)
        self.out = out if out is not None else self.path
        self.run_id: str = manifest["run_id"]
        self.iteration = int(manifest["iteration"])
        self.loss_history = [float(x) for x in manifest["loss_history"]]
        self.init_loss = manifest["init_loss"]
        #: The data term at the last iterate when the run is penalised (else None).
        self.data_loss = (None if manifest.get("data_loss") is None
                          else float(manifest["data_loss"]))
        self.params = dict(manifest["params"])
        self.complete = bool(manifest["complete"])
        self.stop_reason = manifest.get("stop_reason")
        self.fingerprint = manifest["fingerprint"]
        self.source = manifest.get("source", {})
        self.dnmf_version = manifest.get("dnmf_version")
        self.created = manifest.get("created")
        self.updated = manifest.get("updated")
        n, m = manifest["fingerprint"]["shape"]
        self.shape = (int(n), int(m))
        self.dtype = np.dtype(manifest["fingerprint"]["dtype"])
        self.bounds = recorded_bounds(self.params, int(n))
        store.verify_arrays(manifest)
        self.H = committed_H(store, manifest)
        self._panels = committed_panels(store, manifest)
        if verify:
            for panel in self._panels:
                panel.load()

    @property
    def W(self) -> Any:
        return lazy_W(self.store, self.manifest, self._panels)

    def to_estimator(self) -> NMF:
        """A fitted :class:`~dnmf.NMF` with this run's parameters and results."""
        # Imported here: reading a run (dnmf info, export, plot) needs no scikit-learn.
        from ._estimator import NMF

        p = self.params
        est = NMF(
            p["n_components"], solver=p["solver"], beta_loss=p["beta_loss"], init=p["init"],
            max_iter=p["max_iter"], tol=p["tol"], random_state=p["random_state"],
            alpha_W=p["alpha_W"], alpha_H=p["alpha_H"], l1_ratio=p["l1_ratio"],
            panel_rows=None if "panel_starts" in p else p["panel_rows"], out=self.out,
            checkpoint_every=p["checkpoint_every"], cache=p["cache"],
            missing=p.get("missing"), shuffle=bool(p.get("shuffle", False)),
            extrapolate=bool(p.get("extrapolate", False)),
        )
        state = _engine.FitState(W=[], H=self.H, iteration=self.iteration,
                                 loss_history=list(self.loss_history), init_loss=self.init_loss,
                                 data_loss=self.data_loss)
        est._set_fitted(state, int(p["n_components"]), self.shape[1])
        if self.manifest.get("heldout_loss") is not None:
            est.heldout_loss_ = float(self.manifest["heldout_loss"])
            est.n_heldout_ = int(self.manifest["summary"].get("n_heldout", 0))
        return est

    def __repr__(self) -> str:
        status = f"complete ({self.stop_reason})" if self.complete else "in progress"
        loss = f", loss {self.loss_history[-1]:.6g}" if self.loss_history else ""
        return (f"Run({self.path!r}: {self.shape[0]}×{self.shape[1]}, k="
                f"{self.params['n_components']}, {self.params['solver']}, iteration "
                f"{self.iteration}{loss}, {status})")


def _reading_location(path: Any) -> Location:
    loc = as_location(path)
    if loc.kind == "zip":
        work = Location("local", loc.path + ZIP_WORKDIR_SUFFIX)
        if RunStore(work).read_bytes("manifest.json") is not None:
            return work
    return loc


def open_run(path: Any, *, verify: bool = True) -> Run | OnlineRun:
    """Open the last committed state of the run at ``path``.

    Parameters
    ----------
    path : str, os.PathLike or zarr Store
        A run directory, a ``.zip`` written by a fit, or an fsspec URL.
    verify : bool, default=True
        Check every W chunk against its checksum now (H and the manifest are always
        checked). With False, W chunks are checked as they are read.

    Returns
    -------
    Run or OnlineRun
        An :class:`OnlineRun` for a run of :class:`dnmf.MiniBatchNMF` (``dnmf fit
        --online``; every array of its commit is checked against its checksum).

    Raises
    ------
    StoreError
        Nothing was committed at ``path``.
    CorruptCheckpointError
        The manifest, H or a W chunk does not match its checksum; the message names
        the file.

    Notes
    -----
    Safe while another process writes the run: the snapshot is the last commit
    visible when it was opened. Its W buffer stays intact until at least one pass
    after the writer's next commit; reading ``W`` after the writer reuses it raises
    :class:`CorruptCheckpointError` (open the run again).
    """
    store = RunStore(_reading_location(path))
    if not store.exists():
        raise StoreError(
            f"no run at {str(store.location)!r}: the path does not exist or is empty."
        )
    last_error: Exception | None = None
    for _ in range(5):
        manifest = store.read_manifest()
        if manifest is None:
            raise StoreError(
                f"{str(store.location)!r} has no committed state: not a dnmf run, or its "
                f"fit was stopped before the first commit."
            )
        try:
            out = os.fspath(path) if isinstance(path, os.PathLike) else path
            if str(manifest.get("kind", "")).startswith("online"):
                return OnlineRun(store, manifest, out=out)
            return Run(store, manifest, verify=verify, out=out)
        except StoreError as exc:
            # A writer may have committed twice since the manifest was read.
            last_error = exc
            newer = store.read_manifest()
            if newer is None or newer["sequence"] == manifest["sequence"]:
                raise
    assert last_error is not None
    raise last_error


def resume(
    path: Any,
    X: Any = None,
    *,
    max_iter: int | None = None,
    scheduler: Any = None,
    verbose: int = 0,
    callback: Callable[[int, float], Any] | None = None,
    mask: Any = None,
) -> Run:
    """Continue the run at ``path`` until it is complete; return its final state.

    Parameters
    ----------
    path : str, os.PathLike or zarr Store
        The run's ``out``.
    X : array-like, optional
        The data. Needed only when the run was fitted on an in-memory array; by
        default V is reopened from the location recorded in the run. Checked against
        the run's fingerprint either way.
    max_iter : int, optional
        A new iteration limit (to extend a finished run); by default the run's own.
    scheduler, verbose, callback
        As for :class:`~dnmf.NMF`.
    mask : boolean array or SpeckledHoldout, optional
        The ``mask`` the run was fitted with. A hold-out, and a Zarr mask on disk, are
        found from the run by default; an in-memory mask must be passed. Checked
        against the run's record either way.

    Returns
    -------
    Run
    """
    run = open_run(path, verify=False)
    if X is None:
        X = reopen_source(run.source)
    if isinstance(run, OnlineRun):
        if mask is not None:
            raise InvalidParameterError("mask= does not apply to an online run.")
        return _resume_online(run, path, X, max_iter=max_iter, scheduler=scheduler,
                              verbose=verbose)
    if X is None:
        X = run.source.get("location")
        if X is None:
            raise InvalidInputError(
                f"the run at {run.path!r} was fitted on an in-memory array, so its data "
                f"cannot be reopened from the run: pass it, dnmf.resume(path, X=...)."
            )
    if mask is None:
        mask = _recorded_mask(run)
    est = run.to_estimator()
    est.set_params(
        out=path, max_iter=max_iter if max_iter is not None else run.params["max_iter"],
        scheduler=scheduler, verbose=verbose, callback=callback, overwrite=False,
    )
    est.fit(X, mask=mask)
    return open_run(path, verify=False)


def reopen_source(source: dict[str, Any]) -> Any:
    """V from a run's ``source`` record: its location, opened with the non-secret
    storage options the run recorded under those given now (secrets come from the
    environment, ``--storage-option`` or :func:`dnmf.io.set_storage_options`); None
    when the run was fitted on in-memory data."""
    location = (source or {}).get("location")
    recorded = (source or {}).get("storage_options")
    if location is None or not recorded or "://" not in location:
        return location
    from .io import open_source
    from .io._remote import reopen_options

    return open_source(location, storage_options=reopen_options(location, recorded))


def _recorded_mask(run: Run) -> Any:
    """The hold-out, or the Zarr mask on disk, a masked run was fitted with (else None)."""
    observed = run.fingerprint.get("observed")
    if observed is None:
        return None
    holdout = None
    if observed.get("holdout") is not None:
        from ._mask import SpeckledHoldout

        h = observed["holdout"]
        holdout = SpeckledHoldout(h["fraction"], h["seed"])
    if observed.get("mask") is None:
        return holdout
    location = run.source.get("mask_location")
    if location is None:
        raise InvalidInputError(
            f"the run at {run.path!r} was fitted with an in-memory mask, so it cannot be "
            f"reopened from the run: pass it, dnmf.resume(path, mask=...)."
        )
    import zarr

    try:
        array = zarr.open_array(location, mode="r")
    except FileNotFoundError:
        raise InvalidInputError(
            f"the run at {run.path!r} was fitted with the mask {location}, which is gone: "
            f"put it back, or pass it, dnmf.resume(path, mask=...)."
        ) from None
    return array if holdout is None else (array, holdout)


class OnlineRun:
    """A committed snapshot of an online run (:class:`dnmf.MiniBatchNMF` with ``out``,
    ``dnmf fit --online``), as :func:`open_run` reads it.

    Attributes
    ----------
    kind : {"online", "online-stream"}
        A ``fit`` over a whole V, or a stream of ``partial_fit`` calls.
    W : ndarray of shape (n_samples, n_components) or None
        The W rows of the last commit (of a complete fit: the fit's W); None for a
        stream, which keeps no W.
    H : ndarray of shape (n_components, n_features)
    A, B : ndarray of shape (n_components, n_features)
        The running numerator and denominator of H's update.
    n_steps : int
        Batches processed (also ``iteration``).
    n_iter : int or None
        Passes over V started (None for a stream).
    loss_history : list of float
        The smoothed batch cost (scikit-learn's ``ewa_cost``) at every commit, at
        steps ``history_steps``.
    reconstruction_err : float or None
        ``sqrt(2 · D_β(V ‖ WH))`` over all of V, once the fit is complete.
    params : dict
        The estimator's parameters (``random_state`` is the seed actually used).
    complete : bool
    stop_reason : {"converged", "max_iter"} or None
    fingerprint, source, shape, dtype, path, created, updated, dnmf_version
        As for :class:`Run` (a stream's ``shape`` is ``(0, n_features)``).
    """

    def __init__(self, store: RunStore, manifest: dict[str, Any], *, out: Any = None) -> None:
        from ._online_run import read_state

        self.store = store
        self.manifest = manifest
        self.path = str(store.location)
        self.out = out if out is not None else self.path
        self.kind = str(manifest["kind"])
        self.run_id: str = manifest["run_id"]
        store.verify_arrays(manifest)
        state = read_state(store, manifest)
        self.H, self.A, self.B, self.W = state["H"], state["A"], state["B"], state["W"]
        self.n_steps = self.iteration = int(state["step"])
        self.state = state
        history = manifest.get("history") or []
        self.history_steps = [int(step) for step, _ in history]
        self.loss_history = [float(cost) for _, cost in history]
        self.init_loss = None
        result = manifest.get("result") or {}
        self.reconstruction_err = result.get("reconstruction_err")
        self.params = dict(manifest["params"])
        seed = (manifest.get("rng") or {}).get("seed")
        if seed is not None:
            self.params["random_state"] = int(seed)
        self.complete = bool(manifest["complete"])
        self.fingerprint = manifest.get("fingerprint") or {}
        self.source = manifest.get("source") or {}
        self.dnmf_version = manifest.get("dnmf_version")
        self.created = manifest.get("created")
        self.updated = manifest.get("committed")
        m = int(self.H.shape[1])
        if self.fingerprint.get("shape"):
            n, m = (int(x) for x in self.fingerprint["shape"])
            self.dtype = np.dtype(self.fingerprint["dtype"])
        else:
            n, self.dtype = 0, np.dtype(self.H.dtype)
        self.shape = (n, m)
        self.n_batches = (-(-n // min(int(self.params["batch_size"]), n))) if n else None
        self.n_iter = (-(-self.n_steps // self.n_batches)) if self.n_batches else None
        self.max_steps = (int(self.params["max_iter"]) * self.n_batches
                          if self.n_batches else None)
        if not self.complete:
            self.stop_reason = None
        elif state["stopped"]:
            self.stop_reason = "converged"
        else:
            self.stop_reason = "max_iter"

    def to_estimator(self) -> Any:
        """A fitted :class:`~dnmf.MiniBatchNMF` with this run's parameters and state."""
        from ._online import MiniBatchNMF
        from ._online_run import ADDED

        names = MiniBatchNMF._get_param_names()
        params = {**ADDED, **self.params}
        est = MiniBatchNMF(**{k: v for k, v in params.items() if k in names})
        est.set_params(out=self.out)
        n, m = self.shape
        est._check_params(max(n, 1), m)
        est.components_ = self.H
        est.n_components_ = int(self.H.shape[0])
        est.n_features_in_ = m
        est._components_numerator = self.A
        est._components_denominator = self.B
        est.n_steps_ = self.n_steps
        if self.n_iter is not None:
            est.n_iter_ = self.n_iter
        if self.reconstruction_err is not None:
            est.reconstruction_err_ = float(self.reconstruction_err)
        return est

    def __repr__(self) -> str:
        status = f"complete ({self.stop_reason})" if self.complete else "in progress"
        what = "stream" if self.kind == "online-stream" else \
            f"{self.shape[0]}×{self.shape[1]}"
        return (f"OnlineRun({self.path!r}: {what}, k={self.H.shape[0]}, "
                f"{self.n_steps} steps, {status})")


def _resume_online(run: OnlineRun, path: Any, X: Any, *, max_iter: int | None,
                   scheduler: Any, verbose: int) -> OnlineRun:
    """Continue an online fit from its last commit (bit for bit: the same steps)."""
    if run.kind == "online-stream":
        raise InvalidInputError(
            f"the run at {run.path!r} is a stream of partial_fit calls: it continues "
            f"with the next call, dnmf.MiniBatchNMF(..., out={run.path!r}).partial_fit(X)."
        )
    if X is None:
        X = run.source.get("location")
        if X is None:
            raise InvalidInputError(
                f"the run at {run.path!r} was fitted on an in-memory array, so its data "
                f"cannot be reopened from the run: pass it, dnmf.resume(path, X=...)."
            )
    est = run.to_estimator()
    est.set_params(out=path, scheduler=scheduler, verbose=verbose, overwrite=False,
                   max_iter=max_iter if max_iter is not None else run.params["max_iter"])
    est.fit(X)
    reopened = open_run(path)
    assert isinstance(reopened, OnlineRun)
    return reopened
