"""Speckled hold-out: a seeded, reproducible set of held-out entries of V.

A :class:`SpeckledHoldout` decides for every entry (row, column) of V whether it is
held out, from a hash of (row, column, seed) alone. Any panel of V can regenerate
its own part on any worker, in any order, so nothing of V's size is ever stored or
shipped: out-of-core and cluster fits hold out exactly the same entries.

The hash is SplitMix64 (Steele, Lea & Flood 2014), in unsigned 64-bit integer
arithmetic, which NumPy wraps modulo 2**64 on every platform; the comparison with
the fraction is an integer one on the top 53 bits. The set is therefore identical
on every machine, NumPy version and panel size.

This module also owns how a masked fit sees V (:class:`MaskSpec`): which entries
of a panel are observed (``missing="nan"``, an explicit boolean mask read with V's
panels, ``missing="unstored"`` for sparse V, a hold-out), the checks of a mask
(shape, dtype, chunking; rows and columns with nothing observed) and the panel
references a pass reads. The mathematics on observed entries is in
``_solvers/_masked.py``; scheduling stays in the engine and the backend.
"""

from __future__ import annotations

import itertools
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import InvalidInputError, InvalidParameterError

__all__ = ["MaskSpec", "SpeckledHoldout", "observe", "prepare_mask", "split_mask", "splitmix64"]

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))
#: entries hashed per block, so the uint64 temporaries stay small for big panels
_BLOCK_ENTRIES = 1 << 20
_TOP53 = 1 << 53


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser of ``x + golden gamma``, element-wise on uint64.

    A bijection of 64-bit integers with full avalanche: neighbouring inputs (row
    r and r + 1) give unrelated outputs.
    """
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GAMMA
        z = (z ^ (z >> _S30)) * _MUL1
        z = (z ^ (z >> _S27)) * _MUL2
        return z ^ (z >> _S31)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class SpeckledHoldout:
    """Hold out a seeded, reproducible ``fraction`` of V's entries for cross-validation.

    Entry (i, j) is held out when the SplitMix64 hash of (i, j, ``seed``) falls
    below ``fraction`` of its range, so each entry is held out independently with
    probability ``fraction``, and the same ``(fraction, seed)`` holds out the same
    entries of every matrix, whatever its panels, chunks or the machine. Nothing of
    V's size is stored.

    Pass it as ``NMF(...).fit(X, mask=SpeckledHoldout(...))``: the fit uses the
    entries not held out, and reports its loss over the held-out ones as
    ``heldout_loss_`` (``n_heldout_`` of them).

    Parameters
    ----------
    fraction : float, default=0.05
        Probability that an entry is held out, in (0, 1).
    seed : int, default=0
        Non-negative integer below 2**64; different seeds hold out independent sets.

    Examples
    --------
    >>> from dnmf import SpeckledHoldout
    >>> holdout = SpeckledHoldout(fraction=0.1, seed=3)
    >>> block = holdout.heldout(0, 1000, 200)  # rows 0..999 of a 200-column V
    >>> block.shape, round(float(block.mean()), 2)
    ((1000, 200), 0.1)
    """

    fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        f = self.fraction
        if (
            not isinstance(f, numbers.Real)
            or isinstance(f, bool)
            or not np.isfinite(f)
            or not 0 < f < 1
        ):
            raise InvalidParameterError(
                f"SpeckledHoldout fraction must be a float in (0, 1) (the share of entries "
                f"held out, e.g. 0.05), got {f!r}"
            )
        if not _is_int(self.seed) or not 0 <= self.seed < 2**64:
            raise InvalidParameterError(
                f"SpeckledHoldout seed must be a non-negative int below 2**64, got {self.seed!r}"
            )
        object.__setattr__(self, "fraction", float(f))
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def _threshold(self) -> np.uint64:
        # held out iff the top 53 bits of the hash < fraction * 2**53 (exact in float64)
        return np.uint64(int(self.fraction * _TOP53))

    def heldout(self, start: int, stop: int, m: int) -> np.ndarray:
        """Which entries of rows ``start .. stop-1`` (of an ``m``-column V) are held out.

        Parameters
        ----------
        start, stop : int
            The rows, ``0 <= start <= stop``.
        m : int
            The number of columns of V.

        Returns
        -------
        heldout : ndarray of bool, shape (stop - start, m)
            True where the entry is held out.
        """
        for name, value in (("start", start), ("stop", stop), ("m", m)):
            if not _is_int(value) or value < 0:
                raise InvalidParameterError(
                    f"heldout {name} must be a non-negative int, got {value!r}"
                )
        if stop < start:
            raise InvalidParameterError(f"heldout needs start <= stop, got {start!r} > {stop!r}")
        n = stop - start
        out = np.empty((n, m), dtype=bool)
        if n == 0 or m == 0:
            return out
        seed_key = splitmix64(np.array([self.seed], dtype=np.uint64))
        row_keys = splitmix64(seed_key ^ np.arange(start, stop, dtype=np.uint64))
        threshold = self._threshold
        from ._solvers import _kernels

        if _kernels.hash_enabled(n * m):  # compiled: ~1 ns an entry against NumPy's ~15
            _kernels.heldout_rows(row_keys, threshold, out)
            return out
        cols = np.arange(m, dtype=np.uint64)
        step = max(1, _BLOCK_ENTRIES // m)
        for a in range(0, n, step):
            b = min(n, a + step)
            h = splitmix64(row_keys[a:b, None] ^ cols[None, :])
            np.less(h >> _S11, threshold, out=out[a:b])
        return out

    def heldout_at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Whether entries ``(rows[i], cols[i])`` are held out (the same hash, pointwise).

        Used for sparse V, whose stored entries are hashed without a dense panel.
        """
        rows = np.asarray(rows, dtype=np.uint64)
        cols = np.asarray(cols, dtype=np.uint64)
        seed_key = splitmix64(np.array([self.seed], dtype=np.uint64))
        out = np.empty(rows.shape, dtype=bool)
        threshold = self._threshold
        from ._solvers import _kernels

        if rows.ndim == 1 and rows.shape == cols.shape and _kernels.hash_enabled(rows.size):
            _kernels.heldout_pairs(seed_key[0], rows, cols, threshold, out)
            return out
        for a in range(0, rows.size, _BLOCK_ENTRIES):
            b = min(rows.size, a + _BLOCK_ENTRIES)
            h = splitmix64(splitmix64(seed_key ^ rows[a:b]) ^ cols[a:b])
            np.less(h >> _S11, threshold, out=out[a:b])
        return out

    def observed(self, start: int, stop: int, m: int) -> np.ndarray:
        """The complement of :meth:`heldout`: True where the entry is used for fitting."""
        return ~self.heldout(start, stop, m)

    def identity(self) -> dict[str, Any]:
        """What a run store records so that a resume can refuse a different hold-out."""
        return {"kind": "speckled", "hash": "splitmix64", "fraction": self.fraction,
                "seed": self.seed}


