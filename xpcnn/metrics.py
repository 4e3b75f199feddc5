"""Predictions and accuracy of a network: the one place that turns stored
images into class predictions and counts the correct ones.

Below ``models`` (it only asks the network for ``predict``, ``device``,
``dtype`` and ``input_dim``), so ``Sequential.accuracy`` and the Trainer share it.
"""

from __future__ import annotations

from typing import Any

from .backend import to_numpy

__all__ = ["accuracy", "count_correct", "predict_labels"]


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
    if x.shape[0] == 0:
        return 0
    dev = network.device
    xp = dev.xp
    y = predict_labels(network, x, batch_size)
    t = dev.asarray(t)
    if len(t.shape) == 2:
        t = xp.argmax(t, axis=1)
    return int(to_numpy(xp.sum(xp.astype(y == xp.astype(t, y.dtype), xp.int64))))


def accuracy(network: Any, x: Any, t: Any, batch_size: int = 500) -> float:
    """Fraction of correctly classified examples, evaluated in batches."""
    if x.shape[0] == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return count_correct(network, x, t, batch_size) / x.shape[0]
