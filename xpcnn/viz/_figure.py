"""What every figure of :mod:`xpcnn.viz` shares: a fresh Agg figure of a fixed size,
the atomic PNG write, and the small array helpers (min-max scaling, image shapes,
labels).

Figures are drawn on a :class:`matplotlib.figure.Figure` with its own Agg canvas,
never through ``pyplot`` and its global state, so drawing works with no display
and from several threads.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._atomic import atomic_write

__all__ = [
    "DPI",
    "as_image",
    "done",
    "label_text",
    "labels",
    "minmax",
    "new_figure",
    "save_figure",
    "show",
    "strip_leading_ones",
]

#: Resolution of every figure (pixels per inch).
DPI = 100

# Layout constants in inches (multiples of 1/4 so that inches * DPI is exact).
FILTER_CELL_IN = 1.0
TITLE_IN = 0.5
RESPONSE_CELL_IN = 1.5
FEATURE_CELL_IN = 1.0
FEATURE_LABEL_IN = 1.0
HISTORY_SIZE_IN = (10.0, 4.0)
MISCLASSIFIED_COLS = 5
MISCLASSIFIED_CELL_IN = 1.5
MISCLASSIFIED_TITLE_IN = 0.75  # the header plus the first row's two-line titles
CONFUSION_SIZE_IN = (6.5, 6.0)
CONFUSION_ANNOTATE_MAX = 30  # more classes than this: cells too small for numbers


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG of exactly its own size (inches x dpi), atomically:
    rendered in memory, written to a temporary file beside ``path`` and renamed
    over it, so a reader never sees a half-written image. Returns ``Path(path)``.

    Raises FileNotFoundError, naming the folder, when ``path``'s folder does not exist.
    """
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(
            f"cannot write figure {path}: directory {directory} does not exist; "
            "create it first or choose another path"
        )
    buf = io.BytesIO()
    # print_png renders at figure.dpi with no bbox cropping; savefig would
    # consult rcParams["savefig.bbox"/"savefig.dpi"] and could change the size.
    FigureCanvasAgg(fig).print_png(buf)  # fig.canvas is typed as the base class
    with atomic_write(path, mode=0o644) as f:
        f.write(buf.getvalue())
    return path


def done(fig: Figure, path: str | os.PathLike[str] | None) -> Figure:
    """The figure, written to ``path`` first when one is given."""
    if path is not None:
        save_figure(fig, path)
    return fig


def new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def minmax(a: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] over the finite values; a constant array maps to 0."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros_like(a)
    lo, hi = a[finite].min(), a[finite].max()
    if hi <= lo:
        return np.where(finite, 0.0, np.nan)
    return (a - lo) / (hi - lo)


def strip_leading_ones(a: Any, ndim: int) -> np.ndarray:
    """``a`` without leading size-1 axes beyond ``ndim`` dimensions: (1, 1, H, W) -> (H, W)."""
    a = np.asarray(a)
    while a.ndim > ndim and a.shape[0] == 1:
        a = a[0]
    return a


def as_image(img: Any, what: str = "image") -> np.ndarray:
    """One image as (H, W) or (H, W, 3), accepting (1, H, W), (3, H, W), flat squares."""
    a = np.asarray(img)
    a = strip_leading_ones(a, 3 if a.ndim >= 3 and a.shape[-1] == 3 else 2)  # keep (H, W, 3)
    if a.ndim == 1:
        side = math.isqrt(a.size)
        if side * side != a.size or a.size == 0:
            raise ValueError(f"{what} is flat with {a.size} values, which is not a square image")
        a = a.reshape(side, side)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = np.moveaxis(a, 0, -1)  # (3, H, W) -> (H, W, 3)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)):
        raise ValueError(
            f"{what} must be (H, W), (1, H, W), (3, H, W) or (H, W, 3); got shape {a.shape}"
        )
    return a


def show(ax: Axes, img: np.ndarray, cmap: str = "gray") -> None:
    """Min–max normalised image, nearest-neighbour pixels, no ticks."""
    ax.imshow(minmax(img), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def labels(t: Any, what: str) -> np.ndarray:
    """Integer class labels (N,) from labels or one-hot/score rows (N, K)."""
    a = np.asarray(t)
    if a.ndim == 2:
        a = np.argmax(a, axis=1)
    if a.ndim != 1:
        raise ValueError(f"{what} must be labels (N,) or one-hot (N, K); got shape {a.shape}")
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        return a.astype(np.int64)
    raise ValueError(f"{what} must hold integer class labels; got dtype {a.dtype}")


def label_text(k: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= k < len(class_names):
        return str(class_names[k])
    return str(k)