# ---------------------------------------------------------------- masked fits
MISSING = (None, "nan", "unstored")


@dataclass(frozen=True)
class MaskSpec:
    """How a masked fit observes V; shared by every panel task (small, picklable).

    ``missing`` is the estimator's parameter; ``explicit`` says a boolean mask array
    is read with V's panels; ``holdout`` excludes its entries from the fit.
    """

    missing: str | None
    explicit: bool
    holdout: SpeckledHoldout | None
    m: int

    def identity(self, mask_fingerprint: Any = None) -> dict[str, Any]:
        """What a run store records, so that a resume with another mask is refused."""
        return {
            "missing": self.missing,
            "mask": mask_fingerprint if self.explicit else None,
            "holdout": self.holdout.identity() if self.holdout is not None else None,
        }


def observe(V: Any, mask: Any, spec: MaskSpec, start: int) -> Any:
    """One panel of V (and of the mask) as an :class:`~dnmf._solvers._masked.Observed`.

    Entries used for fitting: not NaN (``missing="nan"``), True in the mask, stored
    (``missing="unstored"``), and not held out. Held-out entries are those the data
    observes and the hold-out excludes; they keep their values for the held-out loss.
    Values are not checked here (the scan does that once).
    """
    from ._solvers._masked import Observed

    if sp.issparse(V) and spec.missing == "unstored":
        V = V.tocsr()
        if spec.holdout is None:
            return Observed(V, None)
        rows = np.repeat(np.arange(V.shape[0]), np.diff(V.indptr))
        held = spec.holdout.heldout_at(rows + start, V.indices)
        fit = sp.csr_matrix((V.data[~held], V.indices[~held],
                             np.concatenate(([0], np.cumsum(np.bincount(
                                 rows[~held], minlength=V.shape[0]))))), shape=V.shape)
        return Observed(fit, None, rows[held].astype(np.int64),
                        V.indices[held].astype(np.int64), V.data[held])
    V = V.toarray() if sp.issparse(V) else np.asarray(V)
    n = V.shape[0]
    if spec.missing == "nan" and mask is None and spec.holdout is None:
        # exactly the NaN entries are unobserved: their flat indices come with the panel
        from ._solvers._masked import NaNObserved

        return NaNObserved(V, np.flatnonzero(np.isnan(V).ravel()))
    if spec.missing == "nan":
        observed = np.isnan(V)
        np.logical_not(observed, out=observed)
    else:
        observed = np.ones(V.shape, dtype=bool)
    if mask is not None:
        observed &= np.asarray(mask, dtype=bool)
    if spec.holdout is not None:
        held = spec.holdout.heldout(start, start + n, V.shape[1])
        held &= observed
        observed &= ~held
        hr, hc = np.nonzero(held)
        values = np.where(observed, V, 0).astype(V.dtype, copy=False)
        return Observed(values, observed, hr.astype(np.int64), hc.astype(np.int64), V[hr, hc])
    values = np.where(observed, V, 0).astype(V.dtype, copy=False)
    return Observed(values, observed)


