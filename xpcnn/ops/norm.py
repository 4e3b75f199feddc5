"""Batch normalisation (the book's, per channel for images) and local response
normalisation across channels (AlexNet), forward and backward."""

from __future__ import annotations

from typing import Any, NamedTuple

import array_api_extra as xpx
from array_api_compat import array_namespace

__all__ = ["BatchNormCache", "LRNCache", "batchnorm_forward", "lrn_forward"]


# --------------------------------------------------------------------------------------------
# Batch normalisation
# --------------------------------------------------------------------------------------------


class BatchNormCache(NamedTuple):
    """What the backward pass needs, plus the running statistics after the step."""

    xn: Any  # normalised input, shape of x
    std: Any  # sqrt(var + eps), broadcastable to x: (1, C, 1, 1) or (1, D)
    gamma: Any  # gamma, broadcastable to x
    axes: tuple[int, ...]  # the reduced axes: (0,) or (0, 2, 3)
    train_flg: bool  # True: batch statistics were used (and are differentiated through)
    running_mean: Any  # (C,) or (D,): updated in training mode, unchanged otherwise
    running_var: Any

    def backward(self, dout: Any) -> tuple[Any, Any, Any]:
        """``dout`` (shape of x) -> ``(dx, dgamma, dbeta)``.

        In training mode the batch statistics depend on ``x``; the book's chain of
        ``dstd``, ``dvar``, ``dmu`` collapses to
        ``dx = (dxn - mean(dxn) - xn * mean(dxn * xn)) / std`` with ``dxn = gamma * dout``.
        In inference mode the statistics are constants: ``dx = dxn / std``.
        """
        xp = array_namespace(dout)
        xn, std, gamma_b, axes = self.xn, self.std, self.gamma, self.axes
        C = gamma_b.shape[1]
        dbeta = xp.reshape(xp.sum(dout, axis=axes), (C,))
        dgamma = xp.reshape(xp.sum(dout * xn, axis=axes), (C,))
        dxn = dout * gamma_b
        if self.train_flg:
            dxn = (
                dxn
                - xp.mean(dxn, axis=axes, keepdims=True)
                - xn * xp.mean(dxn * xn, axis=axes, keepdims=True)
            )
        return dxn / std, dgamma, dbeta


