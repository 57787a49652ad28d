"""The public estimator :class:`NMF` and the function :func:`non_negative_factorization`.

This module follows scikit-learn's conventions (``__init__`` only stores, fitted
attributes end in ``_``, ``fit`` calls ``fit_transform``) and wires the pieces:
validation, the panel source, the backend, initialisation and the driver. It holds
no mathematics and no scheduling of its own.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import validate_data

from . import _engine, _mask
from ._prepared import PreparedInput
from ._solvers import Regularization, Solver, get_solver
from ._solvers._masked import get_masked_solver
from ._source import PanelSource, as_source
from ._validation import (
    check_beta_data,
    check_custom_factor,
    check_params,
    check_rank_memory,
    param_names,
    regularization,
    resolve_init,
    resolve_seed,
)
from .errors import InvalidDtypeError, InvalidInputError, InvalidParameterError, NotFittedError
from .io import engine_input

__all__ = ["NMF", "non_negative_factorization"]

logger = logging.getLogger("dnmf")


def _is_frame(X: Any) -> bool:
    """A pandas or polars DataFrame (anything with columns that is not a Dask array)."""
    return hasattr(X, "columns") and not hasattr(X, "dask")


def _frame_values(X: Any) -> Any:
    """A DataFrame's values as a NumPy array (other inputs unchanged)."""
    if _is_frame(X):
        return np.asarray(X.to_numpy() if hasattr(X, "to_numpy") else X)
    return X


class NMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    r"""Non-negative matrix factorization of data that may not fit in memory.

    Find non-negative ``W`` (n_samples × n_components) and ``H`` (n_components ×
    n_features) whose product approximates the non-negative ``X``, minimising

    .. math::

        \tfrac12\|X - WH\|_F^2 + \alpha_W l_1 n_{features} \|W\|_1
        + \tfrac12 \alpha_W (1 - l_1) n_{features} \|W\|_F^2 + (\text{same for } H)

    or another β-divergence (Kullback-Leibler, Itakura-Saito, any real β) in
    place of the first term.
    ``X`` is read in row panels, once per iteration; it may be a NumPy array, a SciPy
    sparse matrix, a Dask array or a Zarr array (or the path or URL of one).

    Parameters
    ----------
    n_components : int or "auto", default="auto"
        Rank k. "auto" takes it from custom ``W``/``H``, else ``n_features``.
    solver : {"auto", "hals", "cd", "mu", "als", "amu"}, default="auto"
        "auto" picks the fastest solver for the loss: "hals" for Frobenius, "amu"
        for KL, "mu" for KL with missing values or a mask and for every other β
        (dnmf's addition; scikit-learn's default is "cd", which minimises the
        Frobenius norm only). "hals" is accelerated HALS; "cd", scikit-learn's
        coordinate descent (HALS's updates, one sweep of W and one of H per
        iteration, no extrapolation: scikit-learn's iterates from the same custom
        start, to ~1e-14); "mu", Lee & Seung's multiplicative updates; "als",
        alternating NNLS with block principal pivoting; "amu" (KL only),
        accelerated MU: over-relaxed MU steps kept where MU's majorant guarantees
        a decrease (about half of MU's iterations; see the guide).
    beta_loss : float or {"frobenius", "kullback-leibler", "itakura-saito"}, \
            default="frobenius"
        The β-divergence minimised: "frobenius" (β = 2, ½‖X − WH‖²),
        "kullback-leibler" (β = 1), "itakura-saito" (β = 0) or any finite β.
        Losses other than Frobenius need ``solver="mu"`` (scikit-learn's update
        rules, with the exponent γ(β)), or "amu" for KL; "auto" picks them. For
        β ≤ 0, X must not contain zeros (a sparse X then has to store every
        entry). β other than 1 and 2 costs a dense panel's work per iteration even
        for sparse X (the loss needs WH at every entry).
    init : {None, "random", "nndsvd", "nndsvda", "nndsvdar", "custom"}, default=None
        Start. None means "nndsvda" when n_components <= min(n_samples,
        n_features), else "random" (scikit-learn's rule).
    max_iter : int, default=200
        Maximum number of iterations (passes over X).
    tol : float, default=1e-4
        Stop when the objective (the loss plus the penalties, see ``loss_history_``)
        decreases by less than ``tol`` (relative to its previous value) in an
        iteration. A rise counts as convergence only while it is within the rounding
        error of computing the objective; a larger rise never stops the fit. With
        ``tol=0`` the fit stops only at ``max_iter`` or once the objective no longer
        decreases beyond rounding. float32 Frobenius fits compute their loss
        statistics in float64 once float32 can no longer resolve the decrease, so
        they stop where float64 fits do (see the guide).
    random_state : int, RandomState, Generator or None, default=None
        Seed of the initialisation.
    alpha_W, alpha_H, l1_ratio : float
        Regularisation, with scikit-learn's meaning and scaling.
    callback : callable(iteration, loss) -> bool, default=None
        Called after every iteration; returning True stops the fit.
    verbose : int, default=0
        0 silent; 1 a live progress display; 2 also a log line per iteration.
    panel_rows : int or None, default=None
        Rows per panel of X; None picks them from ``panel_bytes``, aligned with
        the storage chunks.
    panel_bytes : int or None, default=None
        With ``panel_rows=None``: about this many bytes of X per panel as stored
        (dense values; for a CSR Zarr group its values and column indices, panels
        cut by stored entries so dense rows make shorter panels). None means 64 MiB.
        Peak memory is about (threads in flight) × 3–4 × this, plus W's panels;
        lower it on small machines or with many threads per worker.
    scheduler : None, "threads", str or distributed.Client, default=None
        None uses the active ``distributed.Client`` if there is one, else Dask's
        local threads scheduler.
    out : str, os.PathLike, zarr Store or None, default=None
        A run store for W, H and the fit's state: a directory, a ``.zip`` path, or
        an fsspec URL such as ``"s3://bucket/run"``. W (of shape (n_samples,
        n_components), chunked by panel) is then never held whole in memory and
        ``fit_transform`` returns a Dask array read from the store. A compatible
        unfinished run already at ``out`` is resumed; one for other data or
        parameters is refused (see ``overwrite``). Read it back with
        :func:`dnmf.open_run`; continue it with :func:`dnmf.resume`. A ``.zip`` is
        written at the end from a working directory ``<out>.partial`` beside it.
        See docs/checkpoints.md for the layout.
    checkpoint_every : int, default=10
        With ``out``: commit the state every this many iterations (also after
        initialisation, at the end, and on KeyboardInterrupt). A SIGKILL loses at
        most the iterations since the last commit.
    overwrite : bool, default=False
        With ``out``: discard whatever is at ``out`` (another run, or other files)
        and start afresh. Leave False to resume.
    cache : "auto" or bool, default="auto"
        Keep V's panels in memory after their first read (in this process with the
        threads scheduler, in the workers' memory on a cluster), so later
        iterations do not read V from storage again. ``"auto"``: for a Zarr or Dask
        V of at most 1 GiB in memory, and at most an eighth of the memory available
        (``dnmf._prepared.auto_cache_limit``), and not
        within a rank sweep, whose fits share one panel cache. True: whatever its
        size (only for a V that fits in the memory available). False: read V every
        pass. For NumPy and SciPy input it changes nothing; the results never
        depend on it.
    missing : {None, "nan", "unstored"}, default=None
        Which entries of X are missing (unobserved): None, none (NaN is an error);
        "nan", the NaN entries of a dense X; "unstored", every entry a sparse X does
        not store (the recommender setting). The loss and every update then use the
        observed entries only; see also ``fit(X, mask=...)`` and docs/missing.md.
    extrapolate : {"auto", True, False}, default="auto"
        Extrapolation with restarts (Ang & Gillis 2019) for ``solver="hals"`` and
        ``"als"``: after plain iterations that lower the loss by at least 10 % each,
        each iteration starts from the factors pushed along their last move, with a
        weight that grows while the loss falls and shrinks (and the step is undone)
        when it rises; still one pass over X per iteration, and the recorded loss
        never rises. It reaches a given loss in 1.5–3× fewer iterations (see the
        guide). "auto" (the default): on where available (Frobenius HALS and ALS
        without missing values or ``shuffle``, k < min(n_samples, n_features)),
        plain elsewhere; True: on, and an error where it is not available; False:
        plain iterations. Unlike scikit-learn's cd, the default's iterates and
        ``n_iter_`` are therefore not one plain sweep per iteration (docs/guide.md).
        Run stores (``out``) keep its state, so resume is bit for bit; "auto"
        continues a run as recorded.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        H.
    n_components_ : int
    n_iter_ : int
        Iterations run.
    reconstruction_err_ : float
        ``sqrt(2 · D)`` with D the data term alone at the final iterate (½‖X − WH‖²,
        or the KL divergence), without penalties: the Frobenius norm ‖X − WH‖ for
        Frobenius, as in scikit-learn for KL. Computed from the pass's k × m sums
        (WH is never formed), so exact to the rounding of ½‖X‖²: for Frobenius
        within about 8·sqrt(eps)·‖X‖ (a fit that close to exact may report 0.0).
    loss_history_ : list of float
        The objective minimised after each iteration: the data term (½‖X − WH‖², or
        the β-divergence, as scikit-learn's ``_beta_divergence``) plus the L1/L2
        penalties with scikit-learn's scaling (``alpha_W·l1_ratio·n_features·‖W‖₁ +
        ½·alpha_W·(1 − l1_ratio)·n_features·‖W‖²_F`` and the same for H with
        n_samples). Without penalties it is the data term. This is the value the
        stopping rule (``tol``) looks at.
    n_features_in_ : int
    heldout_loss_ : float
        After ``fit(X, mask=SpeckledHoldout(...))``: the loss (same ``beta_loss``, ½‖·‖²
        for Frobenius) over the held-out observed entries at the final W, H.
    n_heldout_ : int
        The number of those entries.

    References
    ----------
    Lee, D. D. and Seung, H. S. (2000). Algorithms for non-negative matrix
    factorization. NIPS 13.
    Gillis, N. and Glineur, F. (2012). Neural Computation 24(4).
    doi:10.1162/NECO_a_00256
    Kim, J. and Park, H. (2011). SIAM J. Sci. Comput. 33(6). doi:10.1137/110821172

    Examples
    --------
    >>> import numpy as np, dnmf
    >>> X = np.random.default_rng(0).random((100, 30))
    >>> W = dnmf.NMF(5, random_state=0).fit_transform(X)
    >>> W.shape
    (100, 5)
    """

    def __init__(
        self,
        n_components: int | str | None = "auto",
        *,
        solver: str = "auto",
        beta_loss: str | float = "frobenius",
        init: str | None = None,
        max_iter: int = 200,
        tol: float = 1e-4,
        random_state: Any = None,
        alpha_W: float = 0.0,
        alpha_H: float | str = "same",
        l1_ratio: float = 0.0,
        callback: Callable[[int, float], Any] | None = None,
        verbose: int = 0,
        shuffle: bool = False,
        panel_rows: int | None = None,
        panel_bytes: int | None = None,
        scheduler: Any = None,
        out: Any = None,
        checkpoint_every: int = 10,
        overwrite: bool = False,
        cache: bool | str = "auto",
        missing: str | None = None,
        extrapolate: bool | str = "auto",
    ) -> None:
        self.n_components = n_components
        self.solver = solver
        self.beta_loss = beta_loss
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.callback = callback
        self.verbose = verbose
        self.shuffle = shuffle
        self.panel_rows = panel_rows
        self.panel_bytes = panel_bytes
        self.scheduler = scheduler
        self.out = out
        self.checkpoint_every = checkpoint_every
        self.overwrite = overwrite
        self.cache = cache
        self.missing = missing
        self.extrapolate = extrapolate

    # ------------------------------------------------------------ parameters
    # get_params, set_params, repr, feature names, set_output and metadata routing
    # come from scikit-learn's mixins.
    @classmethod
    def _get_param_names(cls) -> list[str]:
        return list(param_names(cls))  # scikit-learn's, read once per class

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.input_tags.allow_nan = self.missing == "nan"
        return tags

    @property
    def _n_features_out(self) -> int:
        """Number of output features (``get_feature_names_out``): the components."""
        return int(self.components_.shape[0])

    def _check_frame(self, X: Any, *, reset: bool) -> Any:
        """Feature names (``feature_names_in_``) and their consistency check.

        scikit-learn's own check, for every input that has a shape (arrays, sparse,
        Dask, Zarr, DataFrames); a DataFrame is then taken as its values. Paths are
        opened later and carry no column names.
        """
        if (isinstance(X, str | os.PathLike | PanelSource) or not hasattr(X, "shape")
                or len(X.shape) != 2):
            if reset and hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            return X
        validate_data(self, X, reset=reset, skip_check_array=True, ensure_2d=False)
        if not reset and X.shape[1] != self.n_features_in_:
            raise InvalidInputError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is "
                f"expecting {self.n_features_in_} features as input."
            )
        return _frame_values(X)

    def _checked(self, mask: Any = None) -> dict[str, Any]:
        """The checked parameters, ``solver="auto"`` resolved for this call (a mask,
        or ``missing``, makes the call masked)."""
        return check_params(self.get_params(), masked=mask is not None)

    @staticmethod
    def _check_masked(params: dict[str, Any], mask: Any) -> None:
        """Missing values are fitted by the masked kernels: Frobenius with mu, hals or
        als; every other β-divergence with mu."""
        if params["missing"] is None and mask is None:
            return
        loss, solver = params["beta_loss"], params["solver"]
        if solver == "amu" or (loss != "frobenius" and solver != "mu"):
            raise InvalidParameterError(
                f"missing values (missing={params['missing']!r}, mask=...) are fitted with "
                f"beta_loss='frobenius' (solver 'hals', 'mu' or 'als') or any other "
                f"beta_loss with solver 'mu', not beta_loss={loss!r} with "
                f"solver={solver!r}."
            )

    def _solver(self, params: dict[str, Any], masked: bool = False,
                observed: float = 1.0, seed: int | None = None) -> Solver:
        if masked:
            return get_masked_solver(params["solver"], params["beta_loss"], observed)
        solver = get_solver(params["solver"], params["beta_loss"])
        if params.get("shuffle") and seed is not None and hasattr(solver, "shuffle_seed"):
            # HALS sweeps the components in an order drawn from (seed, iteration).
            solver.shuffle_seed = int(seed)
        return solver

    def _reg(self, params: dict[str, Any], n: int, m: int) -> Regularization:
        return regularization(params["alpha_W"], params["alpha_H"], params["l1_ratio"], n, m)

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None, W: Any = None, H: Any = None, *,
            mask: Any = None) -> NMF:
        """Learn the factorization of ``X``; see :meth:`fit_transform`."""
        self.fit_transform(X, y, W=W, H=H, mask=mask)
        return self

    def fit_transform(self, X: Any, y: Any = None, W: Any = None, H: Any = None, *,
                      mask: Any = None) -> Any:
        """Learn the factorization of ``X`` and return W.

        Parameters
        ----------
        X : {array-like, sparse matrix, Dask array, Zarr array, str}
            Non-negative data of shape (n_samples, n_features); not modified.
        y : ignored
        W : array-like of shape (n_samples, n_components), optional
            Start for W with ``init="custom"``.
        H : array-like of shape (n_components, n_features), optional
            Start for H with ``init="custom"``.
        mask : array-like of bool of shape (n_samples, n_features), or SpeckledHoldout
            True where an entry is observed (NumPy, Dask or Zarr, read with X's
            panels; combined with ``missing``). A :class:`dnmf.SpeckledHoldout` fits
            on the entries it does not hold out and sets ``heldout_loss_``.

        Returns
        -------
        W : ndarray of shape (n_samples, n_components), or a Dask array for Dask
            and Zarr input, or with ``out`` set (read from the run store).
        """
        params = self._checked(mask)
        self._check_masked(params, mask)
        X = self._check_frame(X, reset=True)
        if params["init"] != "custom" and (W is not None or H is not None):
            warnings.warn(
                "When init!='custom', provided W or H are ignored. Set init='custom' to "
                "use them as initialization.", RuntimeWarning, stacklevel=2,
            )
            W = H = None
        if params["out"] is not None:
            from ._run import fit_to_store

            return fit_to_store(self, X, W, H, params, mask=mask)
        prep = PreparedInput(X, params["scheduler"], params["panel_rows"],
                         panel_bytes=params["panel_bytes"], cache=params["cache"],
                         missing=params["missing"], mask=mask)
        source = prep.source
        check_beta_data(params["beta_loss"], prep.summary.size, prep.summary.nnz)
        n, m = source.shape
        k = self._resolve_k(params, W, H, m)
        check_rank_memory(k, n, m, w_in_memory=True)
        init = resolve_init(params["init"], k, n, m)
        seed = resolve_seed(params["random_state"])
        if init == "custom":
            _check_factor_dtypes(W, H, source.dtype)
            W0 = check_custom_factor(W, "W", (n, k), source.dtype)
            H0 = check_custom_factor(H, "H", (k, m), source.dtype)
            W_handles = prep.split_rows(W0)
        else:
            W_handles, H0 = _engine.initialize(
                prep.backend, source, prep.init_refs, prep.bounds,
                init=init, k=k, seed=seed, summary=prep.summary,
            )
        solver = self._solver(params, masked=prep.spec is not None,
                              observed=prep.observed_share, seed=seed)
        state = _engine.FitState(W=W_handles, H=H0)
        extrapolation = _extrapolation_for(params, H0, masked=prep.spec is not None,
                                           shape=(n, m))
        from ._progress import Progress

        with Progress(params["verbose"], params["max_iter"], prep.backend) as progress:
            reg = self._reg(params, n, m)
            state = _engine.iterate(
                prep.backend, source, prep.refs, solver, reg, state,
                max_iter=params["max_iter"], tol=params["tol"],
                norm_sq=prep.summary.norm_sq, total=prep.summary.total,
                callback=params["callback"],
                progress=progress.update, extrapolation=extrapolation,
            )
        if _engine.balances(solver, reg):
            _engine.balance(prep.backend, state)
        self._set_fitted(state, k, m, prep)
        return prep.assemble(state.W, k)

    def _resolve_k(self, params: dict[str, Any], W: Any, H: Any, m: int) -> int:
        k = params["n_components"]
        if k is None:
            return m  # scikit-learn: None means n_features
        if k != "auto":
            return int(k)
        if params["init"] == "custom":
            if H is not None:
                return int(np.shape(H)[0])
            if W is not None:
                return int(np.shape(W)[1])
        return m

    def _set_fitted(self, state: _engine.FitState, k: int, m: int,
                    prep: PreparedInput | None = None) -> None:
        self.components_ = np.asarray(state.H)
        self.n_components_ = k
        self._n_components = k
        self.n_iter_ = state.iteration
        self.loss_history_ = list(state.loss_history)
        last = state.loss_history[-1] if state.loss_history else state.init_loss or 0.0
        if state.data_loss is not None:
            last = state.data_loss  # penalised: the data term alone, as scikit-learn
        self.reconstruction_err_ = math.sqrt(2.0 * max(last, 0.0))
        self.n_features_in_ = m
        for name in ("heldout_loss_", "n_heldout_"):
            self.__dict__.pop(name, None)
        if prep is not None and prep.spec is not None and prep.spec.holdout is not None:
            self.n_heldout_ = int(prep.summary.n_heldout)
            self.heldout_loss_ = (float(state.heldout_loss) if state.heldout_loss is not None
                                  else float("nan"))

    # ------------------------------------------------------------ transform
    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                f"appropriate arguments before using this estimator."
            )

    def transform(self, X: Any, *, mask: Any = None) -> Any:
        """W for new rows ``X`` with H (``components_``) fixed.

        Each row is solved independently, so the answer for a row does not depend on
        the other rows passed with it. With ``missing`` set, or a boolean ``mask``
        (True = observed), each row is solved on its observed entries only.
        """
        return self._transform(X, mask)

    def _transform(self, X: Any, mask: Any = None, *, count: bool = False) -> Any:
        """:meth:`transform`; with ``count``, also the iterations the slowest row needed."""
        self._check_fitted()
        params = self._checked(mask)
        self._check_masked(params, mask)
        # Feature names first (scikit-learn's order: names, then their number).
        X = self._check_frame(X, reset=False)
        source = as_source(engine_input(X))
        if source.shape[1] != self.n_features_in_:
            raise InvalidInputError(
                f"X has {source.shape[1]} features, but {type(self).__name__} is "
                f"expecting {self.n_features_in_} features as input."
            )
        if _mask.split_mask(mask)[1] is not None:
            raise InvalidInputError(
                "transform takes a boolean mask (True = observed), not a SpeckledHoldout: "
                "a hold-out is for fitting. Pass mask=None or a boolean array."
            )
        prep = PreparedInput(source, params["scheduler"], params["panel_rows"],
                         panel_bytes=params["panel_bytes"], missing=params["missing"],
                         mask=mask, fitting=False)
        check_beta_data(params["beta_loss"], prep.summary.size, prep.summary.nnz)
        n, m = prep.source.shape
        k = self.n_components_
        start = math.sqrt(prep.summary.mean / k) if params["solver"] in ("mu", "amu") else 0.0
        result = _engine.transform(
            prep.backend, prep.source, prep.refs, prep.bounds,
            self._solver(params, masked=prep.spec is not None),
            self._reg(params, n, m), self.components_,
            start_value=start, max_iter=params["max_iter"], tol=params["tol"], count=count,
        )
        if count:
            handles, n_iter = result
            return prep.assemble(handles, k), n_iter
        return prep.assemble(result, k)

    def inverse_transform(self, X: Any) -> Any:
        """``X @ components_``: data space from W (NumPy or Dask, lazily)."""
        self._check_fitted()
        if hasattr(X, "dask"):
            return X @ self.components_
        if sp.issparse(X):
            if X.shape[1] != self.n_components_:
                raise InvalidInputError(
                    f"W has shape {X.shape}, but {type(self).__name__} has "
                    f"{self.n_components_} components: expected (n_samples, "
                    f"{self.n_components_})."
                )
            return np.asarray(X @ self.components_)
        W = np.asarray(_frame_values(X))
        if W.ndim != 2 or W.shape[1] != self.n_components_:
            raise InvalidInputError(
                f"W has shape {W.shape}, but {type(self).__name__} has "
                f"{self.n_components_} components: expected (n_samples, "
                f"{self.n_components_})."
            )
        return W @ self.components_


