"""The exceptions and warnings dnmf raises.

Every error a user can cause derives from :class:`DnmfError`, so callers (and the
command line) can tell a user's mistake from a bug. Input and parameter errors are
also :class:`ValueError`, as scikit-learn's conventions expect. Messages name the
offending value, where it was found and what to do about it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ClusterLostError",
    "ConvergenceWarning",  # noqa: F822  (made on first use: module __getattr__)
    "CorruptCheckpointError",
    "DnmfError",
    "IncompatibleRunError",
    "InvalidDtypeError",
    "InvalidInputError",
    "InvalidParameterError",
    "NotFittedError",
    "RunLockedError",
    "StoreError",
]


class DnmfError(Exception):
    """Base class of every error dnmf raises for a user's mistake."""


class InvalidInputError(DnmfError, ValueError):
    """The data (X, or custom W/H) cannot be factorized as given."""


class InvalidDtypeError(InvalidInputError, TypeError):
    """The data holds values that are not real numbers."""


class InvalidParameterError(DnmfError, ValueError, TypeError):
    """A parameter has a value outside its allowed range or of the wrong type."""


class NotFittedError(DnmfError, ValueError, AttributeError):
    """A method that needs a fitted estimator was called before ``fit``."""


class StoreError(DnmfError, OSError):
    """A run store is missing, unreadable or not writable."""


class CorruptCheckpointError(StoreError):
    """A committed checkpoint failed verification (checksum mismatch, truncation)."""


class IncompatibleRunError(DnmfError, ValueError):
    """An existing run cannot be resumed with this data or these parameters."""


class ClusterLostError(DnmfError, RuntimeError):
    """The Dask scheduler, or the connection to it, was lost during the work.

    Not a mistake in the call: the work stopped. A fit with ``out=`` resumes from
    its last checkpoint (:func:`dnmf.resume`) once a scheduler is reachable again.
    ``address`` is the scheduler's and ``reason`` says what was seen.
    """

    def __init__(self, message: str, address: str = "?", reason: str = "") -> None:
        super().__init__(message)
        self.address = address
        self.reason = reason


class RunLockedError(DnmfError):
    """Another live process holds the write lock of a run."""


def _convergence_warning() -> type[UserWarning]:
    """dnmf's ConvergenceWarning: also scikit-learn's, so filters on either catch it.

    Made on first use (module ``__getattr__``), so that importing dnmf does not
    import scikit-learn.
    """
    from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning

    return type(
        "ConvergenceWarning",
        (SklearnConvergenceWarning,),
        {"__module__": __name__,
         "__doc__": "The fit stopped at ``max_iter`` before reaching ``tol`` (also "
                    "``sklearn.exceptions.ConvergenceWarning``)."},
    )


def __getattr__(name: str) -> Any:
    if name == "ConvergenceWarning":
        cls = _convergence_warning()
        globals()["ConvergenceWarning"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
