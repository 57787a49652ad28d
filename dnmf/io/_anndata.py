"""Results back where the data came from: W, H and the fit's record into AnnData.

``obsm["X_nmf"]`` holds W (n_obs × k), ``varm["NMF_components"]`` holds Hᵀ
(n_vars × k) and ``uns["nmf"]`` the parameters and the loss history, the layout
scanpy uses for its own embeddings. :func:`to_anndata` sets them on an AnnData
object; :func:`write_into` adds them to an ``.h5ad`` file or an AnnData Zarr store
without reading or re-encoding X: an ``.h5ad`` is copied byte for byte, extended and
renamed over the original; in a Zarr store the three elements are written under
temporary names and renamed into place. Either way a failed export leaves the file
as it was.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np

from ..errors import InvalidInputError, StoreError

__all__ = ["names_of_run", "nmf_record", "to_anndata", "write_into"]

OBSM_KEY = "X_nmf"
VARM_KEY = "NMF_components"
UNS_KEY = "nmf"


def _run(run: Any) -> Any:
    if isinstance(run, str | os.PathLike):
        from .._runs import open_run

        return open_run(os.fspath(run), verify=False)
    return run


def names_of_run(run: Any) -> tuple[list[str] | None, list[str] | None]:
    """The row and column names of the data a run was fitted on, where they can be
    found (the source it records, reopened); (None, None) otherwise."""
    location = (getattr(run, "source", None) or {}).get("location")
    if not location:
        return None, None
    from ._base import open_source

    try:
        source = open_source(location)
        obs, var = source.obs_names, source.var_names
    except Exception:
        return None, None
    n, m = run.shape
    return (obs if obs is not None and len(obs) == n else None,
            var if var is not None and len(var) == m else None)


def _plain(value: Any) -> Any:
    """A value AnnData can store in uns (no None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return np.asarray(value, dtype=np.float64 if any(
                isinstance(v, float) for v in value) else np.int64)
        return [str(v) for v in value]
    if isinstance(value, bool | int | float | str | np.ndarray | np.generic):
        return value
    return str(value)


def nmf_record(run: Any) -> dict[str, Any]:
    """What ``uns["nmf"]`` holds: parameters, loss history, iterations, provenance."""
    params = {k: v for k, v in run.params.items() if k not in ("panel_starts",)}
    return _plain({
        "params": params,
        "loss_history": np.asarray(run.loss_history, dtype=np.float64),
        "n_iter": int(run.iteration if getattr(run, "n_iter", None) is None
                      else run.n_iter),
        **({"kind": run.kind, "n_steps": int(run.n_steps),
            "reconstruction_err": run.reconstruction_err}
           if hasattr(run, "n_steps") else {}),
        "complete": bool(run.complete),
        "stop_reason": run.stop_reason,
        "run": run.path,
        "dnmf_version": run.dnmf_version,
    })


def _factors(run: Any, n_obs: int, n_vars: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    if run.W is None:
        raise InvalidInputError(
            f"the run {run.path} is a stream of partial_fit calls, which keeps no W: "
            f"compute W with dnmf.open_run({run.path!r}).to_estimator().transform(X), "
            f"or export H alone with 'dnmf export RUN --out DIR'."
        )
    n, m = run.shape
    if (n, m) != (n_obs, n_vars):
        raise InvalidInputError(
            f"the run {run.path} was fitted on a {n} × {m} matrix, but {where} has "
            f"{n_obs} observations × {n_vars} variables: export into the AnnData the run "
            f"was fitted on."
        )
    return np.asarray(run.W), np.ascontiguousarray(np.asarray(run.H).T)


def to_anndata(run: Any, adata: Any = None) -> Any:
    """Put a run's W, H and record into an AnnData object (a new one if none is given).

    Parameters
    ----------
    run : Run or path
        A run (:func:`dnmf.open_run`) or its path.
    adata : anndata.AnnData, optional
        The AnnData the run was fitted on (same n_obs × n_vars); it is modified in
        place and returned. Without it, an AnnData without X is made, with the names
        of the run's data where they can be found.

    Returns
    -------
    anndata.AnnData
        With ``obsm["X_nmf"]`` (W), ``varm["NMF_components"]`` (Hᵀ), ``uns["nmf"]``.
    """
    import anndata

    run = _run(run)
    if adata is None:
        import pandas as pd

        obs, var = names_of_run(run)
        n, m = run.shape
        adata = anndata.AnnData(
            obs=pd.DataFrame(index=obs or [str(i) for i in range(n)]),
            var=pd.DataFrame(index=var or [str(j) for j in range(m)]),
        )
    W, Ht = _factors(run, adata.n_obs, adata.n_vars, "the AnnData")
    adata.obsm[OBSM_KEY] = W
    adata.varm[VARM_KEY] = Ht
    adata.uns[UNS_KEY] = nmf_record(run)
    return adata


class Written(str):
    """The path :func:`write_into` wrote (a ``str``), and how: ``rewritten`` is True
    when the whole file was written anew (an .h5ad in anndata's pre-0.7 layout)."""

    rewritten: bool = False

    def __new__(cls, path: str, rewritten: bool = False) -> Written:
        self = super().__new__(cls, path)
        self.rewritten = rewritten
        return self


def write_into(run: Any, path: str | os.PathLike[str], *, overwrite: bool = False
               ) -> Written:
    """Add a run's W, Hᵀ and record to an ``.h5ad`` file or AnnData Zarr store.

    X and everything else in the file are left as they are (not read, not
    re-encoded), except in an .h5ad of anndata's pre-0.7 layout (scanpy's bundled
    datasets, :func:`legacy_h5ad`), which anndata reads whole and writes anew in the
    current layout. Existing ``obsm["X_nmf"]``, ``varm["NMF_components"]`` or
    ``uns["nmf"]`` are replaced only with ``overwrite=True``. Atomic: a failure
    leaves the file as it was.

    Returns
    -------
    Written
        The path (a ``str``); its ``rewritten`` attribute says whether the file was
        written anew whole (the pre-0.7 layout) rather than extended.
    """
    from anndata.io import write_elem

    run = _run(run)
    target = os.fspath(path)
    if not os.path.exists(target):
        raise StoreError(f"{target} does not exist: --into names an existing AnnData file.")
    from ._base import open_source

    source = open_source(target)
    if source.format not in ("h5ad", "anndata-zarr"):
        raise InvalidInputError(
            f"{target} is not an AnnData file or store ({source.format}): --into takes an "
            f".h5ad file or an AnnData Zarr store; use --format npy or csv with --out "
            f"for plain files."
        )
    W, Ht = _factors(run, *source.shape, target)
    record = nmf_record(run)
    elements = (("obsm", OBSM_KEY, W), ("varm", VARM_KEY, Ht), ("uns", UNS_KEY, record))
    if source.format == "h5ad":
        import h5py

        with h5py.File(target, "r") as f:
            present = [f"{g}/{k}" for g, k, _ in elements if f"{g}/{k}" in f]
        if legacy_h5ad(target):
            return Written(_write_into_legacy_h5ad(target, elements, overwrite), True)
        if present and not overwrite:
            raise StoreError(f"{target} already holds {', '.join(present)}; pass "
                             f"--overwrite to replace.")
        def extend(tmp: str) -> None:
            shutil.copyfile(target, tmp)
            with h5py.File(tmp, "r+") as f:
                for group, key, value in elements:
                    g = f.require_group(group)
                    if key in g:
                        del g[key]
                    write_elem(g, key, value)

        return Written(_replace_file(target, extend))
    return Written(_write_into_zarr(target, elements, overwrite))


def _replace_file(target: str, write: Any) -> str:
    """``write(tmp)`` a temporary next to ``target``, then rename it over ``target``:
    a failure leaves ``target`` as it was (and no temporary behind)."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(target)),
                       f".{os.path.basename(target)}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        raise StoreError(f"cannot write into {target}: {exc.strerror or exc}.") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def legacy_h5ad(path: str | os.PathLike[str]) -> bool:
    """Whether an .h5ad file is in anndata's pre-0.7 layout (obsm or varm a compound
    dataset instead of a group), which :func:`write_into` must rewrite whole."""
    import h5py

    with h5py.File(os.fspath(path), "r") as f:
        return any(isinstance(f.get(g), h5py.Dataset) for g in ("obsm", "varm"))


def _write_into_legacy_h5ad(target: str, elements: Any, overwrite: bool) -> str:
    """``write_into`` for an .h5ad in anndata's pre-0.7 layout (obsm and varm one
    compound dataset each, ``raw.X``: scanpy's bundled datasets). Nothing can be added
    to such a file in place: anndata reads it whole and writes it anew in the current
    layout (X included), to a temporary renamed over the file (atomic)."""
    import warnings

    import anndata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's notes on moving legacy elements
        adata = anndata.read_h5ad(target)
    mappings = {"obsm": adata.obsm, "varm": adata.varm, "uns": adata.uns}
    present = [f"{g}/{k}" for g, k, _ in elements if k in mappings[g]]
    if present and not overwrite:
        raise StoreError(f"{target} already holds {', '.join(present)}; pass "
                         f"--overwrite to replace.")
    for group, key, value in elements:
        mappings[group][key] = value
    return _replace_file(target, adata.write_h5ad)


def _write_into_zarr(target: str, elements: Any, overwrite: bool) -> str:
    import zarr
    from anndata.io import write_elem

    root_path = target.split(".zarr/", 1)[0] + ".zarr" if ".zarr/" in target else target
    root = zarr.open_group(store=root_path, mode="r+", use_consolidated=False)
    present = [f"{g}/{k}" for g, k, _ in elements if f"{g}/{k}" in root]
    if present and not overwrite:
        raise StoreError(f"{root_path} already holds {', '.join(present)}; pass "
                         f"--overwrite to replace.")
    staged: list[tuple[str, str]] = []
    try:
        for group, key, value in elements:
            g = root.require_group(group)
            tmp_key = f".{key}.tmp-{os.getpid()}"
            write_elem(g, tmp_key, value)
            staged.append((os.path.join(root_path, group, tmp_key),
                           os.path.join(root_path, group, key)))
        for tmp, final in staged:
            old = final + f".old-{os.getpid()}"
            if os.path.exists(final):
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        for tmp, _ in staged:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if any(os.path.exists(os.path.join(root_path, n)) for n in (".zmetadata",)) or \
            "consolidated_metadata" in _root_meta(root_path):
        zarr.consolidate_metadata(root_path)
    return target


def _root_meta(root_path: str) -> str:
    try:
        with open(os.path.join(root_path, "zarr.json")) as f:
            return f.read()
    except OSError:
        return ""
