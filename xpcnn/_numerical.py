"""Central differences on the host: the one finite-difference gradient, behind
:meth:`xpcnn.models.Sequential.numerical_gradient` and :func:`xpcnn.testing.numerical_gradient`.

Imports no other xpcnn module.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["numerical_gradient"]


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
