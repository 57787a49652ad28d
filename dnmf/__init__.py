"""dnmf: non-negative matrix factorization of matrices larger than memory.

V ≈ W·H with W, H ≥ 0, on Dask (local threads or a distributed cluster) and Zarr,
reading V once per iteration in row panels.
"""

from __future__ import annotations

from ._estimator import NMF, non_negative_factorization
from ._mask import SpeckledHoldout
from ._runs import Run, open_run, resume
from .errors import (
    ClusterLostError,
    ConvergenceWarning,
    CorruptCheckpointError,
    DnmfError,
    IncompatibleRunError,
    InvalidInputError,
    InvalidParameterError,
    NotFittedError,
    RunLockedError,
    StoreError,
)
from .io import open_source, to_anndata

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # MiniBatchNMF builds on scikit-learn's mixins: import it (and scikit-learn) only
    # when it is asked for, so that `import dnmf` stays fast.
    if name == "MiniBatchNMF":
        from ._online import MiniBatchNMF

        return MiniBatchNMF
    # Rank selection (and its sweep stores) likewise, when first used.
    if name in ("select_rank", "RankSelection"):
        from . import _rank

        return getattr(_rank, name)
    raise AttributeError(f"module 'dnmf' has no attribute {name!r}")

__all__ = [
    "NMF",
    "ClusterLostError",
    "ConvergenceWarning",
    "CorruptCheckpointError",
    "DnmfError",
    "IncompatibleRunError",
    "InvalidInputError",
    "InvalidParameterError",
    "MiniBatchNMF",
    "NotFittedError",
    "RankSelection",
    "Run",
    "RunLockedError",
    "SpeckledHoldout",
    "StoreError",
    "__version__",
    "non_negative_factorization",
    "open_run",
    "open_source",
    "resume",
    "select_rank",
    "to_anndata",
]
