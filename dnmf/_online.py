"""The public estimator :class:`MiniBatchNMF`: online NMF over batches of rows.

This module owns the online driver: it cuts V into batches (row ranges read from
the source one at a time, the next one read ahead while the current one is
computed), runs the batch steps of :mod:`dnmf._solvers._online`, applies
scikit-learn's stopping rules and hands the state to :mod:`dnmf._online_run` for
commits. It holds no solver mathematics and no storage layout of its own; it sits
on top of the engine (initialisation and the validation pass come from
:mod:`dnmf._engine`), never inside it.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin

from . import _engine
from ._solvers import _online as steps
from ._source import PanelSource, as_source, load_panel
from ._validation import (
    CONSTRAINTS,
    param_names,
    regularization,
    resolve_init,
    resolve_seed,
    value_range,
)
from .errors import ConvergenceWarning, InvalidInputError, InvalidParameterError, NotFittedError
from .io import Source, engine_input

__all__ = ["MiniBatchNMF"]

BETA_NAMES = {"frobenius": 2.0, "kullback-leibler": 1.0, "itakura-saito": 0.0}


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _beta_ok(v: Any) -> bool:
    if isinstance(v, str):
        return v in BETA_NAMES
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


#: parameter → (test, what is allowed); shared parameters keep NMF's rules.
ONLINE_CONSTRAINTS: dict[str, tuple[Any, str]] = {
    **{name: CONSTRAINTS[name] for name in (
        "n_components", "init", "max_iter", "tol", "alpha_W", "alpha_H", "l1_ratio",
        "verbose", "random_state", "out", "overwrite")},
    "n_components": (lambda v: v is None or v == "auto" or (_is_int(v) and v >= 1),
                     "a positive int, 'auto' or None"),
    "beta_loss": (_beta_ok, "'frobenius', 'kullback-leibler', 'itakura-saito' or a real number"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "a positive int"),
    "max_no_improvement": (lambda v: v is None or (_is_int(v) and v >= 1),
                           "None or a positive int"),
    "forget_factor": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
                      and 0 <= v <= 1, "a float in [0, 1]"),
    "forget_per": (lambda v: v in ("pass", "batch"), "'pass' or 'batch'"),
    "fresh_restarts": (lambda v: isinstance(v, bool | np.bool_), "a bool"),
    "fresh_restarts_max_iter": (lambda v: _is_int(v) and v >= 1, "a positive int"),
    "transform_max_iter": (lambda v: v is None or (_is_int(v) and v >= 1),
                           "None or a positive int"),
    "checkpoint_every": (lambda v: v is None or (_is_int(v) and v >= 1),
                         "None (once per pass over the data) or a positive number of steps"),
    "in_flight": (lambda v: _is_int(v) and v >= 1, "a positive int"),
}


def _is_lazy(X: Any) -> bool:
    """Dask, Zarr, a path or a dnmf.io Source: read by row ranges, never converted whole."""
    if isinstance(X, str | os.PathLike | PanelSource | Source):
        return True
    return type(X).__module__.startswith(("dask", "zarr"))


class _Batches:
    """Rows ``a:b`` of the source, the next range read in a thread ahead of use."""

    def __init__(self, source: PanelSource, X_in_memory: Any = None) -> None:
        self.source = source
        self.memory = X_in_memory
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: tuple[tuple[int, int], Future[Any]] | None = None

    def _read(self, a: int, b: int) -> Any:
        if self.memory is not None:
            return self.memory[a:b]
        if self.source.kind == "dask":
            block = self.source.data[a:b].compute(scheduler="threads")
            return block.astype(self.source.dtype, copy=False)
        return load_panel(self.source.panel_refs([(a, b)])[0])

    def get(self, a: int, b: int, following: tuple[int, int] | None = None) -> Any:
        if self.memory is not None:
            return self.memory[a:b]
        if self._ahead is not None and self._ahead[0] == (a, b):
            block = self._ahead[1].result()
        else:
            block = self._read(a, b)
        self._ahead = None
        if following is not None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="dnmf-read")
            self._ahead = (following, self._pool.submit(self._read, *following))
        return block

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._ahead = None


def _task_refs(source: PanelSource, memory: Any, ranges: list[tuple[int, int]]) -> list[Any]:
    """What a task on a worker gets for rows ``a:b``: the rows of in-memory data, a
    Dask slice, or a reference that the worker reads from the store itself."""
    if memory is not None:
        return [memory[a:b] for a, b in ranges]
    if source.kind == "dask":
        return [source.data[a:b] for a, b in ranges]
    return source.panel_refs(ranges)


def _bounds(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def check_batch(X: Any, start: int, refuse_zeros: bool) -> float:
    """Validate rows ``start : start + len(X)`` of V as they are read; their sum.

    The check a validation pass would make (finite, non-negative; no zeros for
    β ≤ 0), made on a batch already in memory, so it costs no read: one error naming
    the rows (and the first bad entry) if it fails (``refuse_zeros``: β ≤ 0 in a
    fit, where scikit-learn refuses zeros). Returns the sum of the rows (dense:
    the column sums in X's dtype, added in float64; the mean of V, for W's flat start,
    adds these up in row order).
    """
    data = X.data if sp.issparse(X) else np.asarray(X)
    stop = start + X.shape[0]
    if not data.size:
        total = 0.0
    elif sp.issparse(X):
        total = float(np.sum(data, dtype=np.float64))
    else:
        # column sums in X's dtype, added in float64: a NaN or inf reaches them, and
        # they cost a third of a float64 sum of every entry
        total = float(np.sum(data.sum(axis=0), dtype=np.float64))
    if data.size and not (data.min() >= 0 and math.isfinite(total)):  # NaN fails both
        part = _engine.scan_task(X, start)
        if part["n_nonfinite"]:
            r, c = part["first_nonfinite"]
            raise InvalidInputError(
                f"Input X contains NaN or infinity in rows {start}-{stop - 1}: "
                f"{part['n_nonfinite']} entries (the first at row {r}, column {c}); "
                f"nothing from these rows was used. MiniBatchNMF needs finite values: "
                f"impute or drop them first."
            )
        if part["n_negative"]:
            r, c = part["first_negative"]
            raise InvalidInputError(
                f"Negative values in data passed to MiniBatchNMF (input X), rows "
                f"{start}-{stop - 1}: {part['n_negative']} entries (the first at row {r}, "
                f"column {c}); nothing from these rows was used. NMF needs non-negative "
                f"data: shift or clip it, e.g. X - X.min() or np.clip(X, 0, None)."
            )
        total = float(part["total"])  # finite values whose sums overflowed X's dtype
    if refuse_zeros:
        stored = data.size == X.shape[0] * X.shape[1]
        if not stored or (data.size and data.min() == 0):
            raise InvalidInputError(
                f"When beta_loss <= 0 and X contains zeros, the solver may diverge: rows "
                f"{start}-{stop - 1} contain zeros; nothing from these rows was used. "
                f"Please add small values to X, or use a positive beta_loss."
            )
    return total


def batch_terms(
    X_ref: Any, W_b: np.ndarray | None, H: np.ndarray, check_at: int | None, beta: float,
    gamma: float, l1_W: float, l2_W: float, fresh: bool, fresh_max_iter: int, tol: float,
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, float | None]:
    """A task: the W-step of some rows, their divergence and their H-update terms.

    ``X_ref`` is read where the task runs (a panel reference or the rows). Returns
    the new W rows, D_β of the rows at (new W, H), the numerator and denominator
    of the H-update (sums over the rows: row blocks of one batch add theirs), and,
    with ``check_at`` (the first row's index: the rows are read for the first time),
    the rows' sum after :func:`check_batch` has validated them (else None).
    """
    X = load_panel(X_ref)
    total = None if check_at is None else check_batch(X, check_at, beta <= 0)
    XHt = HHt = None
    if fresh or W_b is None:
        if beta == 2:
            XHt, HHt = np.asarray(X @ H.T), H @ H.T
        W_b = steps.solve_W(X, H, beta, l1_W, l2_W, gamma, fresh_max_iter, tol,
                            XHt=XHt, HHt=HHt)
    else:
        W_b, XHt, HHt = steps.update_W(X, W_b, H, beta, l1_W, l2_W, gamma)
    if beta < 1:
        W_b[W_b < steps.EPS64] = 0.0
    div = steps.batch_divergence(X, W_b, H, beta, XHt=XHt, HHt=HHt)
    numerator, denominator = steps.h_terms(X, W_b, H, beta)
    return W_b, div, numerator, denominator, total


class MiniBatchNMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    r"""Mini-batch (online) non-negative matrix factorization.

    scikit-learn's ``MiniBatchNMF`` (Lefèvre, Bach & Févotte's online multiplicative
    updates for the β-divergence) with its parameters, attributes and stopping
    rules, on data that may not fit in memory: ``X`` is read one batch of rows at a
    time (a NumPy or SciPy array, a Dask array, a Zarr array or CSR group, or the
    path of one), and the online state can be committed to a run store (``out``)
    and resumed bit for bit after a crash. The objective is

    .. math::

        L(W, H) = D_\beta(X \| WH) + \alpha_W l_1 n_{features} \|W\|_1
        + \tfrac12 \alpha_W (1 - l_1) n_{features} \|W\|_F^2 + (\text{same for } H)

    with :math:`D_2 = \tfrac12\|X - WH\|_F^2`.

    Parameters
    ----------
    n_components : int, "auto" or None, default="auto"
        Rank k. "auto" takes it from custom ``W``/``H``, else ``n_features``; None
        means ``n_features``.
    init : {None, "random", "nndsvd", "nndsvda", "nndsvdar", "custom"}, default=None
        Start, computed from the whole of X (NNDSVD reads X a few times: use
        "random" for a start from one validation pass). None: "nndsvda" when
        n_components <= min(n_samples, n_features), else "random".
    batch_size : int, default=1024
        Rows per mini-batch.
    beta_loss : float or {"frobenius", "kullback-leibler", "itakura-saito"}, default="frobenius"
        The β-divergence minimised. With β <= 0, X must not contain zeros.
    tol : float, default=1e-4
        Stop when ‖ΔH‖ / ‖H‖ between two steps is at most ``tol`` (0 disables).
    max_no_improvement : int or None, default=10
        Stop after this many steps without improvement of the smoothed batch cost.
    max_iter : int, default=200
        Maximum number of passes over X.
    alpha_W, alpha_H, l1_ratio : float
        Regularisation, with scikit-learn's meaning and scaling (per batch: the
        penalties on H scale with the batch's rows).
    forget_factor : float, default=0.7
        Weight of past batches in H's running sums (1 keeps them all).
    forget_per : {"pass", "batch"}, default="pass"
        What ``forget_factor`` is the weight per. "pass" is scikit-learn's rule: each
        batch scales the sums by ρ = forget_factor^(batch_size / n_samples), so a pass
        over X multiplies them by forget_factor (for ``partial_fit``, n_samples is the
        batch: per call). "batch" (dnmf only) makes ρ = forget_factor for every batch
        of ``fit`` too, as a ``partial_fit`` loop over the same batches weighs them:
        the same as forget_factor^(n_samples / batch_size) per pass, without that
        number underflowing to 0 for many batches (0.7 per batch is 0.7^2100 per pass
        at 2100 batches, below the smallest float).
    fresh_restarts : bool, default=False
        Solve each batch's W to convergence instead of one update.
    fresh_restarts_max_iter : int, default=30
        Updates per fresh restart.
    transform_max_iter : int or None, default=None
        Updates of W in ``transform``; None means ``max_iter``.
    random_state : int, RandomState, Generator or None, default=None
        Seed of the initialisation (the only randomness of a fit).
    verbose : int, default=0
        Print the batch cost of every step, as scikit-learn does.
    scheduler : None, "threads", str or distributed.Client, default=None
        Where the initialisation and the final loss pass run (see :class:`NMF`).
    out : str, os.PathLike, zarr Store or None, default=None
        A run store for the online state (H, the running sums A and B, W for
        ``fit``, the step count and the stopping rule's state). An unfinished
        compatible run at ``out`` is resumed; see docs/checkpoints.md.
    checkpoint_every : int or None, default=None
        With ``out``: commit every this many steps (batches); None is once per pass
        over X. ``partial_fit`` with ``out`` commits after every call.
    overwrite : bool, default=False
        With ``out``: discard whatever is there and start afresh.
    in_flight : int, default=4
        On a Dask cluster: batches sent to the workers at once (a round), all against
        the same H, folded into H in batch order. The result depends on ``in_flight``
        only, never on the number of workers or threads (set it to at least the
        cluster's worker threads to keep them busy). Not used without a cluster.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
    n_components_ : int
    reconstruction_err_ : float
        ``sqrt(2 · D_β(X ‖ WH))`` over the whole of X at the end of ``fit``.
    n_iter_ : int
        Passes over X started.
    n_steps_ : int
        Mini-batches processed.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only for input with string feature names.

    References
    ----------
    Lefèvre, A., Bach, F. and Févotte, C. (2011). Online algorithms for nonnegative
    matrix factorization with the Itakura-Saito divergence. WASPAA.
    doi:10.1109/ASPAA.2011.6082314
    Févotte, C. and Idier, J. (2011). Algorithms for nonnegative matrix factorization
    with the beta-divergence. Neural Computation 23(9). doi:10.1162/NECO_a_00168

    Examples
    --------
    >>> import numpy as np, dnmf
    >>> X = np.random.default_rng(0).random((2000, 30))
    >>> model = dnmf.MiniBatchNMF(5, batch_size=256, random_state=0)
    >>> W = model.fit_transform(X)
    >>> W.shape, model.components_.shape
    ((2000, 5), (5, 30))
    """

    def __init__(
        self,
        n_components: int | str | None = "auto",
        *,
        init: str | None = None,
        batch_size: int = 1024,
        beta_loss: str | float = "frobenius",
        tol: float = 1e-4,
        max_no_improvement: int | None = 10,
        max_iter: int = 200,
        alpha_W: float = 0.0,
        alpha_H: float | str = "same",
        l1_ratio: float = 0.0,
        forget_factor: float = 0.7,
        forget_per: str = "pass",
        fresh_restarts: bool = False,
        fresh_restarts_max_iter: int = 30,
        transform_max_iter: int | None = None,
        random_state: Any = None,
        verbose: int = 0,
        scheduler: Any = None,
        out: Any = None,
        checkpoint_every: int | None = None,
        overwrite: bool = False,
        in_flight: int = 4,
    ) -> None:
        self.n_components = n_components
        self.init = init
        self.batch_size = batch_size
        self.beta_loss = beta_loss
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.max_iter = max_iter
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.forget_factor = forget_factor
        self.forget_per = forget_per
        self.fresh_restarts = fresh_restarts
        self.fresh_restarts_max_iter = fresh_restarts_max_iter
        self.transform_max_iter = transform_max_iter
        self.random_state = random_state
        self.verbose = verbose
        self.scheduler = scheduler
        self.out = out
        self.checkpoint_every = checkpoint_every
        self.overwrite = overwrite
        self.in_flight = in_flight

    @classmethod
    def _get_param_names(cls) -> list[str]:
        return list(param_names(cls))  # scikit-learn's, read once per class

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    @property
    def _n_features_out(self) -> int:
        return int(self.components_.shape[0])

    # ------------------------------------------------------------ parameters
    def _validate(self) -> None:
        for name, value in self.get_params(deep=False).items():
            if name not in ONLINE_CONSTRAINTS:
                continue
            test, allowed = ONLINE_CONSTRAINTS[name]
            try:
                ok = bool(test(value))
            except TypeError:
                ok = False
            if not ok:
                raise InvalidParameterError(
                    f"The {name!r} parameter of MiniBatchNMF must be {allowed}. "
                    f"Got {value!r} instead."
                )

    def _check_params(self, n: int, m: int) -> None:
        """Derived values, as scikit-learn's ``_check_params`` sets them."""
        self._n_components = m if self.n_components is None else self.n_components
        beta = self.beta_loss
        self._beta_loss = float(BETA_NAMES[beta] if isinstance(beta, str) else beta)
        self._batch_size = min(int(self.batch_size), n)
        # scikit-learn's rule, or (forget_per="batch") the factor itself per batch
        per_batch = self.forget_per == "batch"
        self._rho = float(self.forget_factor) ** (1.0 if per_batch else self._batch_size / n)
        self._gamma = steps.gamma_for(self._beta_loss)
        self._transform_max_iter = (
            self.max_iter if self.transform_max_iter is None else self.transform_max_iter
        )

    def _reg(self, rows: int, m: int) -> tuple[float, float, float, float]:
        r = regularization(self.alpha_W, self.alpha_H, self.l1_ratio, rows, m)
        return r.l1_W, r.l1_H, r.l2_W, r.l2_H

    # ----------------------------------------------------------------- input
    def _input(self, X: Any, *, reset: bool) -> tuple[PanelSource, Any]:
        """The source of X and, for in-memory X, the validated array itself."""
        if _is_lazy(X):
            source = as_source(engine_input(X))
            m = source.shape[1]
            if reset:
                self.n_features_in_ = m
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
            elif m != self.n_features_in_:
                raise InvalidInputError(
                    f"X has {m} features, but MiniBatchNMF is expecting "
                    f"{self.n_features_in_} features as input."
                )
            return source, None
        from sklearn.utils.validation import check_non_negative, validate_data

        X = validate_data(self, X, accept_sparse=("csr", "csc"),
                          dtype=[np.float64, np.float32], reset=reset)
        check_non_negative(X, "MiniBatchNMF (input X)")
        if sp.issparse(X):
            X = sp.csr_matrix(X)
        return as_source(X), X

    def _has_zeros(self, X: Any, summary: Any) -> bool:
        if X is not None:
            return bool(X.min() == 0)
        return bool(summary.nnz < summary.size)

    def _check_zeros(self, X: Any, prep: Any) -> None:
        """scikit-learn's refusal of zeros for β <= 0, where X is validated whole."""
        if self._beta_loss <= 0 and (X is not None or prep._summary is not None) \
                and self._has_zeros(X, prep.summary if X is None else None):
            raise InvalidInputError(
                "When beta_loss <= 0 and X contains zeros, the solver may diverge. "
                "Please add small values to X, or use a positive beta_loss."
            )

    def _start(self, source: PanelSource, X: Any, W: Any, H: Any, prep: Any,
               keep_W: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """W and H to start from, with scikit-learn's checks and warnings.

        Without ``keep_W`` (a fit whose steps never read W: ``fresh_restarts``, where
        every batch's W is solved afresh and the final W, if any, is solved again) W
        is checked but not copied, or not made at all (``init`` other than
        "custom"), and None is returned for it: no n × k array is held for the fit.
        """
        n, m = source.shape
        dtype = source.dtype
        if self.init == "custom":
            H0 = self._custom(H, "H", (self._n_components, m), dtype)
            W0 = self._custom(W, "W", (n, self._n_components), dtype, copy=keep_W)
            if self._n_components == "auto":
                self._n_components = H0.shape[0]
            self._first_scan = self._scan_start(prep, X, n)
            return (W0 if keep_W else None), H0
        if prep._summary is None:
            # the start needs V's mean (and NNDSVD reads V anyway): validated whole now
            prep.summary = prep.scan()
            self._check_zeros(X, prep)
        self._first_scan = self._scan_start(prep, X, n)
        if W is not None or H is not None:
            warnings.warn(
                "When init!='custom', provided W or H are ignored. Set "
                " init='custom' to use them as initialization.", RuntimeWarning, stacklevel=3,
            )
        if self._n_components == "auto":
            self._n_components = m
        k = int(self._n_components)
        init = resolve_init(self.init, k, n, m)
        seed = resolve_seed(self.random_state)
        self._seed = seed
        W_handles, H0 = _engine.initialize(
            prep.backend, source, prep.refs, prep.bounds, init=init, k=k, seed=seed,
            summary=prep.summary, want_W=keep_W,
        )
        W0 = (np.concatenate(prep.backend.gather(W_handles), axis=0).astype(dtype, copy=False)
              if keep_W else None)
        return W0, np.asarray(H0, dtype=dtype)

    def _custom(self, value: Any, name: str, shape: tuple[Any, Any], dtype: np.dtype,
                copy: bool = True) -> np.ndarray:
        if value is None:
            raise InvalidInputError(
                f"init='custom' needs both W and H: {name} is missing. Pass "
                f"fit(X, W=..., H=...), or choose another init such as 'nndsvda'."
            )
        arr = np.asarray(value)
        if arr.dtype != dtype:
            raise TypeError(
                f"H and W should have the same dtype as X. Got {name}.dtype = {arr.dtype} "
                f"and X.dtype = {dtype}: cast it with {name}.astype(X.dtype)."
            )
        for axis, which in ((0, "first"), (1, "second")):
            want = shape[axis]
            if want != "auto" and (arr.ndim != 2 or arr.shape[axis] != want):
                raise InvalidInputError(
                    f"Array with wrong {which} dimension passed to MiniBatchNMF (input "
                    f"{name}). Expected {want}, but got {arr.shape}."
                )
        lo, hi = value_range(arr)
        if not (lo >= 0 and math.isfinite(hi)):
            raise InvalidInputError(
                f"Negative values or NaN in data passed to MiniBatchNMF (input {name}): "
                f"a starting factor must be finite and non-negative."
            )
        if hi == 0:
            raise InvalidInputError(
                f"Array passed to MiniBatchNMF (input {name}) is full of zeros; "
                f"multiplicative updates cannot move from zeros. Give a non-zero start."
            )
        return np.array(arr, copy=True) if copy else arr

    def _prepare(self, source: PanelSource, scan: bool = True) -> Any:
        from ._prepared import PreparedInput

        return PreparedInput(source, self.scheduler, None, scan=scan)

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None, W: Any = None, H: Any = None) -> MiniBatchNMF:
        """Learn the factorization of ``X``; see :meth:`fit_transform`.

        On Dask or Zarr data (without ``out``) only H is made: W for all rows is not
        solved (call :meth:`fit_transform` or :meth:`transform` for it), and
        :attr:`reconstruction_err_` is computed, with one more pass over X, when it is
        first read. In memory, and with ``out``, as :meth:`fit_transform`.
        """
        self._fit(X, W, H, want_W=False)
        return self

    def fit_transform(self, X: Any, y: Any = None, W: Any = None, H: Any = None) -> np.ndarray:
        """Learn the factorization of ``X`` batch by batch and return W.

        Parameters
        ----------
        X : {array-like, sparse matrix, Dask array, Zarr array, str}
            Non-negative data of shape (n_samples, n_features); read in row ranges
            of ``batch_size``, never converted whole.
        y : ignored
        W : array-like of shape (n_samples, n_components), optional
            Start for W with ``init="custom"``.
        H : array-like of shape (n_components, n_features), optional
            Start for H with ``init="custom"``.

        Returns
        -------
        W : ndarray of shape (n_samples, n_components)

        Notes
        -----
        Dask and Zarr data are validated as the first pass reads them (each batch
        before it is used: a bad batch stops the fit with an error naming its rows,
        and nothing from it is used or committed), not by a pass of their own; only
        ``init`` other than "custom" needs a pass before the first step (for the mean
        of X or NNDSVD). W comes from one more pass at the end (solved for every row
        with ``fresh_restarts``), which also gives ``reconstruction_err_``.
        """
        return self._fit(X, W, H, want_W=True)

    def _fit(self, X: Any, W: Any, H: Any, want_W: bool) -> np.ndarray | None:
        self._validate()
        source, X_mem = self._input(X, reset=True)
        n, m = source.shape
        self._check_params(n, m)
        # Dask and Zarr: validated batch by batch as the first pass reads them (no pass
        # of its own), unless the start needs V's summary anyway (see _start)
        prep = self._prepare(source, scan=X_mem is not None)
        self._check_zeros(X_mem, prep)
        batches = _Batches(source, X_mem)
        store = self.out is not None

        def finish(state: dict[str, Any]) -> dict[str, Any]:
            return self._finish(batches, n, m, state, want_W=want_W or store)

        try:
            if self.out is not None:
                from ._online_run import fit_online_to_store

                state, result = fit_online_to_store(self, X, source, X_mem, prep, batches,
                                                    W, H, finish)
            else:
                # (fresh restarts never read W: none is kept; _finish solves it)
                W0, H0 = self._start(source, X_mem, W, H, prep,
                                     keep_W=not self.fresh_restarts)
                state = self._new_state(H0, W0)
                self._run(batches, n, m, state, backend=prep.backend)
                result = finish(state)
        finally:
            batches.close()
        self._components_numerator = state["A"]
        self._components_denominator = state["B"]
        err = result["reconstruction_err"]
        if callable(err):
            self.__dict__.pop("_reconstruction_err", None)
            self._pending_err = err
        else:
            self.reconstruction_err_ = float(err)
        H_out = state["H"]
        self.n_components_ = H_out.shape[0]
        self.components_ = H_out
        self.n_iter_ = int(result["n_iter"])
        self.n_steps_ = int(result["n_steps"])
        return result["W"]

    def _new_state(self, H0: np.ndarray, W0: np.ndarray | None) -> dict[str, Any]:
        return {
            "W": W0, "H": H0, "A": H0.copy(), "B": np.ones(H0.shape, dtype=H0.dtype),
            "step": 0, "ewa_cost": None, "ewa_cost_min": None, "no_improvement": 0,
            "stopped": False, "scan": self._first_scan,
        }

    @staticmethod
    def _scan_start(prep: Any, X_mem: Any, n: int) -> dict[str, Any] | None:
        """How much of X is validated before the first step, as ``state["scan"]``.

        None for in-memory X (validated whole on entry); for Dask and Zarr the rows
        ``0 : rows`` checked so far and their sum (all of them after a validation
        pass; none yet when the batches are checked as the first pass reads them).
        """
        if X_mem is not None:
            return None
        if prep._summary is not None:
            return {"rows": n, "total": float(prep.summary.total)}
        return {"rows": 0, "total": 0.0}

    # -------------------------------------------------- reconstruction_err_
    @property
    def reconstruction_err_(self) -> float:
        """``sqrt(2 · D_β(X ‖ WH))`` over the whole of X at the end of the fit.

        After ``fit`` on Dask or Zarr data it is computed when first read (one pass
        over X, which must still be there; with ``fresh_restarts`` W is solved on the
        way), then kept.
        """
        value = self.__dict__.get("_reconstruction_err")
        if value is None:
            pending = self.__dict__.get("_pending_err")
            if pending is None:
                raise AttributeError(
                    f"'{type(self).__name__}' object has no attribute 'reconstruction_err_'")
            value = float(pending())
            self._reconstruction_err = value
            del self._pending_err
        return value

    @reconstruction_err_.setter
    def reconstruction_err_(self, value: float) -> None:
        self.__dict__.pop("_pending_err", None)
        self._reconstruction_err = float(value)

    def __getstate__(self) -> dict[str, Any]:
        # a pending reconstruction_err_ (a function of the data) is computed first
        if "_pending_err" in self.__dict__:
            _ = self.reconstruction_err_
        return super().__getstate__()

    def _plan(self, n: int) -> tuple[list[tuple[int, int]], int]:
        bounds = _bounds(n, self._batch_size)
        return bounds, self.max_iter * len(bounds)

    def _run(self, batches: _Batches, n: int, m: int, state: dict[str, Any],
             on_step: Any = None, backend: Any = None) -> None:
        """Steps from ``state["step"]`` until a stopping rule or max_iter (in place)."""
        bounds, n_steps = self._plan(n)
        W = state["W"]
        H_prev = state["H"]
        i = state["step"]
        if backend is not None and backend.distributed:
            self._run_cluster(backend, batches.source, batches.memory, bounds, n_steps, n, m,
                              state, on_step)
            return
        while i < n_steps and not state["stopped"]:
            a, b = bounds[i % len(bounds)]
            following = bounds[(i + 1) % len(bounds)] if i + 1 < n_steps else None
            Xb = batches.get(a, b, following)
            scan = state.get("scan")
            if scan is not None and i < len(bounds) and a == scan["rows"]:
                # first read of these rows: validated here, before anything uses them
                total = scan["total"] + check_batch(Xb, a, self._beta_loss <= 0)
                scan = {"rows": b, "total": total}
            W_b, cost, H_new, A, B = self._step(Xb, None if W is None else W[a:b],
                                                state["H"], state["A"], state["B"], m,
                                                update_H=True)
            if W is not None:
                W[a:b] = W_b
            state.update(H=H_new, A=A, B=B, scan=scan)
            state["stopped"] = self._converged(b - a, cost, H_new, H_prev, n, i, n_steps, state)
            H_prev = H_new
            i += 1
            state["step"] = i
            if on_step is not None:
                on_step(state)

    def _run_cluster(self, backend: Any, source: PanelSource, memory: Any,
                     bounds: list[tuple[int, int]], n_steps: int, n: int, m: int,
                     state: dict[str, Any], on_step: Any) -> None:
        """The steps on a Dask cluster: rounds of ``in_flight`` batches.

        Round r is steps r·P … (r+1)·P − 1 (P = ``in_flight``, counted from the first
        step, so a resumed fit cuts the same rounds): its batches go to the workers at
        once, all against the same H; each worker reads its rows from the source and
        returns its W rows and H-update terms, which the driver folds into H's running
        sums one after the other in batch order. Neither which worker finished first
        nor how many workers or threads there are changes the answer. The stopping
        rules are checked after every fold; the state (and any commit) changes only at
        the end of a round. Later batches of a round see an H up to P − 1 steps old: a
        different path from the one-process fit, chosen because it reached a given loss
        sooner than splitting each batch across the workers (bench_online_cluster.py;
        docs/online.md).
        """
        W = state["W"]
        P = int(self.in_flight)
        l1_W, _, l2_W, _ = self._reg(1, m)  # W's penalties do not scale with the rows
        shared = (self._beta_loss, self._gamma, l1_W, l2_W, bool(self.fresh_restarts),
                  self.fresh_restarts_max_iter, self.tol)
        while state["step"] < n_steps and not state["stopped"]:
            i = state["step"]
            H = H_prev = state["H"]
            end = min((i // P + 1) * P, n_steps)
            todo = [bounds[j % len(bounds)] for j in range(i, end)]
            refs = _task_refs(source, memory, todo)
            scan = state.get("scan")
            # rows read for the first time are validated by the task that reads them
            first = scan is not None and i < len(bounds) and todo[0][0] == scan["rows"]
            checks = [x if first and j < len(bounds) else None
                      for j, (x, _) in enumerate(todo, start=i)]
            parts = backend.map(batch_terms, [(ref, None if W is None else W[x:y], H, at)
                                              for ref, (x, y), at in zip(refs, todo, checks)],
                                shared)
            # fold into a copy: an interruption leaves the state of the last round
            new = {key: state[key] for key in ("H", "A", "B", "ewa_cost", "ewa_cost_min",
                                               "no_improvement", "stopped", "scan")}
            rows = []
            for (x, y), part, at in zip(todo, parts, checks):  # folded in batch order
                rows.append((x, y, part[0]))
                if at is not None:
                    new["scan"] = {"rows": y, "total": new["scan"]["total"] + part[4]}
                _, cost, H_new, A, B = self._fold(part[0], part[1], part[2], part[3], H,
                                                  new["A"], new["B"], y - x, m)
                new.update(H=H_new, A=A, B=B)
                new["stopped"] = self._converged(y - x, cost, H_new, H_prev, n, i,
                                                 n_steps, new)
                H_prev = H_new
                i += 1
                if new["stopped"]:
                    break
            for x, y, W_b in rows:
                if W is not None:
                    W[x:y] = W_b
            state.update(new)
            state["step"] = i
            if on_step is not None:
                on_step(state)

    def _step(self, Xb: Any, W_b: np.ndarray | None, H: np.ndarray, A: np.ndarray,
              B: np.ndarray, m: int, update_H: bool = True
              ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, np.ndarray]:
        """scikit-learn's ``_minibatch_step``: new W rows, the batch cost, new H, A, B."""
        rows = Xb.shape[0]
        l1_W, _, l2_W, _ = self._reg(rows, m)
        W_b, div, numerator, denominator, _ = batch_terms(
            Xb, W_b, H, None, self._beta_loss, self._gamma, l1_W, l2_W,
            bool(self.fresh_restarts), self.fresh_restarts_max_iter, self.tol)
        return self._fold(W_b, div, numerator, denominator, H, A, B, rows, m, update_H)

    def _fold(self, W_b: np.ndarray, div: float, numerator: np.ndarray,
              denominator: np.ndarray, H: np.ndarray, A: np.ndarray, B: np.ndarray,
              rows: int, m: int, update_H: bool = True
              ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, np.ndarray]:
        """The batch cost and, with ``update_H``, the new (H, A, B) from a batch's terms."""
        beta = self._beta_loss
        l1_W, l1_H, l2_W, l2_H = self._reg(rows, m)
        cost = (div + l1_W * float(W_b.sum()) + l1_H * float(H.sum())
                + l2_W * float((W_b**2).sum()) + l2_H * float((H**2).sum())) / rows
        if update_H:
            H, A, B = steps.fold_H(numerator, denominator, H, beta, l1_H, l2_H,
                                   self._gamma, A, B, self._rho)
            if beta <= 1:
                H[H < steps.EPS64] = 0.0
        return W_b, cost, H, A, B

    def _converged(self, rows: int, cost: float, H: np.ndarray, H_prev: np.ndarray, n: int,
                   step: int, n_steps: int, state: dict[str, Any]) -> bool:
        """scikit-learn's ``_minibatch_convergence`` on the state dict."""
        step += 1
        if step == 1:
            if self.verbose:
                print(f"Minibatch step {step}/{n_steps}: mean batch cost: {cost}")
            return False
        if state["ewa_cost"] is None:
            state["ewa_cost"] = cost
        else:
            alpha = min(rows / (n + 1), 1)
            state["ewa_cost"] = state["ewa_cost"] * (1 - alpha) + cost * alpha
        if self.verbose:
            print(f"Minibatch step {step}/{n_steps}: mean batch cost: {cost}, "
                  f"ewa cost: {state['ewa_cost']}")
        H_diff = np.linalg.norm(H - H_prev) / np.linalg.norm(H)
        if self.tol > 0 and H_diff <= self.tol:
            if self.verbose:
                print(f"Converged (small H change) at step {step}/{n_steps}")
            return True
        if state["ewa_cost_min"] is None or state["ewa_cost"] < state["ewa_cost_min"]:
            state["no_improvement"] = 0
            state["ewa_cost_min"] = state["ewa_cost"]
        else:
            state["no_improvement"] += 1
        if (self.max_no_improvement is not None
                and state["no_improvement"] >= self.max_no_improvement):
            if self.verbose:
                print("Converged (lack of improvement in objective function) "
                      f"at step {step}/{n_steps}")
            return True
        return False

    def _finish(self, batches: _Batches, n: int, m: int, state: dict[str, Any],
                want_W: bool = True) -> dict[str, Any]:
        """The result of a fit: W, ``n_iter``, ``n_steps`` and ``reconstruction_err``.

        In memory this is scikit-learn's ending (W solved for all rows with fresh
        restarts, the error over all of X). For Dask and Zarr, the rows a fit that
        stopped early never read are validated first (reading those rows only); then
        W and the error come from one more pass, or, without ``want_W`` (``fit``: only
        H is needed), W is not made and ``reconstruction_err`` is a function that
        computes it when :attr:`reconstruction_err_` is first read.
        """
        H = state["H"]
        self._complete_scan(batches, n, state)
        bounds, _ = self._plan(n)
        n_steps = state["step"]
        n_iter = int(np.ceil(n_steps / len(bounds)))
        if n_iter == self.max_iter and self.tol > 0:
            warnings.warn(
                f"Maximum number of iterations {self.max_iter} reached. Increase it to "
                f"improve convergence.", ConvergenceWarning, stacklevel=4,
            )
        result: dict[str, Any] = {"n_iter": n_iter, "n_steps": n_steps}
        if batches.memory is not None:
            W = self._solve_all(batches, n, H) if self.fresh_restarts else state["W"]
            return {**result, "W": W, "reconstruction_err": self._full_error(batches, n, W, H)}
        W_rows = None if self.fresh_restarts else state["W"]
        mean = state["scan"]["total"] / (n * m)
        if want_W:
            W, err = self._solve_and_score(batches, n, H, W_rows, mean)
            return {**result, "W": W, "reconstruction_err": err}
        source = batches.source

        def pending() -> float:
            later = _Batches(source)
            try:
                return self._solve_and_score(later, n, H, W_rows, mean, solve=False)[1]
            finally:
                later.close()

        return {**result, "W": None, "reconstruction_err": pending}

    def _complete_scan(self, batches: _Batches, n: int, state: dict[str, Any]) -> None:
        """Validate the rows the passes never read (a fit stopped within its first
        pass), adding their sum: afterwards ``state["scan"]`` covers all of V."""
        scan = state.get("scan")
        if scan is None or scan["rows"] >= n:
            return
        state["scan"] = self._scan(batches, n, scan)

    def _scan(self, batches: _Batches, n: int, scan: dict[str, Any]) -> dict[str, Any]:
        rows, total = int(scan["rows"]), float(scan["total"])
        bounds = [(a, min(a + self._batch_size, n)) for a in range(rows, n, self._batch_size)]
        for j, (a, b) in enumerate(bounds):
            Xb = batches.get(a, b, bounds[j + 1] if j + 1 < len(bounds) else None)
            total += check_batch(Xb, a, self._beta_loss <= 0)
        return {"rows": n, "total": total}

    def _panels(self, n: int, m: int, itemsize: int) -> list[tuple[int, int]]:
        """The row panels of W's solve with H fixed (64 MiB of X each)."""
        return _bounds(n, max(self._batch_size, (64 * 2**20) // max(1, m * itemsize)))

    def _solve_all(self, batches: _Batches, n: int, H: np.ndarray) -> np.ndarray:
        """W for all rows with H fixed (scikit-learn's ``_solve_W`` on the whole X).

        In memory this is exactly scikit-learn's computation; for Dask and Zarr the
        rows are validated and summed in one pass (for the mean of the whole X, the
        flat start) and solved in row panels in a second, each panel stopping on its
        own change of W.
        """
        m = H.shape[1]
        l1_W, _, l2_W, _ = self._reg(n, m)
        beta, gamma = self._beta_loss, self._gamma
        if batches.memory is not None:
            return steps.solve_W(batches.memory, H, beta, l1_W, l2_W, gamma,
                                 self._transform_max_iter, self.tol)
        mean = self._scan(batches, n, {"rows": 0, "total": 0.0})["total"] / (n * m)
        return self._solve_and_score(batches, n, H, None, mean, score=False)[0]

    def _solve_and_score(self, batches: _Batches, n: int, H: np.ndarray,
                         W: np.ndarray | None, mean: float, *, score: bool = True,
                         solve: bool = True) -> tuple[np.ndarray | None, float]:
        """One pass over a Dask or Zarr X: W with H fixed and ``sqrt(2 · D_β(X ‖ WH))``.

        ``W=None`` solves W panel by panel from the flat start ``sqrt(mean / k)`` (with
        ``solve=False`` each panel's W is dropped once scored); a given W (the rows a
        fit kept) is only scored. The divergence is summed over blocks of
        ``max(batch_size, 4096)`` rows in row order.
        """
        m = H.shape[1]
        beta, gamma = self._beta_loss, self._gamma
        l1_W, _, l2_W, _ = self._reg(n, m)
        block = max(self._batch_size, 4096)
        bounds = self._panels(n, m, batches.source.dtype.itemsize) if W is None else \
            _bounds(n, block)
        HHt = H @ H.T
        parts, total = [], 0.0
        for j, (a, b) in enumerate(bounds):
            Xb = batches.get(a, b, bounds[j + 1] if j + 1 < len(bounds) else None)
            if W is None:
                W_p = steps.solve_W(Xb, H, beta, l1_W, l2_W, gamma, self._transform_max_iter,
                                    self.tol, mean=mean)
                if solve:
                    parts.append(W_p)
            else:
                W_p = W[a:b]
            if score:
                for lo in range(0, b - a, block):
                    hi = min(lo + block, b - a)
                    total += steps.batch_divergence(Xb[lo:hi], W_p[lo:hi], H, beta, HHt=HHt,
                                                    exact=True)
        W_out = W if W is not None else (np.concatenate(parts, axis=0) if solve else None)
        return W_out, math.sqrt(2 * max(total, 0.0))

    def _full_error(self, batches: _Batches, n: int, W: np.ndarray, H: np.ndarray) -> float:
        """``sqrt(2 · D_β(X ‖ WH))`` over the whole of in-memory X."""
        beta = self._beta_loss
        if beta != 2 or sp.issparse(batches.memory):
            total = steps.batch_divergence(batches.memory, W, H, beta, exact=True)
            return math.sqrt(2 * max(total, 0.0))
        return self._solve_and_score(batches, n, H, W, 0.0)[1]

    # ------------------------------------------------------------ partial_fit
    def partial_fit(self, X: Any, y: Any = None, W: Any = None, H: Any = None) -> MiniBatchNMF:
        """Update the model with one mini-batch ``X`` (rows of the data stream).

        The first call (on an unfitted model) initialises H from this batch (or from
        ``W``/``H`` with ``init="custom"``); every call solves this batch's W from a
        flat start and folds it into H's running sums. With ``out``, the online
        state is committed after every call, and a new model with the same ``out``
        continues the stream where the last commit left it.

        Parameters
        ----------
        X : {array-like, sparse matrix, Dask array, Zarr array}
            One batch, of shape (n_samples, n_features).
        y : ignored
        W, H : array-like, optional
            Starts with ``init="custom"``; only used by the first call.

        Returns
        -------
        self
        """
        has_components = hasattr(self, "components_")
        if not has_components:
            self._validate()
        source, X_mem = self._input(X, reset=not has_components)
        Xb = X_mem if X_mem is not None else _Batches(source).get(0, source.shape[0])
        if X_mem is None:
            check_batch(Xb, 0, refuse_zeros=False)  # as _input checks in-memory X
        n, m = source.shape
        if not has_components:
            self._check_params(n, m)
            restored = None
            if self.out is not None:
                from ._online_run import open_stream

                restored = open_stream(self, m, source.dtype)
            if restored is None:
                prep = self._prepare(source, scan=X_mem is not None)
                _, H0 = self._start(source, X_mem, W, H, prep, keep_W=False)
                self._components_numerator = H0.copy()
                self._components_denominator = np.ones(H0.shape, dtype=H0.dtype)
                self.n_steps_ = 0
                H_cur = H0
            else:
                H_cur = restored
        else:
            H_cur = self.components_
        _, _, H_new, A, B = self._step(
            Xb, None, H_cur, self._components_numerator, self._components_denominator, m)
        self._components_numerator, self._components_denominator = A, B
        self.n_components_ = H_new.shape[0]
        self.components_ = H_new
        self.n_steps_ += 1
        if self.out is not None:
            from ._online_run import commit_stream

            commit_stream(self)
        return self

    # ------------------------------------------------------------ transform
    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                f"appropriate arguments before using this estimator."
            )

    def transform(self, X: Any) -> np.ndarray:
        """W for the rows ``X`` with H (``components_``) fixed.

        Parameters
        ----------
        X : {array-like, sparse matrix, Dask array, Zarr array, str}
            Data of shape (n_samples, n_features).

        Returns
        -------
        W : ndarray of shape (n_samples, n_components)
        """
        self._check_fitted()
        source, X_mem = self._input(X, reset=False)
        n, m = source.shape
        if not hasattr(self, "_beta_loss"):
            self._check_params(n, m)
        batches = _Batches(source, X_mem)
        try:
            return self._solve_all(batches, n, self.components_)
        finally:
            batches.close()

    def inverse_transform(self, X: Any) -> Any:
        """``X @ components_``: data space from W.

        Parameters
        ----------
        X : {ndarray, sparse matrix} of shape (n_samples, n_components)

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
        """
        self._check_fitted()
        return X @ self.components_
