"""Zarr readers: arrays and CSR groups (v2 and v3, local, zipped or at a URL) and
AnnData Zarr stores (the root means X; ``layers/NAME``; ``raw/X``).

The engine reads a Zarr array or CSR group by row panels itself
(:func:`dnmf._source.as_source`); this reader chooses the node, checks it, and finds
the names: an AnnData store's ``obs`` and ``var`` indexes, or those that
``dnmf convert`` recorded in the attributes of the array it wrote.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import DnmfError, InvalidInputError
from ._base import Engine, Source, register
from ._blocks import ArrayReader, CSRGroupReader, check_2d, numeric_dtype

__all__ = ["open_zarr_node"]


def _is_zarr(path: str) -> bool:
    """A URL, a ``*.zarr`` path or a directory holding Zarr metadata."""
    if "://" in path:
        return True
    stripped = path.rstrip("/")
    if stripped.endswith(".zarr") or ".zarr/" in stripped or stripped.endswith(".zarr.zip"):
        return True
    p = os.path.abspath(path)
    return os.path.isdir(p) and any(
        os.path.exists(os.path.join(p, name)) for name in ("zarr.json", ".zarray", ".zgroup"))


def open_zarr_node(path: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The Zarr array or group at ``path`` (a directory, a ``.zip`` or a URL)."""
    import zarr

    if path.endswith(".zip") and "://" not in path:
        return zarr.open(store=zarr.storage.ZipStore(path, mode="r"), mode="r")
    if "://" in path:
        from ._remote import open_remote

        return open_remote(path, storage_options)
    return zarr.open(store=path, mode="r")


def _names(node: Any) -> list[str] | None:
    """An AnnData data frame's index (``obs``, ``var``)."""
    if node is None or type(node).__name__ != "Group":
        return None
    key = node.attrs.get("_index", "_index")
    try:
        index = node[key]
    except KeyError:
        return None
    if type(index).__name__ != "Array":
        return None
    return [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(index[:])]


def _member(group: Any, key: str) -> Any:
    try:
        return group[key]
    except KeyError:
        return None


def _recorded(node: Any, key: str) -> list[str] | None:
    dnmf_attrs = node.attrs.get("dnmf") if hasattr(node, "attrs") else None
    names = dnmf_attrs.get(key) if isinstance(dnmf_attrs, dict) else None
    return [str(x) for x in names] if isinstance(names, list) else None


def _node_source(path: str, node: Any, name: str, fmt: str, location: str,
                 **extra: Any) -> Source:
    from .._source import _csr_group, is_csr_group

    extra.setdefault("obs", lambda: _recorded(node, "obs_names"))
    extra.setdefault("var", lambda: _recorded(node, "var_names"))
    if type(node).__name__ == "Group":
        if not is_csr_group(node):
            encoding = node.attrs.get("encoding-type")
            if encoding == "csc_matrix":
                raise InvalidInputError(
                    f"{name} is a CSC matrix (stored by columns), which is not read by row "
                    f"panels: store it as CSR (in Python: adata.X = adata.X.tocsr(), or "
                    f"dnmf.io.write_csr_zarr(matrix.tocsr(), path))."
                )
            raise InvalidInputError(
                f"{name} is a Zarr group, not a matrix (encoding-type {encoding!r}): give "
                f"the path of a Zarr array or of a CSR group."
            )
        csr = _csr_group(node, name)
        shape = check_2d(csr.shape, name)
        return Source(fmt, name, shape, numeric_dtype(csr.dtype, name), True, location,
                      lambda: node, blocks=lambda: CSRGroupReader(node, name), **extra)
    shape = check_2d(tuple(node.shape), name)
    dtype = numeric_dtype(node.dtype, name)
    return Source(fmt, name, shape, dtype, False, location, lambda: node,
                  blocks=lambda: ArrayReader(node, name, row_chunk=int(node.chunks[0])),
                  **extra)


def _anndata(path: str, root: Any, dataset: str | None, layer: str | None,
             raw: bool) -> Source:
    choices = [x for x in (dataset and "dataset", layer and "layer", raw and "raw") if x]
    if len(choices) > 1:
        raise InvalidInputError(
            f"give one of --dataset, --layer and --raw for {path}, not {' and '.join(choices)}."
        )
    key = (dataset or (f"layers/{layer}" if layer else "raw/X" if raw else "X")).strip("/")
    node = _member(root, key)
    if node is None:
        if key.startswith("layers/"):
            layers = _member(root, "layers")
            names = sorted(layers.keys()) if layers is not None else []
            have = f"its layers are {', '.join(names)}" if names else "it has no layers"
            raise InvalidInputError(
                f"{path} has no layer {key[len('layers/'):]!r}: {have}. Give one of them "
                f"(--layer NAME), or leave --layer out for X."
            )
        if key.startswith("raw"):
            raise InvalidInputError(f"{path} has no raw/X: leave --raw out to read X.")
        raise InvalidInputError(f"{path} has no {key!r} (an AnnData store without X?).")
    var_key = "raw/var" if key.startswith("raw/") else "var"
    location = path.rstrip("/") + "/" + key
    return _node_source(path, node, f"{path.rstrip('/')}/{key}", "anndata-zarr", location,
                        notes=[f"AnnData {key}"],
                        obs=lambda: _names(_member(root, "obs")),
                        var=lambda: _names(_member(root, var_key)))


