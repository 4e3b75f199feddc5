"""Training curves: the loss and the accuracies of a run's history."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ._figure import HISTORY_SIZE_IN, done, new_figure

__all__ = ["plot_history"]


def _series(history: Mapping[str, Any], key: str) -> np.ndarray:
    v = history.get(key)
    if v is None:
        return np.zeros(0)
    return np.asarray(v, dtype=np.float64).reshape(-1)


def plot_history(history: Mapping[str, Any], path: str | os.PathLike[str] | None = None) -> Figure:
    """Plot the loss curves and train/validation/test accuracy per epoch, side by side.

    Args:
        history: mapping with any of ``train_loss`` (per epoch or per step),
            ``val_loss`` and ``test_loss`` (optional), ``train_acc``, ``val_acc``
            and ``test_acc`` (per epoch): sequences of floats. Missing or empty
            keys are skipped.
            When there are more loss values than epochs, losses are placed at
            fractional epochs ``(i + 1) * epochs / len(loss)``.
        path: PNG file to write (its folder must exist); None writes nothing.

    Returns:
        The figure (also written to ``path`` when given). Size: 1000 x 400 pixels.

    Raises:
        ValueError: none of the keys has any value.
    """
    if not isinstance(history, Mapping):
        raise TypeError(f"history must be a mapping, got {type(history).__name__}")
    train_loss = _series(history, "train_loss")
    val_loss = _series(history, "val_loss")
    test_loss = _series(history, "test_loss")
    train_acc = _series(history, "train_acc")
    val_acc = _series(history, "val_acc")
    test_acc = _series(history, "test_acc")
    if not (train_loss.size or test_loss.size or train_acc.size or test_acc.size or val_acc.size):
        raise ValueError(
            "history has nothing to plot: train_loss, train_acc and test_acc are all "
            f"missing or empty (keys present: {sorted(history)})"
        )
    epochs = max(train_acc.size, val_acc.size, test_acc.size)

    fig = new_figure(*HISTORY_SIZE_IN)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.9, wspace=0.25)
    ax_loss, ax_acc = fig.subplots(1, 2)

    def loss_x(n: int) -> np.ndarray:
        if epochs and n != epochs:
            return np.arange(1, n + 1) * (epochs / n)  # per-step values on the epoch axis
        return np.arange(1, n + 1, dtype=np.float64)

    if train_loss.size or val_loss.size or test_loss.size:
        if train_loss.size:
            ax_loss.plot(loss_x(train_loss.size), train_loss, label="train", lw=1)
        if val_loss.size:
            ax_loss.plot(loss_x(val_loss.size), val_loss, "^-", label="validation", ms=3)
        if test_loss.size:
            ax_loss.plot(loss_x(test_loss.size), test_loss, label="test", lw=1.5)
        ax_loss.legend(loc="upper right")
        ax_loss.set_xlabel("epoch" if epochs else "step")
    else:
        ax_loss.text(0.5, 0.5, "no loss recorded", ha="center", va="center")
    ax_loss.set_title("loss")
    ax_loss.set_ylabel("loss")

    if train_acc.size or val_acc.size or test_acc.size:
        if train_acc.size:
            ax_acc.plot(np.arange(1, train_acc.size + 1), train_acc, "o-", label="train", ms=3)
        if val_acc.size:
            ax_acc.plot(np.arange(1, val_acc.size + 1), val_acc, "^-", label="validation", ms=3)
        if test_acc.size:
            ax_acc.plot(np.arange(1, test_acc.size + 1), test_acc, "s--", label="test", ms=3)
        accs = np.concatenate([train_acc, val_acc, test_acc])
        if np.all((accs >= 0) & (accs <= 1)):
            ax_acc.set_ylim(0.0, 1.02)  # the book's fixed 0..1 scale
        ax_acc.legend(loc="lower right")
        ax_acc.set_xlabel("epoch")
        ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax_acc.text(0.5, 0.5, "no accuracy recorded", ha="center", va="center")
    ax_acc.set_title("accuracy")
    ax_acc.set_ylabel("accuracy")
    return done(fig, path)