def _bn_axes(
    x_shape: tuple[int, ...], gamma_shape: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Reduced axes and the broadcast shape of per-channel statistics."""
    axes: tuple[int, ...]
    bshape: tuple[int, ...]
    if len(x_shape) == 2:
        axes, bshape = (0,), (1, x_shape[1])
    elif len(x_shape) == 4:
        axes, bshape = (0, 2, 3), (1, x_shape[1], 1, 1)
    else:
        raise ValueError(
            f"batch normalisation expects (N, D) or (N, C, H, W) inputs, got shape {tuple(x_shape)}"
        )
    if tuple(gamma_shape) != (x_shape[1],):
        raise ValueError(
            f"batch normalisation: gamma of shape {tuple(gamma_shape)} does not match the "
            f"{x_shape[1]} channels of the input {tuple(x_shape)} (expected ({x_shape[1]},))"
        )
    return axes, bshape


def batchnorm_forward(
    x: Any,
    gamma: Any,
    beta: Any,
    running_mean: Any,
    running_var: Any,
    *,
    train_flg: bool = True,
    momentum: float = 0.9,
    eps: float = 1e-6,
) -> tuple[Any, BatchNormCache]:
    """``gamma * (x - mean) / sqrt(var + eps) + beta``, per feature of (N, D) inputs and
    per channel of (N, C, H, W) inputs (statistics over N, H and W).

    Training mode uses the batch mean and (biased) variance and updates the running
    statistics as the book does: ``running = momentum * running + (1 - momentum) * batch``.
    Inference mode uses the running statistics. ``eps = 1e-6`` is the book's ``10e-7``.

    Parameters
    ----------
    x : floating array (N, D) or (N, C, H, W)
    gamma, beta, running_mean, running_var : arrays (D,) or (C,), dtype of ``x``

    Returns
    -------
    out : array, shape and dtype of ``x``
    cache : BatchNormCache; ``cache.running_mean`` / ``cache.running_var`` hold the
        running statistics after this call (new arrays; the inputs are not modified).
    """
    xp = array_namespace(x, gamma, beta)
    axes, bshape = _bn_axes(tuple(x.shape), tuple(gamma.shape))
    if train_flg:
        mu = xp.mean(x, axis=axes, keepdims=True)
        xc = x - mu
        var = xp.mean(xc * xc, axis=axes, keepdims=True)
        m = float(momentum)
        running_mean = m * running_mean + (1.0 - m) * xp.reshape(mu, gamma.shape)
        running_var = m * running_var + (1.0 - m) * xp.reshape(var, gamma.shape)
    else:
        xc = x - xp.reshape(running_mean, bshape)
        var = xp.reshape(running_var, bshape)
    std = xp.sqrt(var + float(eps))
    xn = xc / std
    gamma_b = xp.reshape(gamma, bshape)
    out = gamma_b * xn + xp.reshape(beta, bshape)
    return out, BatchNormCache(xn, std, gamma_b, axes, bool(train_flg), running_mean, running_var)


# --------------------------------------------------------------------------------------------
# Local response normalisation
# --------------------------------------------------------------------------------------------


class LRNCache(NamedTuple):
    """The input, the windowed denominators and the hyperparameters."""

    x: Any
    d: Any  # k + alpha / size * (windowed sum of x**2), shape of x
    scale: Any  # d ** -beta
    size: int
    alpha: float
    beta: float

    def backward(self, dout: Any) -> Any:
        """``dout`` (shape of x) -> dx.

        ``out_c = x_c * d_c ** -beta`` and ``d_c`` depends on every ``x_i`` in ``c``'s
        window, so

        ``dx_i = dout_i * d_i ** -beta - 2 * alpha * beta / size * x_i * sum_c dout_c * out_c / d_c``

        summed over the channels ``c`` whose window holds ``i``: the mirrored window
        (``(size - 1) // 2`` before, ``size // 2`` after).
        """
        xp = array_namespace(dout)
        x, d, scale, size = self.x, self.d, self.scale, self.size
        g = dout * x * scale / d
        back = _channel_window_sum(g, (size - 1) // 2, size // 2, xp=xp)
        return dout * scale - (2.0 * self.alpha * self.beta / size) * x * back


def _channel_window_sum(a: Any, before: int, after: int, *, xp: Any) -> Any:
    """``s[:, c] = sum(a[:, c - before : c + after + 1])`` with zeros outside the channels.

    Pads axis 1 and adds ``before + after + 1`` shifted views: no per-sample loop.
    """
    C = a.shape[1]
    widths = [(0, 0)] * len(a.shape)
    widths[1] = (before, after)
    padded = xpx.pad(a, tuple(widths), xp=xp)
    s = padded[:, 0:C, ...]
    for j in range(1, before + after + 1):
        s = s + padded[:, j : j + C, ...]
    return s


def lrn_forward(
    x: Any, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0
) -> tuple[Any, LRNCache]:
    """Local response normalisation across channels (AlexNet, section 3.3), with
    ``torch.nn.functional.local_response_norm`` semantics (``alpha`` is divided by ``size``):

    ``out[:, c] = x[:, c] / (k + alpha / size * sum(x[:, c'] ** 2)) ** beta``

    over ``c'`` from ``c - size // 2`` to ``c + (size - 1) // 2`` (channels outside
    ``0..C-1`` count as zeros).

    Parameters
    ----------
    x : floating array (N, C, ...) (usually (N, C, H, W))
    size : int >= 1, the number of channels in the window; AlexNet: 5, 1e-4, 0.75, 2

    Returns
    -------
    out : array, shape and dtype of ``x``
    cache : LRNCache
    """
    xp = array_namespace(x)
    if len(x.shape) < 2:
        raise ValueError(f"LRN expects an input (N, C, ...), got shape {tuple(x.shape)}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"LRN: size must be an integer >= 1, got {size!r}")
    sq_sum = _channel_window_sum(x * x, size // 2, (size - 1) // 2, xp=xp)
    d = float(k) + (float(alpha) / size) * sq_sum
    scale = d ** (-float(beta))
    return x * scale, LRNCache(x, d, scale, size, float(alpha), float(beta))