@dataclass(frozen=True)
class ObservedPanel:
    """A pass's reference to one masked panel: V's and the mask's, read together."""

    v_ref: Any
    mask_ref: Any
    spec: MaskSpec
    start: int

    def load(self) -> Any:
        from ._source import load_panel

        mask = None if self.mask_ref is None else load_panel(self.mask_ref)
        return observe(load_panel(self.v_ref), mask, self.spec, self.start)


@dataclass(frozen=True)
class ValuesPanel:
    """The fit's values of a masked panel (0 where not observed), for initialisation."""

    ref: Any

    def load(self) -> Any:
        from ._source import load_panel

        return load_panel(self.ref).values


def _observe_delayed(v: Any, mask: Any, spec: MaskSpec, start: int) -> Any:
    from ._source import load_panel

    return observe(load_panel(v), None if mask is None else load_panel(mask), spec, start)


def _values(obs: Any) -> Any:
    return obs.values


def values_refs(handles: list[Any]) -> list[Any]:
    """Initialisation references from masked panels already on the workers."""
    from dask.delayed import delayed

    return [delayed(_values, pure=False)(h) for h in handles]


def _mask_kind(mask: Any) -> str:
    module = type(mask).__module__
    if module.startswith("zarr"):
        return "zarr"
    if module.startswith("dask"):
        return "dask"
    if sp.issparse(mask):
        return "sparse"
    return "numpy"


def check_mask_array(mask: Any, shape: tuple[int, int]) -> tuple[Any, str, int | None]:
    """Check an explicit mask's type, dtype and shape; ``(mask, kind, row chunk)``."""
    kind = _mask_kind(mask)
    if kind == "sparse":
        raise InvalidInputError(
            "mask is a SciPy sparse matrix; give a dense boolean array (NumPy, Dask or "
            "Zarr) of X's shape, or for sparse X use missing='unstored' to observe "
            "exactly the stored entries."
        )
    if kind == "numpy":
        mask = np.asarray(mask)
    dtype = np.dtype(getattr(mask, "dtype", None) or np.asarray(mask).dtype)
    mshape = tuple(int(s) for s in mask.shape)
    if mshape != tuple(shape):
        raise InvalidInputError(
            f"mask has shape {mshape}, but X has shape {tuple(shape)}: the mask must "
            f"have X's shape (True = observed)."
        )
    if dtype != np.bool_:
        raise InvalidInputError(
            f"mask has dtype {dtype}, but must be boolean (True = observed, False = "
            f"missing). Convert it, e.g. mask.astype(bool) if it holds 0/1, or X != 0."
        )
    row_chunk = None
    if kind == "zarr":
        row_chunk = int(mask.chunks[0])
    elif kind == "dask":
        chunks = mask.chunks[0]
        row_chunk = int(chunks[0])
    return mask, kind, row_chunk


