"""V made ready for passes: its panel source, the backend, panel bounds and references.

Shared by the estimator and the run store's fit (:mod:`dnmf._run`), below both: it
knows the engine, the backend and the sources, and neither of its users.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _engine, _mask, _panelcache
from ._backend import Backend, get_backend
from ._mask import mask_refs, observed_refs, prepare_mask
from ._source import (
    MIN_SPLIT_BYTES,
    KeptPanel,
    PanelSource,
    ZarrPanel,
    as_source,
    load_panel,
    panel_digest,
    snap_bounds,
)
from .io import engine_input

__all__ = ["AUTO_CACHE_BYTES", "PreparedInput", "resolve_cache"]

#: ``cache="auto"``: a Zarr or Dask V whose panels take at most this many bytes in
#: memory (and at most :data:`AUTO_CACHE_SHARE` of the memory available) is read once
#: and kept. A small store then fits as fast as an array in memory: re-reading and
#: decoding V costs more per pass than the arithmetic of a KL or HALS pass on it
#: (10000 x 1000 float64 from Zarr: 18.1 s read every pass, against 4.9 s in memory).
AUTO_CACHE_BYTES = 2**30
#: ... and this share of the memory available when the fit starts (this machine's).
AUTO_CACHE_SHARE = 0.125


def auto_cache_limit() -> int:
    """The most bytes ``cache="auto"`` keeps: 1 GiB, or an eighth of the memory
    available if that is less."""
    avail = _panelcache.available_memory()
    return AUTO_CACHE_BYTES if avail is None else min(AUTO_CACHE_BYTES,
                                                      int(AUTO_CACHE_SHARE * avail))


def resolve_cache(cache: Any, source: PanelSource, shared: Any) -> bool:
    """Whether a fit keeps V's panels after their first read.

    ``cache`` True or False decides; ``"auto"`` keeps a Zarr or Dask V of at most
    :func:`auto_cache_limit` bytes decoded (values; with a CSR group, its indices and
    row pointers too), unless a sweep's shared panel cache already serves the fit.
    """
    if cache != "auto":
        return bool(cache)
    if shared is not None or source.kind not in ("zarr", "zarr-csr", "dask"):
        return False
    n, m = source.shape
    itemsize = source.dtype.itemsize
    if source.kind == "zarr-csr":
        size = source.nnz * (itemsize + 8) + (n + 1) * 8
    else:
        size = n * m * itemsize
    return size <= auto_cache_limit()


class PreparedInput:
    """V made ready for passes: source, backend, panel bounds and references, summary."""

    def __init__(
        self,
        X: Any,
        scheduler: Any,
        panel_rows: int | None,
        *,
        panel_bytes: int | None = None,
        layout: tuple[list[tuple[int, int]], int] | None = None,
        regular: bool = False,
        cache: bool | str = False,
        scan: bool = True,
        missing: str | None = None,
        mask: Any = None,
        fitting: bool = True,
    ) -> None:
        self.source: PanelSource = as_source(engine_input(X))
        #: how a masked fit observes V (None: every entry, the unmasked kernels)
        self.spec, mask_array = prepare_mask(self.source, mask, missing)
        self.mask_array = mask_array
        self.fitting = fitting
        if mask_array is not None and self.source.row_chunk is None and self.source.kind != "dask":
            # panels of an in-memory X follow a chunked mask's rows
            chunks = getattr(mask_array, "chunks", None)
            if chunks is not None:
                self.source.row_chunk = int(chunks[0] if isinstance(chunks[0], int)
                                            else chunks[0][0])
        self.backend: Backend = get_backend(scheduler)
        if layout is not None and layout[0][-1][1] == self.source.shape[0]:
            # A run's own panels and W chunk height, as it recorded them.
            self.bounds, self.unit = layout
        else:
            self.bounds = self.source.panel_bounds(
                panel_rows, self.backend.n_threads, panel_bytes
            )
            #: W chunk height in a run store: every panel is a whole number of them.
            self.unit = self.bounds[0][1] - self.bounds[0][0]
        sizes = [b - a for a, b in self.bounds]
        if layout is None and regular and (len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0]):
            if self.source.kind == "zarr-csr":
                # Panels cut by stored entries stay so, on a grid of W chunks.
                self.bounds, self.unit = snap_bounds(self.bounds)
            else:
                # A run store chunks W by panel: panels equal but for the last.
                self.bounds = self.source.panel_bounds(self.unit, self.backend.n_threads)
        if self.backend.distributed and self.source.kind in ("numpy", "dask", "zarr"):
            rows = max(b - a for a, b in self.bounds)
            self.backend.check_memory(rows * self.source.shape[1] * self.source.dtype.itemsize)
        elif self.backend.distributed and self.source.kind in ("sparse", "zarr-csr"):
            self.backend.check_memory(self._sparse_panel_bytes(), "sparse panel")
        refs = self.source.panel_refs(self.bounds)
        m_refs = mask_refs(mask_array, self.bounds)
        shared = _panelcache.active()
        if (shared is not None and not self.backend.distributed
                and self.source.kind in _panelcache.CACHED_KINDS):
            # A local sweep's fits share each decoded panel of V and of a Zarr mask.
            refs = _panelcache.wrap(refs, shared, "V")
            m_refs = [_panelcache.CachedPanel(r, shared, "mask") if isinstance(r, ZarrPanel)
                      else r for r in m_refs]
        #: what the scan reads: V's references and the mask's, panel by panel
        self.raw_refs = refs
        self.mask_refs = m_refs
        #: references for initialisation (V with 0 where not observed)
        self.init_refs = refs
        if self.spec is not None:
            refs, self.init_refs = observed_refs(refs, self.mask_refs, self.spec, self.bounds)
        if self.backend.distributed and self.source.kind in ("numpy", "sparse"):
            # In-memory data goes to the workers once, not once per iteration.
            refs = self.backend.scatter_panels([ref.load() for ref in refs])
            if self.spec is not None:
                self.init_refs = _mask.values_refs(refs)
        elif (resolve_cache(cache, self.source, shared)
              and self.source.kind in ("zarr", "zarr-csr", "dask")):
            # cache=True: read each panel once; later passes use the copy in memory
            # (this process, or the workers' memory on a cluster).
            refs = self.backend.map_keep(load_panel, [(ref,) for ref in refs])
            if not self.backend.distributed:
                # Checked by every pass until the validation pass has checked them
                # (a resume, which skips that pass, checks them every pass).
                refs = [KeptPanel(value, a) for value, (a, _) in zip(refs, self.bounds)]
        self.refs = refs
        # Small data (one panel's worth): one BLAS thread for the whole fit.
        n, m = self.source.shape
        entries = self.source.nnz if self.source.kind in ("sparse", "zarr-csr") else n * m
        self.backend.small = (not self.backend.distributed
                              and entries * self.source.dtype.itemsize < MIN_SPLIT_BYTES)
        if self.spec is None:
            self.init_refs = refs  # scattered or cached as the passes' are
        self._summary: _engine.DataSummary | None = None
        if scan:
            self.summary = self.scan()

    @property
    def summary(self) -> _engine.DataSummary:
        """V's summary (validation pass, or a run's record of it)."""
        assert self._summary is not None, "V has not been scanned"
        return self._summary

    @summary.setter
    def summary(self, summary: _engine.DataSummary) -> None:
        self._summary = summary
        # The solvers' cost ratios count V's non-zeros, whatever its format.
        self.source.nonzeros = int(summary.nnz)

    def scan(self, digests: list[str] | None = None) -> _engine.DataSummary:
        """Read V (and the mask) once to validate it; its summary. ``digests`` (a
        list): filled with the SHA-256 of each panel of V (unmasked: from the same
        read; masked: one more read of V)."""
        if self.spec is None:
            summary = _engine.scan(self.backend, self.source, self.refs, self.bounds,
                                   digests=digests)
        else:
            summary = _mask.scan(self.backend, self.source, self.raw_refs, self.mask_refs,
                                 self.spec, self.bounds, require_missing=self.fitting)
            if digests is not None:
                digests.extend(self.backend.map(_digest_task, [(r,) for r in self.raw_refs]))
        # Panels kept in memory (cache) hold what was just checked: no pass checks
        # them again.
        checked = {id(r): KeptPanel(r.value, r.start, True) for r in self.refs
                   if isinstance(r, KeptPanel)}
        if checked:
            self.refs = [checked.get(id(r), r) for r in self.refs]
            self.init_refs = [checked.get(id(r), r) for r in self.init_refs]
        return summary

    @property
    def observed_share(self) -> float:
        """The share of V's entries a masked fit uses (1 when unmasked)."""
        n, m = self.source.shape
        return self.summary.size / (n * m) if self.spec is not None else 1.0

    def _sparse_panel_bytes(self) -> int:
        """The largest panel of a sparse V in memory, by its stored entries.

        Values in the compute dtype, column indices and ``indptr``; the dense
        per-panel parts (W_i, V_i·Hᵀ: rows × k) are small next to it for k ≪ columns.
        """
        rows = np.asarray(self.bounds, dtype=np.int64)
        entries = np.diff(self.source.offsets(rows), axis=1)[:, 0]
        per_entry = self.source.dtype.itemsize + np.dtype(self.source.data.indices.dtype).itemsize
        return int(max(entries * per_entry + 8 * (rows[:, 1] - rows[:, 0] + 1)))

    def split_rows(self, W: np.ndarray) -> list[Any]:
        panels = [W[a:b] for a, b in self.bounds]
        return self.backend.scatter_panels(panels)

    def assemble(self, handles: list[Any], k: int) -> Any:
        """W as the same kind of array as X: NumPy for in-memory input, else Dask."""
        if self.source.kind in ("numpy", "sparse"):
            return np.concatenate(self.backend.gather(handles), axis=0)
        import dask.array as da

        blocks = [
            da.from_delayed(self.backend.to_delayed(h), shape=(b - a, k), dtype=self.source.dtype)
            for h, (a, b) in zip(handles, self.bounds)
        ]
        return da.concatenate(blocks, axis=0)


def _digest_task(ref: Any) -> str:
    return panel_digest(load_panel(ref))
