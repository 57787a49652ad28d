"""``--missing`` and ``--mask``: missing values on the command line.

``--missing nan`` treats NaN entries as unobserved (a conversion keeps them);
``--missing unstored`` observes only a sparse input's stored entries. ``--mask PATH``
is a boolean array of INPUT's shape (True or 1 = observed) in any format the readers
open (docs/formats.md). A mask is read with V's panels, so unless it already is a
boolean Zarr array chunked like V it is copied, checked, next to the run
(``RUN.mask.zarr``), where ``dnmf resume`` finds it again.
"""

from __future__ import annotations

import os
import shutil
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InvalidInputError, InvalidParameterError, StoreError
from ._output import _say


class MissingName(str, Enum):
    nan = "nan"
    unstored = "unstored"


MissingOpt = Annotated[MissingName | None, typer.Option(
    "--missing", help="Missing values: nan (NaN entries of a dense INPUT are unobserved; a "
    "conversion keeps them) or unstored (only the stored entries of a sparse INPUT are "
    "observed) [default: none; NaN is an error].", show_default=False)]
MaskOpt = Annotated[str | None, typer.Option(
    "--mask", metavar="PATH", help="A boolean array of INPUT's shape, True (or 1) where an "
    "entry is observed, in any format INPUT may have (.npy, .csv, Zarr, ...).",
    show_default=False)]


def mask_store_for(out: str) -> Path:
    """Where a command puts a copy of --mask: next to --out, named after it."""
    path = Path(out.rstrip("/"))
    stem = path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name
    return path.with_name(f"{stem}.mask.zarr")


def check_missing_options(missing: MissingName | None, mask: str | None, *,
                          online: bool = False, dense: bool = False) -> None:
    """What can be refused before INPUT is converted."""
    if online and (missing is not None or mask is not None):
        raise InvalidParameterError(
            "--missing and --mask do not apply with --online (online NMF fits complete "
            "data): drop --online to fit the observed entries only."
        )
    if mask is not None and "://" not in mask and not os.path.exists(mask):
        raise InvalidInputError(f"--mask {mask} does not exist.")
    if missing is MissingName.unstored and dense:
        raise InvalidParameterError(
            "--missing unstored observes the stored entries of a sparse INPUT, but --dense "
            "makes it dense: drop --dense (or use --missing nan for NaN entries)."
        )


def _zarr_mask(path: str, shape: tuple[int, int], row_chunk: int) -> Any:
    """``path`` opened when it is a boolean Zarr array of V's shape and row chunks."""
    import numpy as np
    import zarr

    from .._convert import detect_format

    if detect_format(path) != "zarr":
        return None
    try:
        z = zarr.open_array(path, mode="r")
    except Exception:
        return None
    if (z.dtype == np.bool_ and tuple(z.shape) == tuple(shape)
            and int(z.chunks[0]) == row_chunk and int(z.chunks[1]) == shape[1]):
        return z
    return None


def _identity(mask: str, shape: tuple[int, int], row_chunk: int) -> dict[str, Any]:
    from ..io._base import split_inner

    if "://" in mask:
        return {"mask": mask, "shape": list(shape), "row_chunk": row_chunk}
    base = split_inner(mask)[0]
    target = base
    if os.path.isdir(base):  # a Zarr directory: its metadata file tells when it changed
        target = next((str(p) for p in (Path(base) / "zarr.json", Path(base) / ".zarray")
                       if p.exists()), base)
    stat = os.stat(target)
    return {"mask": os.path.abspath(mask), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "shape": list(shape), "row_chunk": row_chunk}


def _recorded(path: Path) -> Any:
    import zarr

    try:
        attrs = zarr.open_array(str(path), mode="r").attrs.asdict()
    except Exception:
        return None
    return (attrs.get("dnmf") or {}).get("mask_of")