def split_mask(mask: Any) -> tuple[Any, SpeckledHoldout | None]:
    """``mask=`` as (boolean array or None, hold-out or None).

    ``mask`` is None, a boolean array, a :class:`SpeckledHoldout`, or a pair
    ``(array, SpeckledHoldout)``: hold out entries among those the array observes.
    """
    if isinstance(mask, SpeckledHoldout):
        return None, mask
    if isinstance(mask, tuple) and len(mask) == 2 and isinstance(mask[1], SpeckledHoldout):
        if isinstance(mask[0], SpeckledHoldout):
            raise InvalidParameterError(
                "mask=(array, SpeckledHoldout) takes one hold-out, after a boolean array.")
        return mask[0], mask[1]
    return mask, None


def prepare_mask(source: Any, mask: Any, missing: str | None) -> tuple[MaskSpec | None, Any]:
    """Check ``missing=`` and ``mask`` against X; the spec and the mask array (or None)."""
    kind = source.kind
    sparse = kind in ("sparse", "zarr-csr")
    if missing == "unstored" and not sparse:
        raise InvalidParameterError(
            f"missing='unstored' observes the stored entries of a sparse X, but X is "
            f"{kind} (dense). Use missing='nan' to treat NaN as missing, or mask=."
        )
    if missing == "nan" and sparse:
        raise InvalidParameterError(
            "missing='nan' is for dense X; for sparse X use missing='unstored' (only "
            "the stored entries are observed)."
        )
    array, holdout = split_mask(mask)
    if missing is None and mask is None:
        return None, None
    row_chunk = None
    if array is not None:
        if sparse:
            raise InvalidInputError(
                "mask= with a sparse X is not supported: use missing='unstored' to "
                "observe exactly the stored entries, or give X dense."
            )
        array, _, row_chunk = check_mask_array(array, source.shape)
        if array is not None and _mask_kind(array) == "dask" and len(array.chunks[1]) > 1:
            array = array.rechunk({1: -1})
    spec = MaskSpec(missing, array is not None, holdout, int(source.shape[1]))
    if row_chunk is not None:
        _check_chunks(source, array, row_chunk)
    return spec, array


def _check_chunks(source: Any, mask: Any, row_chunk: int) -> None:
    """A Zarr or Dask mask is read with V's panels: its row chunks must match V's."""
    kind = _mask_kind(mask)
    if source.kind == "dask":
        v_chunks = tuple(int(c) for c in source.data.chunks[0])
        m_chunks = tuple(int(c) for c in mask.chunks[0]) if kind == "dask" else None
        if kind == "dask" and m_chunks != v_chunks:
            raise InvalidInputError(
                f"mask's row chunks {_show(m_chunks)} differ from X's {_show(v_chunks)}: "
                f"the mask is read with X's panels. Rechunk it like X: "
                f"mask = mask.rechunk({{0: X.chunks[0]}})."
            )
        if kind == "zarr" and any(c % row_chunk for c in v_chunks[:-1]):
            raise InvalidInputError(
                f"mask is a Zarr array chunked by {row_chunk} rows, but X's row chunks "
                f"{_show(v_chunks)} are not multiples of it: each panel would read mask "
                f"chunks twice. Rewrite the mask with chunks=({v_chunks[0]}, "
                f"{source.shape[1]}), or rechunk X."
            )
        return
    v_row = source.row_chunk
    if v_row is not None and v_row != row_chunk:
        raise InvalidInputError(
            f"mask is chunked by {row_chunk} rows but X by {v_row}: the mask is read with "
            f"X's panels, so their row chunks must match. Rewrite the mask with "
            f"chunks=({v_row}, {source.shape[1]})"
            + (f", e.g. mask.rechunk({{0: {v_row}}})." if kind == "dask" else ".")
        )
    if kind == "dask":
        sizes = tuple(int(c) for c in mask.chunks[0])
        if len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0]:
            raise InvalidInputError(
                f"mask's row chunks {_show(sizes)} are uneven: panels of X are equal "
                f"rows. Rechunk it, e.g. mask.rechunk({{0: {sizes[0]}}})."
            )