def _check_factor_dtypes(W: Any, H: Any, dtype: np.dtype) -> None:
    """scikit-learn's rule: custom W and H arrays must have X's dtype (TypeError)."""
    dtypes = {name: np.dtype(value.dtype) for name, value in (("W", W), ("H", H))
              if value is not None and hasattr(value, "dtype")}
    if any(d != dtype for d in dtypes.values()):
        got = " and ".join(f"{name}.dtype = {d}" for name, d in dtypes.items())
        raise InvalidDtypeError(
            f"H and W should have the same dtype as X. Got {got}, but X (as fitted) is "
            f"{np.dtype(dtype)}. Convert them, e.g. W.astype(X.dtype)."
        )


def _extrapolation_for(params: dict[str, Any], H0: Any, *, masked: bool,
                       shape: tuple[int, int]) -> Any:
    """The fit's :class:`~dnmf._extrapolation.Extrapolation` state, or None."""
    from . import _extrapolation

    k = int(np.shape(H0)[0])
    if not _extrapolation.resolve(params, k, shape, masked=masked):
        return None
    return _extrapolation.Extrapolation.start(params["solver"], np.asarray(H0))


def non_negative_factorization(
    X: Any,
    W: Any = None,
    H: Any = None,
    n_components: int | str | None = "auto",
    *,
    init: str | None = None,
    update_H: bool = True,
    solver: str = "auto",
    beta_loss: str | float = "frobenius",
    tol: float = 1e-4,
    max_iter: int = 200,
    alpha_W: float = 0.0,
    alpha_H: float | str = "same",
    l1_ratio: float = 0.0,
    random_state: Any = None,
    verbose: int = 0,
    callback: Callable[[int, float], Any] | None = None,
    panel_rows: int | None = None,
    panel_bytes: int | None = None,
    scheduler: Any = None,
    extrapolate: bool | str = "auto",
) -> tuple[Any, np.ndarray, int]:
    """Factorize ``X ≈ W·H``; the function form of :class:`NMF`.

    With ``update_H=False``, H is fixed to the given ``H`` and only W is solved for,
    as :meth:`NMF.transform` does: each row is iterated until its own change falls
    below ``tol`` (at most ``max_iter`` times), and ``n_iter`` is the number of
    iterations the slowest row needed (scikit-learn stops all rows together on the
    relative decrease of the loss, so its count can differ). ``extrapolate`` is
    :class:`NMF`'s (default "auto"; ``extrapolate=False`` for plain HALS/ALS).

    Returns
    -------
    W : ndarray or dask array of shape (n_samples, n_components)
    H : ndarray of shape (n_components, n_features)
    n_iter : int
    """
    est = NMF(
        n_components, solver=solver, beta_loss=beta_loss, init=init, max_iter=max_iter,
        tol=tol, random_state=random_state, alpha_W=alpha_W, alpha_H=alpha_H,
        l1_ratio=l1_ratio, callback=callback, verbose=verbose, panel_rows=panel_rows,
        panel_bytes=panel_bytes, scheduler=scheduler, extrapolate=extrapolate,
    )
    if update_H:
        W_out = est.fit_transform(X, W=W, H=H)
        return W_out, est.components_, est.n_iter_
    if H is None:
        raise InvalidInputError("update_H=False needs H: pass the fixed H.")
    if W is not None:
        warnings.warn("When update_H=False, the provided initial W is not used.",
                      RuntimeWarning, stacklevel=2)
    source = as_source(engine_input(_frame_values(X)))
    if n_components == "auto":
        k = int(np.shape(H)[0])
    elif n_components is None:
        k = source.shape[1]
    else:
        k = int(n_components)
    if hasattr(H, "dtype") and np.dtype(H.dtype) != source.dtype:
        raise InvalidDtypeError(
            f"H should have the same dtype as X. Got H.dtype = {np.dtype(H.dtype)}, but X "
            f"is {source.dtype}. Convert it, e.g. H.astype(X.dtype)."
        )
    H_fixed = check_custom_factor(H, "H", (k, source.shape[1]), source.dtype)
    est.components_ = H_fixed
    est.n_components_ = k
    est.n_features_in_ = source.shape[1]
    W_out, n_iter = est._transform(source, count=True)  # X is opened and classified once
    return W_out, H_fixed, n_iter
