"""Backend-specific fast paths, behind one seam per op.

The ops in :mod:`xpcnn.ops` are written once against the array API standard;
that generic code is the reference. A few ops also have a faster version for
one backend: NumPy (:mod:`xpcnn._fast.numpy_ops`: strided views, ufuncs with
``out=``, per-image GEMMs) and CuPy (:mod:`xpcnn._fast.cupy_ops`: CUDA
kernels). An op asks :func:`lookup` once per call::

    impl = _fast.lookup("max_pool2d_forward", x)
    if impl is not None:
        return impl(x, ...)
    ...generic code...

``lookup`` returns None (use the generic code) for other backends (torch,
array-api-strict, ...), when the backend module has no such op, or when fast
paths are switched off. Each fast path is tested equal to the generic path
(``tests/test_fast_paths.py``) by running both with :func:`enabled`.

The backend modules are imported lazily, on the first array of their kind, so
CuPy is imported only when a CuPy array arrives. Only this package and
:mod:`xpcnn.backend` may import numpy or cupy.

Switch: ``XPCNN_FAST=0`` in the environment starts with fast paths off;
``with _fast.enabled(False): ...`` switches them off for a block (tests,
benchmarks of the generic path).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from array_api_compat import is_cupy_array, is_numpy_array

__all__ = ["enabled", "is_enabled", "lookup"]

_ENABLED = os.environ.get("XPCNN_FAST", "1").strip().lower() not in ("0", "false", "no", "off")


def is_enabled() -> bool:
    """Whether ops take their fast paths where one exists."""
    return _ENABLED


@contextlib.contextmanager
def enabled(flag: bool = True) -> Iterator[None]:
    """Switch fast paths on (``True``) or off (``False``) inside a ``with`` block.

    Not thread-safe: it flips one module-level flag.
    """
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(flag)
    try:
        yield
    finally:
        _ENABLED = previous


def backend_module(x: Any) -> Any:
    """The fast-path module for ``x``'s backend (imported on first use), or None."""
    if is_numpy_array(x):
        return importlib.import_module(".numpy_ops", __name__)
    if is_cupy_array(x):
        return importlib.import_module(".cupy_ops", __name__)
    return None


def lookup(op: str, x: Any) -> Callable[..., Any] | None:
    """The fast implementation of ``op`` for ``x``'s backend, or None for the generic path."""
    if not _ENABLED:
        return None
    module = backend_module(x)
    return None if module is None else getattr(module, op, None)