def _show(chunks: tuple[int, ...]) -> str:
    return str(chunks) if len(chunks) <= 4 else f"({chunks[0]}, {chunks[1]}, ..., {chunks[-1]})"


def mask_refs(mask: Any, bounds: list[tuple[int, int]]) -> list[Any]:
    """One reference per panel of the mask, like V's (read on the worker)."""
    from ._source import SlicePanel, ZarrPanel

    if mask is None:
        return [None] * len(bounds)
    kind = _mask_kind(mask)
    if kind == "zarr":
        return [ZarrPanel(mask, a, b, "|b1") for a, b in bounds]
    if kind == "dask":
        starts = np.cumsum((0, *mask.chunks[0]))
        if [(int(a), int(b)) for a, b in itertools.pairwise(starts)] != bounds:
            mask = mask.rechunk({0: tuple(b - a for a, b in bounds)})
        return list(mask.to_delayed().ravel())
    return [SlicePanel(mask, a, b, "|b1") for a, b in bounds]


def observed_refs(v_refs: list[Any], m_refs: list[Any], spec: MaskSpec,
                  bounds: list[tuple[int, int]]) -> tuple[list[Any], list[Any]]:
    """Pass references (:class:`Observed` panels) and initialisation references (values)."""
    from dask.delayed import Delayed, delayed

    refs, init = [], []
    for v, mk, (a, _) in zip(v_refs, m_refs, bounds):
        if isinstance(v, Delayed) or isinstance(mk, Delayed):
            # pure=False: tokenising would hash an in-memory V's panel
            d = delayed(_observe_delayed, pure=False)(v, mk, spec, a)
            refs.append(d)
            init.append(delayed(_values, pure=False)(d))
        else:
            ref = ObservedPanel(v, mk, spec, a)
            refs.append(ref)
            init.append(ValuesPanel(ref))
    return refs, init


def scan_task(v: Any, mask: Any, spec: MaskSpec, start: int) -> dict[str, Any]:
    """Checks and sums of one masked panel (reads V and the mask once)."""
    from ._source import load_panel

    V = load_panel(v)
    raw_nan = 0
    if spec.missing == "nan":
        raw_nan = int(np.count_nonzero(np.isnan(np.asarray(V))))
    obs = observe(V, None if mask is None else load_panel(mask), spec, start)
    values = obs.values
    out: dict[str, Any] = {"n_nan": raw_nan, "first_bad": None, "first_negative": None}
    if obs.mask is None:
        data = values.data
        rows = np.repeat(np.arange(values.shape[0]), np.diff(values.indptr))
        cols = values.indices
        out["row_counts"] = np.diff(values.indptr)
        out["col_counts"] = np.bincount(cols, minlength=values.shape[1])
    else:
        rows, cols = np.nonzero(obs.mask)
        data = values[rows, cols]
        out["row_counts"] = obs.mask.sum(axis=1)
        out["col_counts"] = obs.mask.sum(axis=0)
    for name, where, r, c in (("fit", data, rows, cols),
                              ("held", obs.held_values, obs.held_rows, obs.held_cols)):
        bad = ~np.isfinite(where)
        neg = where < 0
        if bad.any() and out["first_bad"] is None:
            i = int(np.argmax(bad))
            out["first_bad"] = (start + int(r[i]), int(c[i]))
        if neg.any() and out["first_negative"] is None:
            i = int(np.argmax(neg))
            out["first_negative"] = (start + int(r[i]), int(c[i]))
        out["n_bad_" + name] = int(np.count_nonzero(bad))
        out["n_negative_" + name] = int(np.count_nonzero(neg))
    f64 = np.asarray(data, dtype=np.float64)
    out["norm_sq"] = float(np.dot(f64, f64)) if not out["n_bad_fit"] else 0.0
    out["total"] = float(f64.sum()) if not out["n_bad_fit"] else 0.0
    out["size"] = int(data.shape[0])
    out["nnz"] = int(np.count_nonzero(f64))
    out["n_heldout"] = int(obs.held_values.shape[0])
    return out


