"""Convolution filters (the book's figure 7-24) and what they respond to (figure 7-25)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from numpy.lib.stride_tricks import sliding_window_view

from ._figure import (
    FILTER_CELL_IN,
    RESPONSE_CELL_IN,
    TITLE_IN,
    as_image,
    done,
    new_figure,
    show,
    strip_leading_ones,
)

__all__ = ["filter_responses", "plot_filter_responses", "plot_filters"]


def plot_filters(
    W: np.ndarray,
    path: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    ncols: int = 8,
) -> Figure:
    """Draw convolution filters in a grid (the book's ``filter_show``, fig. 7-24).

    Each filter is min–max normalised on its own, so training visibly changes
    the picture. With C == 3 the filter is drawn in RGB; otherwise its first
    channel is drawn with ``cmap="gray_r"`` (dark = large weight, as in the book).

    Args:
        W: float array (FN, C, FH, FW), e.g. ``params["W1"]`` of SimpleConvNet.
        path: PNG file to write (its folder must exist); None writes nothing.
        title: optional title above the grid.
        ncols: filters per row (fewer if FN < ncols).

    Returns:
        The figure (also written to ``path`` when given). Size in pixels:
        width ``min(ncols, FN) * 100``, height ``ceil(FN / cols) * 100`` (+ 50 with a
        title), at DPI 100.
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
    fig = new_figure(cols * FILTER_CELL_IN, height)
    fig.subplots_adjust(
        left=0.0, right=1.0, bottom=0.0, top=1.0 - top_in / height, hspace=0.05, wspace=0.05
    )
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= fn:
            ax.set_axis_off()
            continue
        if c == 3:
            show(ax, np.moveaxis(W[i], 0, -1))  # RGB: cmap is ignored
        else:
            show(ax, W[i, 0], cmap="gray_r")
    if title:
        fig.suptitle(title, y=1.0 - 0.1 / height, va="top")
    return done(fig, path)


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
    x = strip_leading_ones(np.asarray(image, dtype=np.float64), 3)
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
    path: str | os.PathLike[str] | None = None,
    *,
    filter_indices: Sequence[int] | None = None,
) -> Figure:
    """Show an image, some filters and the image filtered by each (fig. 7-25).

    Top row: the input image, then each filter (``gray_r`` as in
    :func:`plot_filters`). Bottom row: each filter's response
    (:func:`filter_responses`, bright = strong response).

    Args:
        image: (H, W) (or (1, H, W), (C, H, W); see :func:`filter_responses`).
        W: filters (FN, C, FH, FW).
        path: PNG file to write (its folder must exist); None writes nothing.
        filter_indices: filters to show (default: the first 4).

    Returns:
        The figure (also written to ``path`` when given). Size: ``(n + 1) * 150``
        x ``350`` pixels for n filters.
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
    fig = new_figure(width, height)
    fig.subplots_adjust(
        left=0.02, right=0.98, bottom=0.02, top=1.0 - TITLE_IN / height, hspace=0.25, wspace=0.1
    )
    axes = fig.subplots(2, n + 1, squeeze=False)
    shown = strip_leading_ones(image, 2)
    if shown.ndim == 3 and shown.shape[0] != 3:
        shown = shown[0]  # multi-channel input: show its first channel
    show(axes[0, 0], as_image(shown))
    axes[0, 0].set_title("input", fontsize=8)
    axes[1, 0].set_axis_off()
    for j, (i, resp) in enumerate(zip(idx, responses, strict=True), start=1):
        show(axes[0, j], W[i, 0], cmap="gray_r")
        axes[0, j].set_title(f"filter {i}", fontsize=8)
        show(axes[1, j], resp)
        axes[1, j].set_title(f"response {i}", fontsize=8)
    fig.suptitle("filters and their responses", y=1.0 - 0.08 / height, va="top", fontsize=10)
    return done(fig, path)
