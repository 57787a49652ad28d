"""Pictures of a run: the loss curve and the basis images of W or H.

Matplotlib is an optional extra (``pip install 'dnmf[plot]'``), imported only when a
picture is drawn; without it :func:`require_matplotlib` says how to get it. The
basis grid can also be written without Matplotlib (:func:`write_png_grid`, plain
NumPy and zlib), so that ``dnmf demo`` draws its picture on a bare install. Files are
written under a temporary name and renamed, so a failed plot never leaves half a
picture in place of an old one. This module draws; it reads nothing from run stores.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DnmfError, InvalidParameterError, StoreError

__all__ = [
    "basis_figure",
    "basis_images",
    "loss_figure",
    "parse_image_shape",
    "rank_figure",
    "require_matplotlib",
    "save_figure",
    "write_png_grid",
]

#: The colour map of basis images: parts dark on white.
CMAP = "gray_r"


def require_matplotlib() -> Any:
    """The ``matplotlib`` module, or a one-line error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise DnmfError(
            "plotting needs matplotlib, which is not installed: pip install 'dnmf[plot]'."
        ) from None
    return matplotlib


def parse_image_shape(text: str) -> tuple[int, int]:
    """``"32x32"`` → ``(32, 32)`` (height × width)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise InvalidParameterError(
            f"--image-shape must look like HEIGHTxWIDTH, e.g. 32x32, got {text!r}."
        ) from None
    if h < 1 or w < 1:
        raise InvalidParameterError(f"--image-shape must be positive, got {text!r}.")
    return h, w


def basis_images(factor: np.ndarray, of: str, image_shape: tuple[int, int] | None) -> np.ndarray:
    """The k basis vectors of ``factor`` as images of shape (k, height, width).

    ``of="H"``: the rows of H (k × m) are images of m pixels. ``of="W"``: the
    columns of W (n × k) are images of n pixels. Without ``image_shape`` a square
    image is assumed.
    """
    vectors = np.asarray(factor if of == "H" else np.asarray(factor).T, dtype=np.float64)
    size = vectors.shape[1]
    if image_shape is None:
        side = math.isqrt(size)
        if side * side != size:
            raise InvalidParameterError(
                f"the basis vectors of {of} have {size} values, not a square number: "
                f"give --image-shape HEIGHTxWIDTH."
            )
        image_shape = (side, side)
    h, w = image_shape
    if h * w != size:
        raise InvalidParameterError(
            f"--image-shape {h}x{w} has {h * w} pixels, but the basis vectors of {of} "
            f"have {size} values."
        )
    return vectors.reshape(len(vectors), h, w)


def _grid(k: int, columns: int | None) -> tuple[int, int]:
    cols = columns or max(1, math.ceil(math.sqrt(k)))
    return math.ceil(k / cols), cols


def loss_figure(history: list[float], *, title: str = "", steps: list[int] | None = None,
                xlabel: str = "iteration", ylabel: str = "loss") -> Any:
    """The loss per iteration (or at ``steps``) on a log scale."""
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    iterations = (np.arange(1, len(history) + 1) if steps is None
                  else np.asarray(steps, dtype=np.int64))
    values = np.asarray(history, dtype=np.float64)
    positive = values > 0
    ax.plot(iterations[positive], values[positive], marker="." if len(history) < 50 else None)
    if positive.any():
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if title:
        ax.set_title(title)
    return fig


def top_figure(H: np.ndarray, names: list[str] | None, n: int, *,
               columns: int | None = None, title: str = "") -> Any:
    """Per component, a bar chart of its ``n`` largest entries of H, labelled with the
    feature names (column numbers when the data has none)."""
    require_matplotlib()
    from matplotlib.figure import Figure

    k = H.shape[0]
    rows, cols = _grid(k, columns or min(k, 4))
    n = min(n, H.shape[1])
    fig = Figure(figsize=(3.2 * cols, 0.28 * n * rows + 1.0 * rows), layout="constrained")
    order = np.argsort(-H, axis=1, kind="stable")[:, :n]
    for i in range(k):
        ax = fig.add_subplot(rows, cols, i + 1)
        idx = order[i][::-1]
        labels = [names[j] if names is not None else str(j) for j in idx]
        ax.barh(range(n), H[i, idx])
        ax.set_yticks(range(n), labels, fontsize=8)
        ax.set_title(f"component {i}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    if title:
        fig.suptitle(title)
    return fig


def basis_figure(images: np.ndarray, *, columns: int | None = None, title: str = "") -> Any:
    """A grid of basis images, each scaled to its own maximum."""
    require_matplotlib()
    from matplotlib.figure import Figure

    k = len(images)
    rows, cols = _grid(k, columns)
    h, w = images.shape[1:]
    cell = 1.4
    fig = Figure(figsize=(cols * cell * max(w / h, 0.5), rows * cell + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i < k:
            top = images[i].max()
            ax.imshow(images[i], cmap=CMAP, vmin=0, vmax=top if top > 0 else 1,
                      interpolation="nearest")
            ax.set_title(str(i), fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def rank_figure(selection: Any, *, title: str = "") -> Any:
    """The rank plot of a :class:`~dnmf.RankSelection`: the criterion against k.

    cv: each replicate's test error (dots), their mean with one standard error
    (line and bars). consensus: cophenetic correlation and component stability,
    with the stability threshold. The chosen k is marked.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    summary = selection.summary_rows
    ks = np.array([row["k"] for row in summary])
    if selection.method == "cv":
        rows = selection.rows
        ax.plot([r["k"] for r in rows], [r["test_error"] for r in rows], ".",
                color="0.6", label="replicates")
        ax.errorbar(ks, [row["test_error"] for row in summary],
                    yerr=[row["test_error_se"] for row in summary], marker="o",
                    capsize=3, label="mean ± 1 s.e.")
        ax.set_ylabel("test error (mean loss per held-out entry)")
        values = [r["test_error"] for r in rows]
        if min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
    else:
        ax.plot(ks, [row["cophenetic"] for row in summary], marker="o",
                label="cophenetic correlation")
        ax.plot(ks, [row["stability"] for row in summary], marker="s",
                label="component stability (silhouette)")
        if selection.threshold is not None:
            ax.axhline(selection.threshold, color="0.6", linestyle=":", linewidth=1,
                       label=f"threshold {selection.threshold:g}")
        ax.set_ylabel("agreement of restarts")
    ax.axvline(selection.k, color="C3", linestyle="--", linewidth=1,
               label=f"chosen k = {selection.k} ({selection.rule})")
    ax.set_xlabel("k (number of components)")
    ax.set_xticks(ks if len(ks) <= 20 else ks[:: math.ceil(len(ks) / 20)])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"Choosing k by {selection.method}")
    return fig


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` to ``path`` (format from the suffix), replacing it only when done."""
    target = Path(path)
    fmt = target.suffix.lower().lstrip(".")
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise InvalidParameterError(
            f"cannot draw {str(target)!r}: the file name must end in one of "
            f"{', '.join('.' + f for f in sorted(supported))}."
        )
    folder = target.parent
    if not folder.is_dir():
        raise StoreError(
            f"cannot write {str(target)!r}: the directory {str(folder)!r} does not exist; "
            f"create it first or choose another file."
        )
    tmp = _temporary(target)
    try:
        fig.savefig(tmp, format=fmt, dpi=120)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write {str(target)!r}: {exc.strerror or exc}.") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_png_grid(images: np.ndarray, path: str | os.PathLike[str], *,
                   columns: int | None = None, scale: int = 4) -> None:
    """A grid of images as an 8-bit greyscale PNG, parts dark on white, no Matplotlib."""
    k, h, w = images.shape
    rows, cols = _grid(k, columns)
    gap = max(1, scale)
    height = rows * h * scale + (rows + 1) * gap
    width = cols * w * scale + (cols + 1) * gap
    canvas = np.full((height, width), 255, dtype=np.uint8)
    for i in range(k):
        top = images[i].max()
        img = images[i] / top if top > 0 else np.zeros_like(images[i])
        pixels = (255 - np.clip(img, 0, 1) * 255).round().astype(np.uint8)
        pixels = np.kron(pixels, np.ones((scale, scale), dtype=np.uint8))
        r, c = divmod(i, cols)
        y, x = gap + r * (h * scale + gap), gap + c * (w * scale + gap)
        canvas[y : y + h * scale, x : x + w * scale] = pixels

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + canvas[y].tobytes() for y in range(height))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    target = Path(path)
    tmp = _temporary(target)
    try:
        tmp.write_bytes(png)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