def prepare_mask(mask: str, v_path: str, out: str, *, overwrite: bool
                 ) -> tuple[Any, Path | None, Path | None]:
    """The mask as a boolean Zarr array chunked like V (opened); the copy this call
    wrote (None if it reused one or read ``mask`` where it is); and where a copy it
    replaced (``overwrite``) was moved, to put back if the fit fails
    (:func:`dnmf.cli._inputs._put_back`) or delete once it has committed.

    Refuses, each with one line: another shape, values other than True/False or 0/1,
    a copy at the target holding another mask (without ``overwrite``).
    """
    import numpy as np
    import zarr

    from ._inputs import _zarr_array_info

    shape, stored, row_chunk, sparse = _zarr_array_info(v_path)
    if _own_row_chunk(v_path) is None:
        # V without row chunks (a contiguous HDF5 dataset): panels are whole chunks of
        # the mask, so keep them small (rows of about 1 MiB of V) for the panels to be
        # cut as without a mask, not one chunk (and one panel) of all of V.
        import numpy as np

        row_bytes = max(1, int(shape[1]) * np.dtype(stored).itemsize)
        row_chunk = max(1, min(int(shape[0]), (1 << 20) // row_bytes))
    if sparse:
        raise InvalidParameterError(
            "--mask with a sparse INPUT is not supported: --missing unstored observes "
            "exactly its stored entries; or add --dense to fit it dense with the mask."
        )
    shape = (int(shape[0]), int(shape[1]))
    direct = _zarr_mask(mask, shape, row_chunk)
    if direct is not None:
        return direct, None, None
    target = mask_store_for(out)
    identity = _identity(mask, shape, row_chunk)
    if target.exists():
        recorded = _recorded(target)
        if recorded == identity:
            _say(f"using {target}, the mask copied earlier from {mask}")
            return zarr.open_array(str(target), mode="r"), None, None
        if not overwrite:
            raise StoreError(
                f"{target} exists but holds another mask (another file, or {mask} changed "
                f"since); pass --overwrite to replace it, or remove it."
            )
    from ..io import open_source

    source = open_source(mask)
    text = source.format in ("csv", "tsv")  # rows known once read: checked below
    if source.shape[1] != shape[1] or (not text and source.shape[0] != shape[0]):
        raise InvalidInputError(
            f"--mask {mask} has shape {tuple(source.shape)}, but INPUT is {shape[0]} × "
            f"{shape[1]}: the mask must have INPUT's shape (True or 1 = observed)."
        )
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    z = zarr.create_array(store=str(tmp), shape=shape, chunks=(row_chunk, shape[1]),
                          dtype=bool, fill_value=False, zarr_format=3,
                          attributes={"dnmf": {"mask_of": identity}}, overwrite=True)
    done = 0
    try:
        with source.reader() as reader:
            step = max(row_chunk, (64 * 2**20 // max(1, shape[1])) // row_chunk * row_chunk)
            for start, block in reader.blocks(step):
                block = np.asarray(block)
                if start + len(block) > shape[0] or block.shape[1] != shape[1]:
                    raise InvalidInputError(
                        f"--mask {mask} has more than {shape[0]} rows or not {shape[1]} "
                        f"columns: the mask must have INPUT's shape ({shape[0]} × {shape[1]})."
                    )
                z[start:start + len(block)] = _as_bool(block, start, mask)
                done = start + len(block)
        if done != shape[0]:
            raise InvalidInputError(
                f"--mask {mask} has {done} rows, but INPUT has {shape[0]}: the mask must "
                f"have INPUT's shape ({shape[0]} × {shape[1]})."
            )
        aside = None
        if target.exists():
            aside = target.with_name(f".{target.name}.replaced-{os.getpid()}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(target, aside)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(f"copied the mask {mask} to {target} (read with INPUT's panels; kept for resume)")
    return zarr.open_array(str(target), mode="r"), target, aside


def _own_row_chunk(v_path: str) -> int | None:
    from .._source import as_source
    from ..io import engine_input

    return as_source(engine_input(v_path)).row_chunk


def _as_bool(block: Any, start: int, mask: str) -> Any:
    """A block of the mask as booleans: True/False, or numbers that are all 0 or 1."""
    import numpy as np

    if block.dtype == np.bool_:
        return block
    if block.dtype.kind not in "iuf":
        raise InvalidInputError(
            f"--mask {mask} holds {block.dtype} values: a mask holds True/False or 0/1 "
            f"(1 = observed)."
        )
    bad = (block != 0) & (block != 1)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise InvalidInputError(
            f"--mask {mask} is not boolean: it has the value {float(block[r, c]):g} at row "
            f"{start + r}, column {c}; a mask holds True/False or 0/1 (1 = observed)."
        )
    return block == 1
