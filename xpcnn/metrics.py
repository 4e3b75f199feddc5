"""Predictions and accuracy of a network: the one place that turns stored
images into class predictions and counts the correct ones.

Below ``models`` (it only asks the network for ``predict``, ``device``,
``dtype`` and ``input_dim``), so ``Sequential.accuracy`` and the Trainer share it.
"""

from __future__ import annotations

from typing import Any

from .backend import to_numpy
from .ops import softmax_cross_entropy_forward

__all__ = ["accuracy", "count_correct", "count_correct_and_loss", "predict_labels"]


def predict_labels(network: Any, x: Any, batch_size: int = 500) -> Any:
    """Predicted class labels (N,) on the network's device for inputs ``x``
    (host or device, integer pixels or floats, (N, *input_dim) or flat)."""
    dev = network.device
    x = dev.asarray(x)
    xp, N = dev.xp, x.shape[0]
    # predict scales integer pixels and reshapes flat rows (Sequential._input).
    with dev.activate():  # CuPy allocates on the current GPU, whatever device= says
        out = [
            xp.argmax(network.predict(x[i : min(i + batch_size, N), ...], keep_cache=False), axis=1)
            for i in range(0, N, batch_size)
        ]
        return xp.concat(out)


def count_correct(network: Any, x: Any, t: Any, batch_size: int = 500) -> int:
    """Number of examples of ``x`` (N, ...) whose predicted class is the label
    ``t`` ((N,) integers or (N, K) one-hot); 0 for an empty set. Summed as
    counts, so data-parallel shards add up exactly."""
    return count_correct_and_loss(network, x, t, batch_size, loss=False)[0]


def count_correct_and_loss(
    network: Any, x: Any, t: Any, batch_size: int = 500, *, loss: bool = True
) -> tuple[int, float]:
    """``(correct, summed loss)`` of ``x``, ``t`` as for :func:`count_correct`, in one
    pass: the cross-entropy of each example (inference mode: no dropout) summed on the
    host as a Python float, so that shards add up; 0.0 when ``loss`` is False or the
    set is empty."""
    N = x.shape[0]
    if N == 0:
        return 0, 0.0
    dev = network.device
    xp = dev.xp
    x, t = dev.asarray(x), dev.asarray(t)
    correct, losses = [], []
    with dev.activate():  # CuPy allocates on the current GPU, whatever device= says
        for i in range(0, N, batch_size):
            j = min(i + batch_size, N)
            scores, tb = network.predict(x[i:j, ...], keep_cache=False), t[i:j, ...]
            y = xp.argmax(scores, axis=1)
            labels = xp.argmax(tb, axis=1) if len(tb.shape) == 2 else xp.astype(tb, y.dtype)
            correct.append(xp.sum(xp.astype(y == labels, xp.int64)))
            if loss:  # the batch's mean times its size: a sum over examples
                losses.append(softmax_cross_entropy_forward(scores, tb)[0] * float(j - i))
        total = int(to_numpy(xp.sum(xp.stack(correct))))
        summed = sum(float(v) for v in to_numpy(xp.stack(losses))) if losses else 0.0
    return total, summed


def accuracy(network: Any, x: Any, t: Any, batch_size: int = 500) -> float:
    """Fraction of correctly classified examples, evaluated in batches."""
    if x.shape[0] == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return count_correct(network, x, t, batch_size) / x.shape[0]
