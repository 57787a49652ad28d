"""Sources read as dense row blocks: what the Zarr writer (:func:`dnmf.convert`) consumes.

A :class:`Reader` presents one matrix as consecutive blocks of rows; sparse readers
can also hand the whole matrix over compressed (:meth:`Reader.to_csr`). The readers of
:mod:`dnmf.io` build them; this module knows no file format beyond delimited text.
"""

from __future__ import annotations

import gzip
import itertools
import re
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np

from ..errors import InvalidInputError

__all__ = [
    "ArrayReader", "CSRGroupReader", "Reader", "SparseReader", "TextReader", "check_2d",
    "check_block", "numeric_dtype",
]


def numeric_dtype(dtype: np.dtype, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind in "biuf":
        return dtype
    what = "complex numbers" if dtype.kind == "c" else f"dtype {dtype}"
    raise InvalidInputError(
        f"{where} holds {what}; NMF needs real, non-negative numbers."
    )


def check_2d(shape: tuple[int, ...], where: str) -> tuple[int, int]:
    if len(shape) != 2:
        raise InvalidInputError(
            f"{where} has shape {tuple(shape)}; dnmf needs a 2-D matrix (rows × columns)."
        )
    if shape[0] == 0 or shape[1] == 0:
        raise InvalidInputError(f"{where} is empty (shape {tuple(shape)}).")
    return int(shape[0]), int(shape[1])


# ------------------------------------------------------------------- readers
class Reader:
    """A 2-D source read as dense row blocks.

    Attributes
    ----------
    name : str
        How to call the source in messages.
    shape : tuple of int
        Rows and columns. For text files the row count is an upper bound until the
        file has been read (blank and comment lines are not rows).
    dtype : numpy.dtype
        The dtype the blocks come in.
    row_chunk : int or None
        The source's own chunk height, when reading whole chunks is cheaper.
    streaming : bool
        False when the reader holds the whole source in memory.
    """

    name: str
    shape: tuple[int, int]
    dtype: np.dtype
    row_chunk: int | None = None
    streaming: bool = True
    #: True when the source is a sparse matrix (see :meth:`to_csr`).
    sparse: bool = False

    def to_csr(self) -> Any:
        """The whole source as a ``scipy.sparse.csr_matrix`` (sparse readers only)."""
        raise NotImplementedError

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, block)`` for consecutive blocks of at most ``rows`` rows."""
        n = self.shape[0]
        for start in range(0, n, rows):
            yield start, self.read(start, min(start + rows, n))

    def read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def where(self, row: int) -> str:
        """Extra location text for a row (a line number for text files)."""
        return ""

    def close(self) -> None:
        return None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ArrayReader(Reader):
    """Anything sliceable by rows: a NumPy memory map, an HDF5 dataset, a Zarr array."""

    def __init__(self, array: Any, name: str, *, row_chunk: int | None = None,
                 streaming: bool = True, closer: Callable[[], None] | None = None) -> None:
        self.array = array
        self.name = name
        self.shape = check_2d(tuple(array.shape), name)
        self.dtype = numeric_dtype(array.dtype, name)
        self.row_chunk = row_chunk
        self.streaming = streaming
        self._closer = closer

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.array[start:stop])

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None


class SparseReader(Reader):
    """A SciPy sparse matrix held compressed (CSR), densified one block at a time."""

    streaming = False
    sparse = True

    def __init__(self, matrix: Any, name: str) -> None:
        self.matrix = matrix.tocsr()
        self.name = name
        self.shape = check_2d(tuple(self.matrix.shape), name)
        self.dtype = numeric_dtype(self.matrix.dtype, name)

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.matrix[start:stop].toarray())

    def to_csr(self) -> Any:
        return self.matrix


class CSRGroupReader(Reader):
    """A CSR matrix stored as a Zarr group (AnnData's encoding), read by row slices."""

    sparse = True

    def __init__(self, group: Any, name: str) -> None:
        from .._source import _csr_group

        self.csr = _csr_group(group, name)
        self.name = name
        self.shape = check_2d(self.csr.shape, name)
        self.dtype = numeric_dtype(self.csr.dtype, name)

    def read(self, start: int, stop: int) -> np.ndarray:
        from .._source import CSRPanel

        panel = CSRPanel(self.csr.data, self.csr.indices, self.csr.indptr_array, start, stop,
                         self.shape[1], self.dtype.str)
        return np.asarray(panel.load().toarray())

    def to_csr(self) -> Any:
        from .._source import CSRPanel

        self.streaming = False  # rewritten as CSR: held whole (compressed) in memory
        return CSRPanel(self.csr.data, self.csr.indices, self.csr.indptr_array, 0,
                        self.shape[0], self.shape[1], self.dtype.str).load()


def _split(line: str, delimiter: str) -> list[str]:
    """The fields of one line, as the csv module (and pandas) read them: a field in
    double quotes may hold the delimiter (``"Smith, J."``) and doubled quotes."""
    line = line.rstrip("\r\n")
    if '"' not in line:
        return [x.strip() for x in line.split(delimiter)]
    import csv

    return [x.strip() for x in next(csv.reader([line], delimiter=delimiter))]


def _unquote(field: str) -> str:
    """A field without surrounding blanks and double quotes (as pandas quotes names)."""
    field = field.strip()
    if len(field) >= 2 and field[0] == field[-1] == '"':
        field = field[1:-1].replace('""', '"')
    return field


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


class TextReader(Reader):
    """Delimited text (CSV/TSV, optionally gzipped) parsed in blocks of lines.

    Blank lines and lines starting with ``#`` are skipped. The first line is a header
    (feature names) when none of its fields is a number, or when its fields are
    ``0, 1, …, m-1`` (pandas' default column labels). An index column (row names)
    is detected when the header's first field is empty (what ``pandas.DataFrame.to_csv``
    writes for an unnamed index) or when the first field of the first data row is text
    and the others numbers; ``index_col`` says which column it is (``False``: none).
    A first line that mixes numbers and text elsewhere is refused: it is a data row
    with a bad value, or a header whose column names include numbers, and guessing
    would drop a row or read a name as data.
    """

    def __init__(self, path: str, delimiter: str, *, index_col: int | bool | None = None
                 ) -> None:
        self.name = path
        self.path = path
        self.delimiter = delimiter
        self.dtype = np.dtype(np.float64)
        self.header = False
        n_lines = 0
        first: str | None = None
        second: str | None = None
        first_line = 0
        with self._open() as f:
            for line in f:
                n_lines += 1
                if line.strip() and not line.lstrip().startswith("#"):
                    if first is None:
                        first, first_line = line, n_lines
                    elif second is None:
                        second = line
        if first is None:
            raise InvalidInputError(f"{path} holds no data rows.")
        fields = [_unquote(x) for x in _split(first, delimiter)]
        text = [i for i, x in enumerate(fields) if not _is_number(x)]
        if len(fields) == 1 and text and second is not None and not _is_number(
                _unquote(_split(second, delimiter)[0])):
            raise InvalidInputError(
                f"{path} holds only an index column (row names) and no values: NMF needs "
                f"numeric columns."
            )
        explicit = None if index_col is None or index_col is False else index_col
        if explicit is not None and not (
                isinstance(explicit, int) and 0 <= explicit < len(fields)):
            raise InvalidInputError(
                f"{path}: index column {index_col!r} (--index-col) is not a column of a "
                f"file with {len(fields)} columns (numbered from 0)."
            )
        candidate = 0 if index_col is None else explicit
        # pandas' default column labels (a RangeIndex): "0,1,…,m-1", or ",0,1,…" with
        # the index written first. All numbers, yet a header: read as one, it would
        # be a data row too many.
        labels = fields[1:] if fields[0] == "" and len(fields) > 1 else fields
        range_header = (second is not None and len(labels) > 1
                        and labels == [str(i) for i in range(len(labels))])
        if range_header:
            text = list(range(len(fields)))
        mixed = bool(text) and len(text) < len(fields)
        row_named = mixed and candidate is not None and text == [candidate]
        if mixed and not row_named:
            raise InvalidInputError(
                f"{path}, line {first_line}: {fields[text[0]]!r} (field {text[0] + 1}) "
                f"is not a number, but other fields of that line are. If it is a header, "
                f"name every column with text (not a number); if it is data, fix the value."
            )
        self.notes: list[str] = []
        self.header = bool(text) and not mixed
        self.index_col: int | None = None
        if index_col is None:
            if self.header and fields[0] == "" and len(fields) > 1:
                self.index_col = 0
                self.notes.append("index column 0 (row names; its header field is empty)")
            elif mixed:
                self.index_col = 0
                self.notes.append("index column 0 (row names: text in the first column)")
            elif self.header and second is not None:
                data = _split(second, delimiter)
                if len(data) > 1 and not _is_number(data[0]) and all(
                        _is_number(x) for x in data[1:]):
                    self.index_col = 0
                    self.notes.append("index column 0 (row names: text in the first column)")
        elif explicit is not None:
            self.index_col = int(explicit)
            self.notes.append(f"index column {self.index_col} (row names, as asked)")
        if self.header:
            self.notes.insert(0, "a header line (0, 1, 2, …: pandas' default column "
                                 "labels)" if range_header else "a header line (feature names)")
            n_lines -= 1
        if n_lines < 1:
            raise InvalidInputError(f"{path} holds a header line but no data rows.")
        m = len(fields) - (self.index_col is not None)
        if m < 1:
            raise InvalidInputError(
                f"{path} holds only an index column (row names) and no values: NMF needs "
                f"numeric columns. If the column is data, pass --index-col none."
            )
        names = [f for i, f in enumerate(fields) if i != self.index_col]
        self.feature_names: list[str] | None = names if self.header else None
        self._usecols = None if self.index_col is None else \
            [i for i in range(len(fields)) if i != self.index_col]
        self._width = len(fields)
        self.shape = (n_lines, m)
        self._line_of: list[int] = []

    def _open(self) -> IO[str]:
        if self.path.lower().endswith(".gz"):
            return gzip.open(self.path, "rt", encoding="utf-8", newline="")
        return open(self.path, encoding="utf-8", newline="")

    def _lines(self) -> Iterator[tuple[int, str]]:
        with self._open() as f:
            numbered = (
                (number, line)
                for number, line in enumerate(f, start=1)
                if line.strip() and not line.lstrip().startswith("#")
            )
            if self.header:
                next(numbered, None)
            yield from numbered

    def row_names(self) -> list[str] | None:
        """The index column's values (one pass over the file), or None without one."""
        if self.index_col is None:
            return None
        col = self.index_col
        return [_unquote(_split(line, self.delimiter)[col]) for _, line in self._lines()]

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        start = 0
        numbered = self._lines()
        while True:
            chunk = list(itertools.islice(numbered, rows))
            if not chunk:
                return
            self._line_of = [number for number, _ in chunk]
            self._row0 = start
            yield start, self._parse([line for _, line in chunk])
            start += len(chunk)

    def _parse(self, lines: list[str]) -> np.ndarray:
        if self._usecols is not None:
            widths = [len(_split(line, self.delimiter)) if '"' in line
                      else line.count(self.delimiter) + 1 for line in lines]
            bad = next((i for i, w in enumerate(widths) if w != self._width), None)
            if bad is not None:
                raise InvalidInputError(
                    f"{self.name}, line {self._line_of[bad]}: {widths[bad]} fields where "
                    f"the first row has {self._width}."
                )
        try:
            block = np.loadtxt(lines, delimiter=self.delimiter, dtype=np.float64,
                               ndmin=2, comments=None, usecols=self._usecols,
                               quotechar='"')
        except ValueError as exc:
            raise InvalidInputError(self._explain(str(exc))) from None
        if block.shape[1] != self.shape[1]:
            raise InvalidInputError(
                f"{self.name}, line {self._line_of[0]}: {block.shape[1]} fields where the "
                f"first row has {self.shape[1]}."
            )
        return block

    def _explain(self, message: str) -> str:
        bad = re.search(r"could not convert string '(.*)' to \w+ at row (\d+), column (\d+)",
                        message)
        if bad:
            text, row, column = bad.group(1), int(bad.group(2)), int(bad.group(3))
            if self._usecols is not None and 1 <= column <= len(self._usecols):
                column = self._usecols[column - 1] + 1
            what = "an empty field" if text == "" else f"{text!r}, which is not a number,"
            return (f"{self.name}, line {self._line_of[row]}: {what} in field {column}; "
                    f"every field must be a number (a text column other than the row "
                    f"names cannot be factorized: drop it first).")
        ragged = re.search(r"number of columns changed from (\d+) to (\d+) at row (\d+)",
                           message)
        if ragged:
            before, after, row = (int(g) for g in ragged.groups())
            return (f"{self.name}, line {self._line_of[row - 1]}: {after} fields where the "
                    f"previous rows have {before}; every row needs the same number of "
                    f"fields.")
        return f"{self.name}: cannot parse the file as numbers ({message})."

    def where(self, row: int) -> str:
        offset = row - getattr(self, "_row0", 0)
        if 0 <= offset < len(self._line_of):
            return f" (line {self._line_of[offset]})"
        return ""


def check_block(block: np.ndarray, start: int, reader: Reader, *,
                allow_nan: bool = False) -> None:
    """Refuse NaN, ±inf and negative values, naming the first one's position.

    With ``allow_nan`` NaN passes (missing values, kept for ``missing="nan"``).
    """
    if block.dtype.kind in "bu":
        return
    nonfinite = None
    if block.dtype.kind == "f":
        nonfinite = np.isinf(block) if allow_nan else ~np.isfinite(block)
    for mask, what, fix in (
        (nonfinite, "infinite" if allow_nan else "NaN or infinite",
         "replace them first" if allow_nan else "impute or drop them first, or keep NaN "
         "as missing values with missing='nan'"),
        (block < 0, "negative", "shift or clip the data first"),
    ):
        if mask is None or not mask.any():
            continue
        r, c = (int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))
        raise InvalidInputError(
            f"{reader.name} has a {what} value ({float(block[r, c]):g}) at row {start + r}, "
            f"column {c}{reader.where(start + r)}: NMF needs finite, non-negative data; "
            f"{fix}."
        )
