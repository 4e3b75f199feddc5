"""Inverted dropout.

The ops are pure: dropout takes the uniform numbers ``u`` as an input, drawn by
the caller through :func:`xpcnn.backend.random_uniform` (on the array's own
device), so the op itself never touches a random generator.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import array_namespace, device

from .._checks import check_dropout_ratio

__all__ = ["DropoutCache", "dropout_forward"]


class DropoutCache(NamedTuple):
    """The kept-unit mask and the scale ``1 / (1 - dropout_ratio)`` applied to kept units."""

    mask: Any  # bool, shape of x
    scale: float

    def backward(self, dout: Any) -> Any:
        """``dx``: the forward pass's mask and scale applied to ``dout``."""
        xp = array_namespace(dout)
        zero = xp.zeros((), dtype=dout.dtype, device=device(dout))
        return xp.where(self.mask, dout * self.scale, zero)


def dropout_forward(x: Any, u: Any, dropout_ratio: float = 0.5) -> tuple[Any, DropoutCache]:
    """Inverted dropout in training mode: keep a unit where ``u > dropout_ratio``
    (the book's test) and scale kept units by ``1 / (1 - dropout_ratio)``, so the
    expected output equals ``x`` and inference needs no rescaling.

    Parameters
    ----------
    x : floating array, any shape
    u : array of ``x``'s shape, uniform in [0, 1) (``xpcnn.backend.random_uniform``)
    dropout_ratio : float in [0, 1), the probability of dropping a unit

    Returns
    -------
    out : array, shape and dtype of ``x``
    cache : DropoutCache (the bool mask, reused by the backward pass)
    """
    xp = array_namespace(x, u)
    ratio = check_dropout_ratio(dropout_ratio)
    if tuple(u.shape) != tuple(x.shape):
        raise ValueError(
            f"dropout: uniform numbers of shape {tuple(u.shape)} do not match the input {tuple(x.shape)}"
        )
    mask = u > ratio
    scale = 1.0 / (1.0 - ratio)
    out = xp.where(mask, x * scale, xp.zeros((), dtype=x.dtype, device=device(x)))
    return out, DropoutCache(mask, scale)
