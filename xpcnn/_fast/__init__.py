"""Backend-specific fast paths, behind one seam.

The ops in :mod:`xpcnn.ops` are written once against the array API standard;
that generic code is the reference. A few ops also have a faster version for
one backend: NumPy (:mod:`xpcnn._fast.numpy_ops`: strided views, ufuncs with
``out=``, a batch-innermost layout, and for float32 convolutions the compiled
kernels of :mod:`xpcnn._fast.compiled`, else blocked GEMMs) and CuPy
(:mod:`xpcnn._fast.cupy_ops`: CUDA kernels). An op asks :func:`lookup` once
per call::

    impl = _fast.lookup("max_pool2d_forward", x)
    if impl is not None:
        return impl(x, ...)
    ...generic code...

``lookup`` returns None (use the generic code) for other backends (torch,
array-api-strict, JAX, ...), when the backend module has no such op, or when
fast paths are switched off; a name outside :data:`OPS` raises. A forward
pass returns a cache object that owns its backward (``cache.backward(dout)``),
so the backward of a fast forward is the fast one whatever the switch says.
Each fast path gives the generic path's results (equal, or equal to rounding
where GEMMs sum in another order: ``tests/test_fast_paths.py``), so the switch
changes speed only, never results or aliasing.

Imports point one way::

    xpcnn.layers, xpcnn.models, xpcnn.optim
        -> xpcnn.ops           (generic code; asks the seam)
        -> xpcnn._fast         (this registry; imports its backend modules lazily)
        -> xpcnn._fast.numpy_ops, xpcnn._fast.cupy_ops
        -> xpcnn._fast.compiled, xpcnn._fast.numpy_conv  (the C extension
           xpcnn._fast._conv when built; the blocked-GEMM convolution)
        -> xpcnn._window, xpcnn._fast._threads  (window arithmetic; threads: no xpcnn imports)

The backend modules never import :mod:`xpcnn.ops`; they are imported on the
first array of their kind, so CuPy is imported only when a CuPy array arrives.
Only this package and :mod:`xpcnn.backend` may import numpy or cupy.

Threads: :func:`xpcnn.cpu_threads` sets how many threads the NumPy fast paths
share their work among (:mod:`xpcnn._fast._threads`, a ContextVar like the switch).

Instruction sets: ``XPCNN_ISA=avx512|avx2|generic|none`` picks the compiled
kernels' (``none``: NumPy's GEMMs); :func:`xpcnn._fast.compiled.using` does it
for a block. ``XPCNN_WINOGRAD=0`` (or :func:`xpcnn._fast.compiled.winograd`)
keeps 3x3 stride-1 convolutions on the direct kernel instead of Winograd
F(2x2, 3x3).

Switch: ``XPCNN_FAST=0`` in the environment starts with fast paths off;
``with _fast.enabled(False): ...`` switches them off for a block (tests,
benchmarks of the generic path). The switch is a :class:`contextvars.ContextVar`:
a block changes it for its own thread (or asyncio task) only.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from array_api_compat import is_cupy_array, is_numpy_array

__all__ = ["OPS", "enabled", "is_enabled", "lookup"]

#: The op names a backend module may implement; :func:`lookup` refuses others.
OPS = frozenset(
    {
        "adam_update",
        "col2im",
        "conv2d_forward",
        "conv2d_relu_forward",
        "im2col",
        "max_pool2d_forward",
        "relu_backward",
        "relu_forward",
    }
)

_OFF = ("0", "false", "no", "off")
_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "xpcnn_fast", default=os.environ.get("XPCNN_FAST", "1").strip().lower() not in _OFF
)


def is_enabled() -> bool:
    """Whether ops take their fast paths where one exists (in this thread or task)."""
    return _ENABLED.get()


@contextlib.contextmanager
def enabled(flag: bool = True) -> Iterator[None]:
    """Switch fast paths on (``True``) or off (``False``) inside a ``with`` block,
    for the current thread or asyncio task only."""
    token = _ENABLED.set(bool(flag))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def _backend_module(x: Any) -> Any:
    """The fast-path module for ``x``'s backend (imported on first use), or None."""
    if is_numpy_array(x):
        return importlib.import_module(".numpy_ops", __name__)
    if is_cupy_array(x):
        return importlib.import_module(".cupy_ops", __name__)
    return None


def lookup(op: str, x: Any) -> Callable[..., Any] | None:
    """The fast implementation of ``op`` for ``x``'s backend, or None for the generic path.

    Raises ValueError for a name not in :data:`OPS` (a misspelt name would
    otherwise silently run the generic code).
    """
    if op not in OPS:
        raise ValueError(f"unknown fast-path op {op!r}: known ops are {', '.join(sorted(OPS))}")
    if not _ENABLED.get():
        return None
    module = _backend_module(x)
    return None if module is None else getattr(module, op, None)
