"""Predictions and accuracy of a network: the one place that turns stored
images into network input and counts correct predictions.

Below ``models`` (it only asks the network for ``predict``, ``device``,
``dtype`` and ``input_dim``), so ``Sequential.accuracy`` and the Trainer share it.
"""

from __future__ import annotations

from typing import Any

from .backend import Device, to_numpy

__all__ = ["accuracy", "as_input", "count_correct", "predict_labels"]


def as_input(x: Any, dtype: Any) -> Any:
    """A batch as network input: integer images (uint8 pixels) become
    ``dtype`` in [0, 1]; float arrays are cast to ``dtype`` if needed."""
    xp = Device.of(x).xp
    if xp.isdtype(x.dtype, "integral"):
        return xp.astype(x, dtype) / 255.0
    return x if x.dtype == dtype else xp.astype(x, dtype)


def predict_labels(network: Any, x: Any, batch_size: int = 500) -> Any:
    """Predicted class labels (N,) on the network's device for inputs ``x``
    (host or device, integer pixels or floats, (N, *input_dim) or flat)."""
    dev = network.device
    x = dev.asarray(x)
    xp, N = dev.xp, x.shape[0]
    shape = (-1, *network.input_dim)
    with dev.activate():  # CuPy allocates on the current GPU, whatever device= says
        out = [
            xp.argmax(
                network.predict(
                    as_input(xp.reshape(x[i : min(i + batch_size, N), ...], shape), network.dtype),
                    keep_cache=False,
                ),
                axis=1,
            )
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
