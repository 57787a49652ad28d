"""dnmf: non-negative matrix factorization of matrices larger than memory.

V ≈ W·H with W, H ≥ 0, on Dask (local threads or a distributed cluster) and Zarr,
reading V once per iteration in row panels.

``import dnmf`` is cheap: the public names below are imported on first use
(PEP 562), so the command line and scripts that only need a part of dnmf do not pay
for Dask, SciPy, Zarr or distributed until they use them. A new public name goes
into ``_LAZY`` (name → module), not into an import at the top of this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ClusterLostError,
    CorruptCheckpointError,
    DnmfError,
    IncompatibleRunError,
    InvalidInputError,
    InvalidParameterError,
    NotFittedError,
    RunLockedError,
    StoreError,
)

if TYPE_CHECKING:
    from ._estimator import NMF, non_negative_factorization
    from ._mask import SpeckledHoldout
    from ._online import MiniBatchNMF
    from ._rank import RankSelection, select_rank
    from ._runs import OnlineRun, Run, open_run, resume
    from .io import open_source, to_anndata

__version__ = "0.1.0"

#: Public names imported on first access: name → the module that defines it.
_LAZY: dict[str, str] = {
    "NMF": "._estimator",
    "non_negative_factorization": "._estimator",
    "Run": "._runs",
    "OnlineRun": "._runs",
    "open_run": "._runs",
    "resume": "._runs",
    "SpeckledHoldout": "._mask",
    # Builds on scikit-learn's mixins: scikit-learn is imported only when asked for.
    "MiniBatchNMF": "._online",
    # Rank selection (and its sweep stores), likewise when first used.
    "select_rank": "._rank",
    "RankSelection": "._rank",
    # The reader layer (NumPy, SciPy, fsspec), when first used.
    "open_source": ".io",
    "to_anndata": ".io",
    # Also scikit-learn's ConvergenceWarning: made when first asked for.
    "ConvergenceWarning": ".errors",
}
#: Subpackages reachable as attributes (``dnmf.io.write_csr_zarr``) without an import.
_SUBMODULES = {"io", "testing"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dnmf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "OnlineRun",
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
