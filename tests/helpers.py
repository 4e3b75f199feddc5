"""Shared test helpers: float64 numerical gradients and scale-aware comparisons.

These work on host NumPy float64 arrays only; the function under test is free to
move its argument to any backend (``backend.asarray``) and bring the result back
(``backend.to_numpy``), so one gradient check covers every backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np


def numerical_gradient(
    f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6
) -> np.ndarray:
    """Central-difference gradient of the scalar function ``f`` at ``x``.

    Parameters
    ----------
    f : callable
        Maps a host float64 array shaped like ``x`` to a Python float. It gets a
        fresh copy on every call, so it may keep or modify its argument.
    x : array_like
        The point; converted to a float64 copy (``x`` itself is never modified).
    eps : float
        Step; ``1e-6`` balances truncation (O(eps**2)) against rounding
        (O(ulp(f) / eps)) for float64 and well-scaled ``f``.

    Returns
    -------
    np.ndarray, float64, shape of ``x``: ``(f(x + eps e_i) - f(x - eps e_i)) / (2 eps)``.
    """
    x = np.array(x, dtype=np.float64, copy=True)
    grad = np.empty_like(x)
    flat_x = x.reshape(-1)  # views: writing them perturbs x / fills grad
    flat_g = grad.reshape(-1)
    for i in range(flat_x.size):
        orig = flat_x[i]
        flat_x[i] = orig + eps
        f_plus = float(f(x.copy()))
        flat_x[i] = orig - eps
        f_minus = float(f(x.copy()))
        flat_x[i] = orig
        flat_g[i] = (f_plus - f_minus) / (2.0 * eps)
    return grad


def weighted_sum(out: np.ndarray, weights: np.ndarray) -> float:
    """``sum(out * weights)`` correctly rounded (``math.fsum``): a scalar loss whose
    gradient with respect to ``out`` is ``weights``, with minimal rounding noise
    for central differences."""
    out = np.asarray(out, dtype=np.float64)
    if out.shape != weights.shape:
        raise ValueError(f"output shape {out.shape} does not match weights {weights.shape}")
    return math.fsum((out * weights).ravel().tolist())


def assert_close_scaled(
    actual: np.ndarray,
    expected: np.ndarray,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    err_msg: str = "",
) -> None:
    """``|actual - expected| <= atol * scale + rtol * |expected|`` elementwise with
    ``scale = max(1, max|expected|)``, so the absolute floor grows with the data.

    Also checks the shapes match exactly (no broadcasting).
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (
        f"{err_msg}: shape {actual.shape} != expected {expected.shape}"
    )
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=err_msg)


def assert_gradients_match(
    backend: Any,
    forward: Callable[..., tuple[Any, Any]],
    backward: Callable[..., tuple[Any, ...]],
    inputs: list[np.ndarray],
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> None:
    """Float64 check of ``backward`` against central differences of ``forward``.

    ``forward(*device_inputs) -> (out, cache)``;
    ``backward(dout, cache, *device_inputs) -> tuple`` with one gradient per input
    (``None`` to skip one). The loss is ``sum(out * weights)`` with random weights
    unless given, so ``dout = weights``. The op runs on ``backend``; the differences
    are taken on the host in float64.
    """
    dev = [backend.asarray(a, "float64") for a in inputs]
    out, cache = forward(*dev)
    if weights is None:
        weights = rng.standard_normal(tuple(out.shape))
    grads = backward(backend.asarray(weights, "float64"), cache, *dev)
    assert len(grads) == len(inputs)
    checked = 0
    for k, (a, g) in enumerate(zip(inputs, grads, strict=True)):
        if g is None:
            continue

        def loss(v: np.ndarray, k: int = k) -> float:
            args = list(dev)
            args[k] = backend.asarray(v, "float64")
            return weighted_sum(backend.to_numpy(forward(*args)[0]), weights)

        num = numerical_gradient(loss, a)
        assert_close_scaled(
            backend.to_numpy(g), num, rtol=1e-6, atol=1e-8, err_msg=f"gradient of input {k}"
        )
        checked += 1
    assert checked > 0
