"""Imports every reader so that it registers with :data:`dnmf.io.ENGINES`."""

from __future__ import annotations

from . import _files, _hdf5, _zarr  # noqa: F401  (registration)
