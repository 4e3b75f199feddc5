"""Argument checks shared by the ops and the layers (a layer runs its op's check
when it is built, so a bad network fails before it sees data).

Imports no other xpcnn module, so :mod:`xpcnn.ops` and :mod:`xpcnn.layers`
both sit above it.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace


def check_floating(x: Any, what: str) -> None:
    """Raise TypeError unless ``x`` has a real floating dtype (integer pixels would
    otherwise fail deep inside, or be promoted to float64 silently)."""
    if not array_namespace(x).isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{what} needs floating-point input, got {x.dtype}; cast it (x.astype(float32)), "
            "or give integer images to the network (predict, loss, accuracy), which scales them to [0, 1]"
        )


def check_dropout_ratio(dropout_ratio: float) -> float:
    """``dropout_ratio`` as a float in [0, 1), or ValueError naming it."""
    ratio = float(dropout_ratio)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"dropout_ratio must be in [0, 1), got {dropout_ratio!r}")
    return ratio
