"""Headless figures for chapter 7: filters, responses, feature maps, training.

Every function takes NumPy arrays (the caller moves data off the device with
``xpcnn.backend.to_numpy``), draws on a fresh :class:`matplotlib.figure.Figure`
with an Agg canvas — never ``pyplot`` and its global state, so this works with
no display and from several threads — writes a PNG and returns its ``Path``.

Figure sizes are fixed inches at :data:`DPI` (chosen as whole multiples of
1/4 inch so ``inches * DPI`` is an exact integer); the PNG's pixel size
therefore depends only on the layout (number of filters, layers, ...), never
on the data or on ``rcParams["savefig.*"]``. Each function documents its size.

The PNG is rendered into memory and then written to a temporary file next to
``path`` and renamed over it, so a reader never sees a half-written image.
The destination directory must exist.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.lib.stride_tricks import sliding_window_view

from ._atomic import atomic_write

__all__ = [
    "DPI",
    "confusion_matrix",
    "filter_responses",
    "plot_confusion_matrix",
    "plot_feature_maps",
    "plot_filter_responses",
    "plot_filters",
    "plot_history",
    "plot_misclassified",
]

#: Resolution of every PNG written here (pixels per inch).
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


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Render ``fig`` to PNG at its own size/dpi and write it atomically."""
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


def _minmax(a: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] over the finite values; a constant array maps to 0."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros_like(a)
    lo, hi = a[finite].min(), a[finite].max()
    if hi <= lo:
        return np.where(finite, 0.0, np.nan)
    return (a - lo) / (hi - lo)


def _strip_leading_ones(a: Any, ndim: int) -> np.ndarray:
    """``a`` without leading size-1 axes beyond ``ndim`` dimensions: (1, 1, H, W) -> (H, W)."""
    a = np.asarray(a)
    while a.ndim > ndim and a.shape[0] == 1:
        a = a[0]
    return a


def _as_image(img: Any, what: str = "image") -> np.ndarray:
    """One image as (H, W) or (H, W, 3), accepting (1, H, W), (3, H, W), flat squares."""
    a = np.asarray(img)
    a = _strip_leading_ones(a, 3 if a.ndim >= 3 and a.shape[-1] == 3 else 2)  # keep (H, W, 3)
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


