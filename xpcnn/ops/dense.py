"""Affine, activations, softmax and cross-entropy."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from array_api_compat import array_namespace, device

from .. import _fast
from .._checks import check_floating

__all__ = [
    "AffineCache",
    "ReluCache",
    "SigmoidCache",
    "SoftmaxCrossEntropyCache",
    "TanhCache",
    "affine_forward",
    "cross_entropy_error",
    "relu_forward",
    "sigmoid_forward",
    "softmax",
    "softmax_cross_entropy_forward",
    "tanh_forward",
]


class AffineCache(NamedTuple):
    """The input flattened to (N, D), its original shape, and ``W`` (D, M)."""

    x2: Any
    x_shape: tuple[int, ...]
    W: Any

    def backward(self, dout: Any) -> tuple[Any, Any, Any]:
        """``dout`` (N, M) -> ``(dx, dW, db)``: dx of the input's shape, dW (D, M), db (M,)."""
        xp = array_namespace(dout)
        dx = xp.reshape(dout @ xp.matrix_transpose(self.W), self.x_shape)
        dW = xp.matrix_transpose(self.x2) @ dout
        db = xp.sum(dout, axis=0)
        return dx, dW, db


def affine_forward(x: Any, W: Any, b: Any) -> tuple[Any, AffineCache]:
    """``x @ W + b`` with ``x`` (N, ...) flattened to (N, D) like the book's Affine.

    W : (D, M), b : (M,) -> out : (N, M), dtype of ``x``; cache : AffineCache
    """
    xp = array_namespace(x, W, b)
    check_floating(x, "affine")
    N = x.shape[0]
    D = math.prod(x.shape[1:])
    if len(W.shape) != 2 or W.shape[0] != D:
        raise ValueError(
            f"affine: input of shape {tuple(x.shape)} flattens to {D} features but W has shape "
            f"{tuple(W.shape)} (expected ({D}, M))"
        )
    if tuple(b.shape) != (W.shape[1],):
        raise ValueError(f"affine: bias must have shape ({W.shape[1]},), got {tuple(b.shape)}")
    x2 = xp.reshape(x, (N, D))
    return x2 @ W + b, AffineCache(x2, tuple(x.shape), W)


class ReluCache(NamedTuple):
    """The boolean mask ``x > 0`` (shape of x)."""

    mask: Any

    def backward(self, dout: Any) -> Any:
        """``dx``, a new array (``dout`` is not modified, unlike the book)."""
        fast = _fast.lookup("relu_backward", dout)
        if fast is not None:
            return fast(dout, self.mask)
        xp = array_namespace(dout)
        return xp.where(self.mask, dout, xp.zeros((), dtype=dout.dtype, device=device(dout)))


def relu_forward(x: Any) -> tuple[Any, ReluCache]:
    """ReLU: ``out`` of x's shape and dtype, and the mask ``x > 0`` for the backward pass."""
    fast = _fast.lookup("relu_forward", x)
    if fast is not None:
        out, mask = fast(x)
        return out, ReluCache(mask)
    xp = array_namespace(x)
    mask = x > 0
    return xp.where(mask, x, xp.zeros((), dtype=x.dtype, device=device(x))), ReluCache(mask)


class SigmoidCache(NamedTuple):
    """The forward output ``out`` (the derivative needs only it)."""

    out: Any

    def backward(self, dout: Any) -> Any:
        """``dout * (1 - out) * out``."""
        return dout * (1.0 - self.out) * self.out


def sigmoid_forward(x: Any) -> tuple[Any, SigmoidCache]:
    """Logistic sigmoid ``1 / (1 + exp(-x))``, shape and dtype of ``x``."""
    xp = array_namespace(x)
    out = 1.0 / (1.0 + xp.exp(-x))
    return out, SigmoidCache(out)


class TanhCache(NamedTuple):
    """The forward output ``out`` (the derivative needs only it)."""

    out: Any

    def backward(self, dout: Any) -> Any:
        """``dout * (1 - tanh(x)**2)``, from the forward output."""
        return dout * (1.0 - self.out * self.out)


def tanh_forward(x: Any) -> tuple[Any, TanhCache]:
    """Hyperbolic tangent, shape and dtype of ``x``."""
    xp = array_namespace(x)
    out = xp.tanh(x)
    return out, TanhCache(out)


def _log_softmax(x: Any, xp: Any) -> Any:
    z = x - xp.max(x, axis=-1, keepdims=True)
    return z - xp.log(xp.sum(xp.exp(z), axis=-1, keepdims=True))


def softmax(x: Any) -> Any:
    """Row-wise softmax of (N, K) (or (K,)) scores, stable against overflow."""
    xp = array_namespace(x)
    return xp.exp(_log_softmax(x, xp))


def _as_one_hot(t: Any, num_classes: int, dtype: Any, xp: Any) -> Any:
    """Labels (N,) of any integer dtype -> one-hot (N, K); a one-hot (N, K) passes through."""
    if len(t.shape) == 2:
        if t.shape[1] != num_classes:
            raise ValueError(
                f"one-hot labels have {t.shape[1]} classes but the scores have {num_classes}"
            )
        return xp.astype(t, dtype)
    if len(t.shape) != 1:
        raise ValueError(
            f"labels must be (N,) integers or (N, K) one-hot, got shape {tuple(t.shape)}"
        )
    classes = xp.arange(num_classes, dtype=t.dtype, device=device(t))
    return xp.astype(t[:, None] == classes, dtype)


def cross_entropy_error(y: Any, t: Any) -> Any:
    """Mean cross-entropy of probabilities ``y`` (N, K) against labels (N,) or one-hot (N, K).

    The book's function (with its ``1e-7`` guard against ``log(0)``).
    """
    xp = array_namespace(y)
    if len(y.shape) == 1:
        y = xp.reshape(y, (1, -1))
        t = xp.reshape(t, (1, -1)) if len(t.shape) == 1 and t.shape[0] == y.shape[1] else t
    onehot = _as_one_hot(t, y.shape[1], y.dtype, xp)
    return -xp.sum(onehot * xp.log(y + 1e-7)) / float(y.shape[0])


class SoftmaxCrossEntropyCache(NamedTuple):
    """The softmax ``y`` (N, K) and the targets as (N, K) one-hot / soft rows."""

    y: Any
    onehot: Any

    def backward(self, dout: Any = 1.0) -> Any:
        """Gradient of ``dout`` times the mean loss with respect to the scores:
        ``(y - t) * dout / N`` (N, K). ``dout`` is a Python number (the loss is a scalar)."""
        return (self.y - self.onehot) * (float(dout) / float(self.y.shape[0]))


def softmax_cross_entropy_forward(x: Any, t: Any) -> tuple[Any, SoftmaxCrossEntropyCache]:
    """Softmax followed by mean cross-entropy, computed through log-softmax.

    Parameters
    ----------
    x : array (N, K) scores, floating
    t : array (N,) integer labels or (N, K) one-hot / soft targets

    Returns
    -------
    loss : 0-d array, dtype of ``x``
    cache : SoftmaxCrossEntropyCache (``cache.y`` is the softmax of ``x``)
    """
    xp = array_namespace(x)
    if len(x.shape) != 2 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"softmax cross-entropy: scores must be (N, K) and labels (N,) or (N, K); "
            f"got {tuple(x.shape)} and {tuple(t.shape)}"
        )
    onehot = _as_one_hot(t, x.shape[1], x.dtype, xp)
    logp = _log_softmax(x, xp)
    loss = -xp.sum(onehot * logp) / float(x.shape[0])
    return loss, SoftmaxCrossEntropyCache(xp.exp(logp), onehot)