def scan(backend: Any, source: Any, v_refs: list[Any], m_refs: list[Any], spec: MaskSpec,
         bounds: list[tuple[int, int]], name: str = "NMF", *,
         require_missing: bool = True) -> Any:
    # require_missing: a fit (not transform): refuse data with nothing missing and
    # rows or columns with nothing observed
    """Read V (and the mask) once: refuse bad values, empty rows or columns; the summary."""
    import math

    from ._engine import DataSummary

    parts = backend.map(scan_task, [(v, mk, spec, a)
                                    for v, mk, (a, _) in zip(v_refs, m_refs, bounds)])
    what = {"nan": "NaN", "unstored": "stored"}.get(spec.missing or "", "")
    if (require_missing and spec.missing == "nan" and not spec.explicit
            and spec.holdout is None and sum(p["n_nan"] for p in parts) == 0):
        raise InvalidInputError(
            "missing='nan' was given, but X has no NaN entries: nothing is missing. "
            "Leave missing=None for complete data (or mark missing entries with NaN)."
        )
    n_bad = sum(p["n_bad_fit"] + p["n_bad_held"] for p in parts)
    if n_bad:
        r, c = next(p["first_bad"] for p in parts if p["first_bad"])
        hint = ("mark them False in the mask, " if spec.explicit else "") + (
            "or pass missing='nan' to treat NaN as missing" if spec.missing is None
            else "replace ±inf")
        raise InvalidInputError(
            f"Input X contains NaN or infinity at observed entries: {n_bad} entries "
            f"(the first at row {r}, column {c}). Impute or drop them, {hint}."
        )
    n_neg = sum(p["n_negative_fit"] + p["n_negative_held"] for p in parts)
    if n_neg:
        r, c = next(p["first_negative"] for p in parts if p["first_negative"])
        raise InvalidInputError(
            f"Negative values in data passed to {name}: {n_neg} observed entries are "
            f"negative (the first at row {r}, column {c}). NMF needs non-negative data: "
            f"shift or clip it, e.g. X - X.min() or np.clip(X, 0, None)."
        )
    by = ("" if spec.holdout is None else " (after the hold-out)")
    # transform (H fixed) needs neither: a row with nothing observed keeps its start
    for (a, _), p in zip(bounds, parts if require_missing else []):
        empty = np.flatnonzero(np.asarray(p["row_counts"]) == 0)
        if empty.size:
            raise InvalidInputError(
                f"Row {a + int(empty[0])} of X has no observed entries{by} "
                f"({sum(int(np.count_nonzero(np.asarray(q['row_counts']) == 0)) for q in parts)}"
                f" rows in all{'; ' + what + ' entries are observed' if what else ''}): its "
                f"row of W is undetermined. Drop such rows first, e.g. "
                f"X[mask.any(axis=1)]."
            )
    cols = np.zeros(source.shape[1], dtype=np.int64)
    for p in parts:
        cols += np.asarray(p["col_counts"], dtype=np.int64)
    empty = np.flatnonzero(cols == 0)
    if empty.size and require_missing:
        raise InvalidInputError(
            f"Column {int(empty[0])} of X has no observed entries{by} ({empty.size} "
            f"columns in all): its column of H is undetermined. Drop such columns "
            f"first, e.g. X[:, mask.any(axis=0)]."
        )
    norm_sq = math.fsum(p["norm_sq"] for p in parts)
    total = math.fsum(p["total"] for p in parts)
    if not (math.isfinite(norm_sq) and math.isfinite(total)):
        raise InvalidInputError(
            f"Input X is too large for {name} in float64: its sum of squares overflows. "
            f"Scale it down first, e.g. X / X.max()."
        )
    return DataSummary(norm_sq, total, sum(p["size"] for p in parts),
                       sum(p["nnz"] for p in parts), sum(p["n_heldout"] for p in parts))
