"""Where a classifier errs: misclassified examples and the confusion matrix."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from ._figure import (
    CONFUSION_ANNOTATE_MAX,
    CONFUSION_SIZE_IN,
    MISCLASSIFIED_CELL_IN,
    MISCLASSIFIED_COLS,
    MISCLASSIFIED_TITLE_IN,
    as_image,
    done,
    label_text,
    labels,
    new_figure,
    show,
)

__all__ = ["confusion_matrix", "plot_confusion_matrix", "plot_misclassified"]


def plot_misclassified(
    images: np.ndarray,
    t_true: np.ndarray,
    t_pred: np.ndarray,
    path: str | os.PathLike[str] | None = None,
    *,
    class_names: Sequence[str] | None = None,
    max_images: int = 25,
) -> Figure:
    """Show the examples where ``t_pred != t_true``, each titled ``"true 7 / predicted 9"``
    (on two lines).

    Pass all evaluated images and labels; the wrong ones are selected here
    (the first ``max_images`` of them, in input order).

    Args:
        images: (N, H, W), (N, 1, H, W), (N, 3, H, W) or flat (N, H*W) squares.
        t_true: labels (N,) int, or one-hot (N, K).
        t_pred: predicted labels (N,) int, or scores (N, K) (argmax is taken).
        path: PNG file to write (its folder must exist); None writes nothing.
        class_names: optional names indexed by label.
        max_images: at most this many panels.

    Returns:
        The figure (also written to ``path`` when given). Size: 750 x
        ``(rows * 150 + 75)`` pixels with rows = ceil(shown / 5) (at least 1).
    """
    images = np.asarray(images)
    tt = labels(t_true, "t_true")
    tp = labels(t_pred, "t_pred")
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
    fig = new_figure(width, height)
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
        show(ax, as_image(images[i], f"images[{i}]"))
        true, pred = label_text(tt[i], class_names), label_text(tp[i], class_names)
        ax.set_title(f"true {true}\npredicted {pred}", fontsize=8)
    header = f"misclassified: {wrong.size} of {tt.size}"
    if shown.size < wrong.size:
        header += f" (first {shown.size} shown)"
    if wrong.size == 0:
        axes[0, cols // 2].text(0.5, 0.5, "none", ha="center", va="center")
    fig.suptitle(header, y=1.0 - 0.08 / height, va="top", fontsize=10)
    return done(fig, path)


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
    tt = labels(t_true, "t_true")
    tp = labels(t_pred, "t_pred")
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
    path: str | os.PathLike[str] | None = None,
    *,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Draw the confusion matrix (counts, annotated when K <= 30).

    Args:
        t_true: labels (N,) or one-hot (N, K).
        t_pred: predicted labels (N,) or scores (N, K).
        path: PNG file to write (its folder must exist); None writes nothing.
        class_names: names for the K classes (K = len(class_names)); default
            K = max label + 1 and the labels as names.

    Returns:
        The figure (also written to ``path`` when given). Size: 650 x 600 pixels.
    """
    k = None if class_names is None else len(class_names)
    cm = confusion_matrix(t_true, t_pred, k)
    k = cm.shape[0]
    if k == 0:
        raise ValueError("no labels: nothing to plot")
    names = [label_text(i, class_names) for i in range(k)]
    total = int(cm.sum())
    acc = np.trace(cm) / total if total else float("nan")

    fig = new_figure(*CONFUSION_SIZE_IN)
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
    return done(fig, path)
