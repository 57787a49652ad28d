"""The per-pass panel check of dnmf._source (the rest is covered through the estimator)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from dnmf import InvalidInputError
from dnmf._source import check_panel


@pytest.mark.parametrize("sparse", [False, True])
def test_check_panel_names_the_first_bad_entry_and_allows_declared_nan(sparse):
    V = np.arange(1.0, 61.0).reshape(6, 10)
    V[2, 4] = np.nan
    V[4, 1] = -3.0
    panel = sp.csr_matrix(V) if sparse else V
    with pytest.raises(InvalidInputError, match=r"row 102, column 4 \(in the panel of rows "
                                                r"100-105\) holds NaN \(2 bad entries"):
        check_panel(panel, 100)
    with pytest.raises(InvalidInputError, match=r"row 104, column 1 .* a negative value "
                                                r"\(1 bad entries"):
        check_panel(panel, 100, allow_nan=True)
    V[4, 1] = np.inf
    with pytest.raises(InvalidInputError, match=r"row 4 \(of a panel of 6 rows\), column 1 "
                                                r"holds infinity"):
        check_panel(sp.csr_matrix(V) if sparse else V, None, allow_nan=True)
    V[4, 1] = 0.0
    check_panel(sp.csr_matrix(V) if sparse else V, 100, allow_nan=True)
    check_panel(np.full((3, 3), np.nan), 0, allow_nan=True)
    check_panel(np.zeros((0, 3)), 0)


def test_only_arrays_resident_in_memory_skip_the_per_pass_check(tmp_path):
    """Arrays in this process's memory (NumPy, SciPy sparse) are checked once by the
    validation pass; a memory map of a file (which may change on disk), Zarr and Dask
    panels are checked by every pass."""
    import dask.array as da
    import scipy.sparse as sp

    from dnmf._source import as_source, needs_check

    V = np.abs(np.random.default_rng(0).standard_normal((40, 6)))
    np.save(tmp_path / "V.npy", V)
    mapped = np.load(tmp_path / "V.npy", mmap_mode="r")
    cases = {"ndarray": (V, False), "view": (V[::1], False),
             "sparse": (sp.csr_matrix(V), False), "memmap": (mapped, True),
             "asarray(memmap)": (np.asarray(mapped), True),
             "dask": (da.from_array(V, chunks=(20, 6)), True)}
    for name, (X, checked) in cases.items():
        refs = as_source(X).panel_refs([(0, 20), (20, 40)])
        assert [needs_check(r) for r in refs] == [checked] * 2, name
