"""Feature maps: each layer's activations for one image (section 7.6.2)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from ._figure import (
    FEATURE_CELL_IN,
    FEATURE_LABEL_IN,
    TITLE_IN,
    as_image,
    done,
    new_figure,
    show,
    strip_leading_ones,
)

__all__ = ["plot_feature_maps"]


def plot_feature_maps(
    image: np.ndarray,
    maps: Sequence[tuple[str, np.ndarray]],
    path: str | os.PathLike[str] | None = None,
    *,
    max_channels: int = 16,
) -> Figure:
    """Show the input and each layer's activations, one row per layer.

    Args:
        image: the input (H, W) (or (1, H, W), (1, 1, H, W), (3, H, W)).
        maps: ``[(layer_name, activations), ...]`` with activations
            (C, H, W) or (1, C, H, W) for one image; (H, W) is one channel and
            a 1-D vector (e.g. an Affine output) is drawn as a 1 x D strip.
        path: PNG file to write (its folder must exist); None writes nothing.
        max_channels: at most this many channels per row (the first ones); a row
            that shows fewer than the layer has says so, e.g. "16 of 30 maps".

    Returns:
        The figure (also written to ``path`` when given). Size: width
        ``(cols + 1) * 100``, height ``(len(maps) + 1) * 100 + 50`` pixels, cols =
        the most channels shown in a row.
    """
    if max_channels < 1:
        raise ValueError(f"max_channels must be >= 1, got {max_channels}")
    layers: list[tuple[str, np.ndarray, tuple[int, ...]]] = []
    for name, act in maps:
        a = strip_leading_ones(act, 3)
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
    img = as_image(image, "image")
    cols = max([1] + [min(a.shape[0], max_channels) for _, a, _ in layers])
    rows = len(layers) + 1
    width = cols * FEATURE_CELL_IN + FEATURE_LABEL_IN
    height = rows * FEATURE_CELL_IN + TITLE_IN
    fig = new_figure(width, height)
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
    show(axes[0, 0], img)
    axes[0, 0].set_ylabel("input", fontsize=8)
    for r, (name, a, shape) in enumerate(layers, start=1):
        for ch in range(min(a.shape[0], max_channels)):
            ax = axes[r, ch]
            ax.set_axis_on()
            show(ax, a[ch])
            if len(shape) == 1:
                ax.set_aspect("auto")  # a vector: stretch the 1 x D strip over the cell
        label = f"{name}\n" + "x".join(str(n) for n in shape)
        if a.shape[0] > max_channels:
            label += f"\n{max_channels} of {a.shape[0]} maps"
        axes[r, 0].set_ylabel(label, fontsize=7)
    fig.suptitle("feature maps", y=1.0 - 0.08 / height, va="top", fontsize=10)
    return done(fig, path)