def _matrices(group: Any) -> list[str]:
    """Members of a plain group that are matrices: 2-D arrays and sparse groups."""
    found = []
    for key, value in group.members():
        if type(value).__name__ == "Array" and len(value.shape) == 2:
            found.append(key)
        elif type(value).__name__ == "Group" and value.attrs.get("encoding-type") in (
                "csr_matrix", "csc_matrix"):
            found.append(key)
    return sorted(found)


def open_zarr(path: str, *, dataset: str | None = None, layer: str | None = None,
              raw: bool = False, storage_options: dict[str, Any] | None = None,
              **options: Any) -> Source:
    source = _open_zarr(path, dataset=dataset, layer=layer, raw=raw,
                        storage_options=storage_options)
    if "://" in path and storage_options:
        source.storage_options = dict(storage_options)
    return source


def _open_zarr(path: str, *, dataset: str | None = None, layer: str | None = None,
               raw: bool = False, storage_options: dict[str, Any] | None = None) -> Source:
    from .._source import is_csr_group

    remote = "://" in path
    if not remote:
        if not os.path.exists(path):
            raise InvalidInputError(
                f"no Zarr array at {path!r}: the path does not exist. Check the path, "
                f"or convert your data first with `dnmf convert SRC {path}`."
            )
        path = os.path.abspath(path)  # workers may run in another directory
        if dataset is None and ".zarr/" in path:
            # Inside an AnnData store: keep its names (obs, var) in view.
            root, inner = path.split(".zarr/", 1)
            try:
                top = open_zarr_node(root + ".zarr")
            except Exception:
                top = None
            if top is not None and type(top).__name__ == "Group" and \
                    top.attrs.get("encoding-type") == "anndata":
                return _anndata(root + ".zarr", top, inner, layer, bool(raw))
    try:
        node = open_zarr_node(path, storage_options)
    except DnmfError:
        raise
    except Exception as exc:  # zarr raises several types for "nothing readable here"
        raise InvalidInputError(
            f"cannot open {path!r} as Zarr ({type(exc).__name__}: {exc})."
        ) from None
    if type(node).__name__ == "Group" and node.attrs.get("encoding-type") == "anndata":
        return _anndata(path, node, dataset, layer, bool(raw))
    if layer or raw:
        raise InvalidInputError(
            f"{path} is not an AnnData store, so it has no layers or raw: leave out "
            f"--layer/--raw (and name the array with --dataset)."
        )
    location = path.rstrip("/")
    if dataset is not None:
        if type(node).__name__ != "Group":
            raise InvalidInputError(
                f"{path} is a Zarr array, not a group: leave out the dataset {dataset!r}."
            )
        sub = _member(node, dataset.strip("/"))
        if sub is None:
            raise InvalidInputError(f"{path} has no array {dataset!r}.")
        location = f"{location}/{dataset.strip('/')}"
        return _node_source(path, sub, location, "zarr", location)
    if type(node).__name__ == "Group" and not is_csr_group(node) and \
            node.attrs.get("encoding-type") != "csc_matrix":
        found = _matrices(node)
        if len(found) != 1:
            csr = [k for k in found if is_csr_group(node[k])]
            hint = (f" It has a CSR matrix member: give {path.rstrip('/')}/{csr[0]}."
                    if csr else "")
            raise InvalidInputError(
                f"{path} is a Zarr group with {len(found)} matrices "
                f"({', '.join(found) or 'none'}): name one with --dataset (or give "
                f"{path.rstrip('/')}/NAME).{hint}"
            )
        location = f"{location}/{found[0]}"
        return _node_source(path, node[found[0]], location, "zarr", location,
                            notes=[f"the group's one matrix, {found[0]!r}"])
    return _node_source(path, node, path, "zarr", location)


register(Engine("zarr", (".zarr", ".zarr.zip", ".zarr/", ".zip"), open_zarr, _is_zarr,
                options=("dataset", "layer", "raw")))
