"""The one input normaliser of the package: integer pixels -> floats in [0, 1].

Array-agnostic (the namespace comes from the array), so the models, the
Trainer and the host-side data loaders all use it.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

__all__ = ["as_input"]


def as_input(x: Any, dtype: Any) -> Any:
    """``x`` as network input of ``dtype``: integer images (8-bit pixels, 0..255)
    become ``dtype`` in [0, 1] (``x / 255``); floats are cast to ``dtype`` if needed
    and otherwise returned as they are (no copy)."""
    xp = array_namespace(x)
    if xp.isdtype(x.dtype, "integral"):
        return xp.astype(x, dtype) / 255.0
    return x if x.dtype == dtype else xp.astype(x, dtype)