def _show(ax: Axes, img: np.ndarray, cmap: str = "gray") -> None:
    """Min–max normalised image, nearest-neighbour pixels, no ticks."""
    ax.imshow(_minmax(img), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _labels(t: Any, what: str) -> np.ndarray:
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


def _label_text(k: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= k < len(class_names):
        return str(class_names[k])
    return str(k)


# ---------------------------------------------------------------------------
# filters (figure 7-24) and their responses (figure 7-25)
# ---------------------------------------------------------------------------


def plot_filters(
    W: np.ndarray,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    ncols: int = 8,
) -> Path:
    """Draw convolution filters in a grid (the book's ``filter_show``, fig. 7-24).

    Each filter is min–max normalised on its own, so training visibly changes
    the picture. With C == 3 the filter is drawn in RGB; otherwise its first
    channel is drawn with ``cmap="gray_r"`` (dark = large weight, as in the book).

    Args:
        W: float array (FN, C, FH, FW), e.g. ``params["W1"]`` of SimpleConvNet.
        path: PNG file to write (directory must exist).
        title: optional title above the grid.
        ncols: filters per row (fewer if FN < ncols).

    Returns:
        ``Path(path)``. Size in pixels: width ``min(ncols, FN) * 100``,
        height ``ceil(FN / cols) * 100`` (+ 50 with a title), at DPI 100.
    """
    W = np.asarray(W)
    if W.ndim != 4 or W.shape[0] == 0:
        raise ValueError(f"W must be (FN, C, FH, FW) with FN >= 1; got shape {W.shape}")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    fn, c = W.shape[:2]
    cols = min(ncols, fn)
    rows = math.ceil(fn / cols)
    top_in = TITLE_IN if title else 0.0
    height = rows * FILTER_CELL_IN + top_in
    fig = _new_figure(cols * FILTER_CELL_IN, height)
    fig.subplots_adjust(
        left=0.0, right=1.0, bottom=0.0, top=1.0 - top_in / height, hspace=0.05, wspace=0.05
    )
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= fn:
            ax.set_axis_off()
            continue
        if c == 3:
            _show(ax, np.moveaxis(W[i], 0, -1))  # RGB: cmap is ignored
        else:
            _show(ax, W[i, 0], cmap="gray_r")
    if title:
        fig.suptitle(title, y=1.0 - 0.1 / height, va="top")
    return _save(fig, path)


def filter_responses(
    image: np.ndarray,
    W: np.ndarray,
    filter_indices: Sequence[int] | None = None,
) -> np.ndarray:
    """Cross-correlate one image with filters ('valid', stride 1, no bias).

    This is what a Convolution layer computes for one image (before bias),
    done with ``sliding_window_view`` + ``tensordot`` (no per-pixel loops).

    Args:
        image: (H, W) (also (1, H, W) / (1, 1, H, W)) or (C, H, W) with the
            same C as ``W``. A single-channel image uses only channel 0 of
            each filter.
        W: filters (FN, C, FH, FW) or (FN, FH, FW).
        filter_indices: which filters (default: all).

    Returns:
        float64 array (n, H - FH + 1, W - FW + 1).
    """
    W = np.asarray(W, dtype=np.float64)
    if W.ndim == 3:
        W = W[:, None]
    if W.ndim != 4:
        raise ValueError(f"W must be (FN, C, FH, FW) or (FN, FH, FW); got shape {W.shape}")
    idx = np.arange(W.shape[0]) if filter_indices is None else np.asarray(filter_indices)
    if idx.ndim != 1 or (idx.size and (idx.min() < -W.shape[0] or idx.max() >= W.shape[0])):
        raise ValueError(f"filter_indices {list(idx)} out of range for {W.shape[0]} filters")
    x = _strip_leading_ones(np.asarray(image, dtype=np.float64), 3)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"image must be (H, W) or (C, H, W); got shape {np.shape(image)}")
    filt = W[idx]
    if x.shape[0] == 1:
        filt = filt[:, :1]
    elif x.shape[0] != W.shape[1]:
        raise ValueError(f"image has {x.shape[0]} channels but the filters have {W.shape[1]}")
    fh, fw = filt.shape[-2:]
    if x.shape[1] < fh or x.shape[2] < fw:
        raise ValueError(f"image {x.shape[1:]} is smaller than the filters ({fh}, {fw})")
    windows = sliding_window_view(x, (fh, fw), axis=(1, 2))  # (C, OH, OW, FH, FW), a view
    out = np.tensordot(windows, filt, axes=([0, 3, 4], [1, 2, 3]))  # (OH, OW, n)
    return np.moveaxis(out, -1, 0)


def plot_filter_responses(
    image: np.ndarray,
    W: np.ndarray,
    path: str | os.PathLike[str],
    *,
    filter_indices: Sequence[int] | None = None,
) -> Path:
    """Show an image, some filters and the image filtered by each (fig. 7-25).

    Top row: the input image, then each filter (``gray_r`` as in
    :func:`plot_filters`). Bottom row: each filter's response
    (:func:`filter_responses`, bright = strong response).

    Args:
        image: (H, W) (or (1, H, W), (C, H, W); see :func:`filter_responses`).
        W: filters (FN, C, FH, FW).
        path: PNG file to write.
        filter_indices: filters to show (default: the first 4).

    Returns:
        ``Path(path)``. Size: ``(n + 1) * 150`` x ``350`` pixels for n filters.
    """
    W = np.asarray(W)
    if W.ndim != 4 or W.shape[0] == 0:
        raise ValueError(f"W must be (FN, C, FH, FW) with FN >= 1; got shape {W.shape}")
    if filter_indices is None:
        filter_indices = list(range(min(4, W.shape[0])))
    idx = [int(i) for i in filter_indices]
    if not idx:
        raise ValueError("filter_indices is empty: nothing to plot")
    responses = filter_responses(image, W, idx)
    n = len(idx)
    width, height = (n + 1) * RESPONSE_CELL_IN, 2 * RESPONSE_CELL_IN + TITLE_IN
    fig = _new_figure(width, height)
    fig.subplots_adjust(
        left=0.02, right=0.98, bottom=0.02, top=1.0 - TITLE_IN / height, hspace=0.25, wspace=0.1
    )
    axes = fig.subplots(2, n + 1, squeeze=False)
    shown = _strip_leading_ones(image, 2)
    if shown.ndim == 3 and shown.shape[0] != 3:
        shown = shown[0]  # multi-channel input: show its first channel
    _show(axes[0, 0], _as_image(shown))
    axes[0, 0].set_title("input", fontsize=8)
    axes[1, 0].set_axis_off()
    for j, (i, resp) in enumerate(zip(idx, responses, strict=True), start=1):
        _show(axes[0, j], W[i, 0], cmap="gray_r")
        axes[0, j].set_title(f"filter {i}", fontsize=8)
        _show(axes[1, j], resp)
        axes[1, j].set_title(f"response {i}", fontsize=8)
    fig.suptitle("filters and their responses", y=1.0 - 0.08 / height, va="top", fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------------------
# feature maps (section 7.6.2)
# ---------------------------------------------------------------------------


def plot_feature_maps(
    image: np.ndarray,
    maps: Sequence[tuple[str, np.ndarray]],
    path: str | os.PathLike[str],
    *,
    max_channels: int = 16,
) -> Path:
    """Show the input and each layer's activations, one row per layer.

    Args:
        image: the input (H, W) (or (1, H, W), (1, 1, H, W), (3, H, W)).
        maps: ``[(layer_name, activations), ...]`` with activations
            (C, H, W) or (1, C, H, W) for one image; (H, W) is one channel and
            a 1-D vector (e.g. an Affine output) is drawn as a 1 x D strip.
        path: PNG file to write.
        max_channels: at most this many channels per row (the first ones); a row
            that shows fewer than the layer has says so, e.g. "16 of 30 maps".

    Returns:
        ``Path(path)``. Size: width ``(cols + 1) * 100``, height
        ``(len(maps) + 1) * 100 + 50`` pixels, cols = most channels shown in a row.
    """
    if max_channels < 1:
        raise ValueError(f"max_channels must be >= 1, got {max_channels}")
    layers: list[tuple[str, np.ndarray, tuple[int, ...]]] = []
    for name, act in maps:
        a = _strip_leading_ones(act, 3)
        shape = a.shape
        if a.ndim == 1:
            a = a[None, None, :]
        elif a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or a.shape[0] == 0:
            raise ValueError(
                f"feature map {name!r} must be (C, H, W) for one image; got shape {np.shape(act)}"
            )
        layers.append((str(name), a, shape))
    img = _as_image(image, "image")
    cols = max([1] + [min(a.shape[0], max_channels) for _, a, _ in layers])
    rows = len(layers) + 1
    width = cols * FEATURE_CELL_IN + FEATURE_LABEL_IN
    height = rows * FEATURE_CELL_IN + TITLE_IN
    fig = _new_figure(width, height)
    fig.subplots_adjust(
        left=FEATURE_LABEL_IN / width,
        right=1.0 - 0.05 / width,
        bottom=0.05 / height,
        top=1.0 - TITLE_IN / height,
        hspace=0.1,
        wspace=0.1,
    )
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].set_axis_on()
    _show(axes[0, 0], img)
    axes[0, 0].set_ylabel("input", fontsize=8)
    for r, (name, a, shape) in enumerate(layers, start=1):
        for ch in range(min(a.shape[0], max_channels)):
            ax = axes[r, ch]
            ax.set_axis_on()
            _show(ax, a[ch])
            if len(shape) == 1:
                ax.set_aspect("auto")  # a vector: stretch the 1 x D strip over the cell
        label = f"{name}\n" + "x".join(str(n) for n in shape)
        if a.shape[0] > max_channels:
            label += f"\n{max_channels} of {a.shape[0]} maps"
        axes[r, 0].set_ylabel(label, fontsize=7)
    fig.suptitle("feature maps", y=1.0 - 0.08 / height, va="top", fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------------------
# training curves
# ---------------------------------------------------------------------------


def _series(history: Mapping[str, Any], key: str) -> np.ndarray:
    v = history.get(key)
    if v is None:
        return np.zeros(0)
    return np.asarray(v, dtype=np.float64).reshape(-1)


def plot_history(history: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Plot the loss curve and train/test accuracy per epoch, side by side.

    Args:
        history: mapping with any of ``train_loss`` (per epoch or per step),
            ``test_loss`` (optional), ``train_acc`` and ``test_acc`` (per
            epoch): sequences of floats. Missing or empty keys are skipped.
            When there are more loss values than epochs, losses are placed at
            fractional epochs ``(i + 1) * epochs / len(loss)``.
        path: PNG file to write.

    Returns:
        ``Path(path)``. Size: 1000 x 400 pixels.

    Raises:
        ValueError: none of the keys has any value.
    """
    if not isinstance(history, Mapping):
        raise TypeError(f"history must be a mapping, got {type(history).__name__}")
    train_loss = _series(history, "train_loss")
    test_loss = _series(history, "test_loss")
    train_acc = _series(history, "train_acc")
    test_acc = _series(history, "test_acc")
    if not (train_loss.size or test_loss.size or train_acc.size or test_acc.size):
        raise ValueError(
            "history has nothing to plot: train_loss, train_acc and test_acc are all "
            f"missing or empty (keys present: {sorted(history)})"
        )
    epochs = max(train_acc.size, test_acc.size)

    fig = _new_figure(*HISTORY_SIZE_IN)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.9, wspace=0.25)
    ax_loss, ax_acc = fig.subplots(1, 2)

    def loss_x(n: int) -> np.ndarray:
        if epochs and n != epochs:
            return np.arange(1, n + 1) * (epochs / n)  # per-step values on the epoch axis
        return np.arange(1, n + 1, dtype=np.float64)

    if train_loss.size or test_loss.size:
        if train_loss.size:
            ax_loss.plot(loss_x(train_loss.size), train_loss, label="train", lw=1)
        if test_loss.size:
            ax_loss.plot(loss_x(test_loss.size), test_loss, label="test", lw=1.5)
        ax_loss.legend(loc="upper right")
        ax_loss.set_xlabel("epoch" if epochs else "step")
    else:
        ax_loss.text(0.5, 0.5, "no loss recorded", ha="center", va="center")
    ax_loss.set_title("loss")
    ax_loss.set_ylabel("loss")

    if train_acc.size or test_acc.size:
        if train_acc.size:
            ax_acc.plot(np.arange(1, train_acc.size + 1), train_acc, "o-", label="train", ms=3)
        if test_acc.size:
            ax_acc.plot(np.arange(1, test_acc.size + 1), test_acc, "s--", label="test", ms=3)
        accs = np.concatenate([train_acc, test_acc])
        if np.all((accs >= 0) & (accs <= 1)):
            ax_acc.set_ylim(0.0, 1.02)  # the book's fixed 0..1 scale
        ax_acc.legend(loc="lower right")
        ax_acc.set_xlabel("epoch")
        ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax_acc.text(0.5, 0.5, "no accuracy recorded", ha="center", va="center")
    ax_acc.set_title("accuracy")
    ax_acc.set_ylabel("accuracy")
    return _save(fig, path)


# ---------------------------------------------------------------------------
# errors: misclassified examples and the confusion matrix
# ---------------------------------------------------------------------------


def plot_misclassified(
    images: np.ndarray,
    t_true: np.ndarray,
    t_pred: np.ndarray,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    max_images: int = 25,
) -> Path:
    """Show the examples where ``t_pred != t_true``, each titled ``"true 7 / predicted 9"``
    (on two lines).

    Pass all evaluated images and labels; the wrong ones are selected here
    (the first ``max_images`` of them, in input order).

    Args:
        images: (N, H, W), (N, 1, H, W), (N, 3, H, W) or flat (N, H*W) squares.
        t_true: labels (N,) int, or one-hot (N, K).
        t_pred: predicted labels (N,) int, or scores (N, K) (argmax is taken).
        path: PNG file to write.
        class_names: optional names indexed by label.
        max_images: at most this many panels.

    Returns:
        ``Path(path)``. Size: 750 x ``(rows * 150 + 75)`` pixels with
        rows = ceil(shown / 5) (at least 1).
    """
    images = np.asarray(images)
    tt = _labels(t_true, "t_true")
    tp = _labels(t_pred, "t_pred")
    if not (len(images) == tt.size == tp.size):
        raise ValueError(
            f"images, t_true and t_pred must have the same length; got "
            f"{len(images)}, {tt.size}, {tp.size}"
        )
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    wrong = np.flatnonzero(tt != tp)
    shown = wrong[:max_images]
    cols = MISCLASSIFIED_COLS
    rows = max(1, math.ceil(shown.size / cols))
    width = cols * MISCLASSIFIED_CELL_IN
    height = rows * MISCLASSIFIED_CELL_IN + MISCLASSIFIED_TITLE_IN
    fig = _new_figure(width, height)
    fig.subplots_adjust(
        left=0.01,
        right=0.99,
        bottom=0.01,
        top=1.0 - MISCLASSIFIED_TITLE_IN / height,
        hspace=0.3,
        wspace=0.1,
    )
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, i in zip(axes.flat, shown, strict=False):
        ax.set_axis_on()
        _show(ax, _as_image(images[i], f"images[{i}]"))
        true, pred = _label_text(tt[i], class_names), _label_text(tp[i], class_names)
        ax.set_title(f"true {true}\npredicted {pred}", fontsize=8)
    header = f"misclassified: {wrong.size} of {tt.size}"
    if shown.size < wrong.size:
        header += f" (first {shown.size} shown)"
    if wrong.size == 0:
        axes[0, cols // 2].text(0.5, 0.5, "none", ha="center", va="center")
    fig.suptitle(header, y=1.0 - 0.08 / height, va="top", fontsize=10)
    return _save(fig, path)


def confusion_matrix(
    t_true: np.ndarray, t_pred: np.ndarray, num_classes: int | None = None
) -> np.ndarray:
    """Count matrix ``M[i, j]`` = number of examples of class i predicted as j.

    Args:
        t_true: labels (N,) of any integer dtype, or one-hot (N, K).
        t_pred: predicted labels (N,), or scores (N, K) (argmax is taken).
        num_classes: K; default ``max(labels) + 1`` (0 for empty input).

    Returns:
        int64 array (K, K); rows are true classes, columns predictions.

    Raises:
        ValueError: lengths differ, negative labels, or labels >= num_classes.
    """
    tt = _labels(t_true, "t_true")
    tp = _labels(t_pred, "t_pred")
    if tt.size != tp.size:
        raise ValueError(f"t_true and t_pred differ in length: {tt.size} vs {tp.size}")
    if tt.size and min(tt.min(), tp.min()) < 0:
        raise ValueError("class labels must be >= 0")
    top = int(max(tt.max(), tp.max())) + 1 if tt.size else 0
    k = top if num_classes is None else int(num_classes)
    if top > k:
        raise ValueError(f"label {top - 1} is out of range for num_classes={k}")
    # One bincount over the flattened (true, pred) index: no Python loop.
    return np.bincount(tt * k + tp, minlength=k * k).reshape(k, k).astype(np.int64)


def plot_confusion_matrix(
    t_true: np.ndarray,
    t_pred: np.ndarray,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Draw the confusion matrix (counts, annotated when K <= 30).

    Args:
        t_true: labels (N,) or one-hot (N, K).
        t_pred: predicted labels (N,) or scores (N, K).
        path: PNG file to write.
        class_names: names for the K classes (K = len(class_names)); default
            K = max label + 1 and the labels as names.

    Returns:
        ``Path(path)``. Size: 650 x 600 pixels.
    """
    k = None if class_names is None else len(class_names)
    cm = confusion_matrix(t_true, t_pred, k)
    k = cm.shape[0]
    if k == 0:
        raise ValueError("no labels: nothing to plot")
    names = [_label_text(i, class_names) for i in range(k)]
    total = int(cm.sum())
    acc = np.trace(cm) / total if total else float("nan")

    fig = _new_figure(*CONFUSION_SIZE_IN)
    fig.subplots_adjust(left=0.12, right=0.88, bottom=0.12, top=0.92)
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues", vmin=0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(k)
    step = max(1, math.ceil(k / CONFUSION_ANNOTATE_MAX))  # keep tick labels legible
    ax.set_xticks(ticks[::step], [names[i] for i in ticks[::step]], rotation=90 if k > 10 else 0)
    ax.set_yticks(ticks[::step], [names[i] for i in ticks[::step]])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (N={total}, accuracy {acc:.4f})", fontsize=10)
    if k <= CONFUSION_ANNOTATE_MAX:
        threshold = cm.max() / 2.0
        fontsize = 8 if k <= 12 else 6
        for (i, j), v in np.ndenumerate(cm):
            color = "white" if v > threshold else "black"
            ax.text(j, i, str(v), ha="center", va="center", color=color, fontsize=fontsize)
    return _save(fig, path)
