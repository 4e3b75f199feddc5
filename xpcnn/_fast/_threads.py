"""Threads for the NumPy fast paths.

A convolution's blocks of output rows are independent (:mod:`.numpy_ops`), and
NumPy releases the GIL inside its copies, ufunc loops and BLAS calls, so the
blocks can run on several threads of one process, each with its own ``col``
buffer and BLAS at one thread. OpenBLAS's own threads help these thin GEMMs
little, and never the unfolding copies around them.

The thread count is a :class:`contextvars.ContextVar` (like the fast-path switch),
set for a block of code with :func:`using` (:func:`xpcnn.cpu_threads`). Unset, work
that never calls BLAS (the compiled kernels, pooling, ReLU) uses every CPU the
process may use, as PyTorch does, and work that calls BLAS (the NumPy GEMM
convolution) runs on the calling thread and leaves BLAS its own threads.
:func:`map_ranges` splits ``range(n)`` into contiguous parts, one per thread, the
same way on every call: which thread computes what never depends on timing, so
results are reproducible for a given thread count.

This module imports no other xpcnn module.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = [
    "FLUSH",
    "PARALLEL_MIN",
    "by_size",
    "cpus",
    "map_ranges",
    "num_threads",
    "split",
    "using",
]

T = TypeVar("T")

_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar("xpcnn_threads", default=None)
_cpus: int | None = None

#: Whether subnormal floats are flushed to zero (:func:`xpcnn.flush_subnormals`): the
#: caller's thread sets its own control bits; a worker sets them for each part it runs.
FLUSH: contextvars.ContextVar[bool] = contextvars.ContextVar("xpcnn_flush", default=False)
#: ``set(on) -> previous``: the calling thread's flush-to-zero control (installed by
#: :mod:`.compiled` when the extension is built; None otherwise).
fp_control: Callable[[bool], bool] | None = None
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def cpus() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where
    there is none), read once per process."""
    global _cpus
    if _cpus is None:
        _cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
        _cpus = _cpus or os.cpu_count() or 1
    return _cpus


def num_threads(*, blas: bool = False) -> int:
    """Threads the NumPy fast paths use in the current thread or task: the count
    :func:`using` set, else every CPU (:func:`cpus`), or 1 for work that calls BLAS
    (``blas=True``), whose own threads then serve."""
    n = _THREADS.get()
    if n is None:
        return 1 if blas else cpus()
    return n


@contextlib.contextmanager
def using(n: int) -> Iterator[None]:
    """Fast paths run on ``n`` threads inside the ``with`` block (this thread or task only)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    token = _THREADS.set(n)
    try:
        yield
    finally:
        _THREADS.reset(token)


def split(n: int, parts: int) -> list[range]:
    """``range(n)`` cut into ``min(parts, n)`` contiguous ranges whose lengths differ by
    at most one (the first ones longer); ``[range(0)]`` when ``n == 0``."""
    parts = max(1, min(parts, n))
    size, extra = divmod(n, parts)
    bounds = [0]
    for k in range(parts):
        bounds.append(bounds[-1] + size + (k < extra))
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


def _submit(fn: Callable[[range], T], ranges: list[range]) -> list[Future[T]]:
    """``fn(r)`` for each range on the process's pool, grown to ``len(ranges)``
    threads first. Under the lock, so that no caller submits to a pool that another
    caller has just replaced (and shut down: its queued parts still run)."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < len(ranges):
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=len(ranges), thread_name_prefix="xpcnn")
            _pool_size = len(ranges)
        return [_pool.submit(contextvars.copy_context().run, _on_one_thread, fn, r) for r in ranges]


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist (and the lock may have been
    held by one of the parent's threads): start afresh there (its CPUs too)."""
    global _lock, _pool, _pool_size, _cpus
    _lock, _pool, _pool_size, _cpus = threading.Lock(), None, 0, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _on_one_thread(fn: Callable[[range], T], r: range) -> T:
    """``fn(r)`` in a copy of the caller's context (NumPy's ``errstate``, the
    fast-path switch, flushing) with one thread, so a part that splits work again
    does it itself instead of queueing behind the busy pool."""
    _THREADS.set(1)
    if fp_control is None:
        return fn(r)
    # Set either way: a worker started inside a flushing block inherited its bits.
    fp_control(FLUSH.get())
    try:
        return fn(r)
    finally:
        fp_control(False)


def map_ranges(
    fn: Callable[[range], T], n: int, max_parts: int | None = None, *, blas: bool = False
) -> list[T]:
    """``[fn(r) for r in split(n, parts)]``, ``parts`` being the thread count (at most
    ``max_parts``; ``blas``: see :func:`num_threads`), the ranges after the first on
    the pool's threads (each in a copy of the caller's context) while the calling
    thread does the first. Every call finishes before this returns (also when one
    raises: the first exception is raised)."""
    threads = num_threads(blas=blas)
    parts = threads if max_parts is None else max(1, min(threads, max_parts))
    ranges = split(n, parts)
    if len(ranges) == 1:
        return [fn(ranges[0])]
    futures = _submit(fn, ranges[1:])
    try:
        first = fn(ranges[0])
    finally:
        rest = [f.exception() for f in futures]  # waits for every range
    for error in rest:
        if error is not None:
            raise error
    return [first, *(f.result() for f in futures)]


#: Elements below which an elementwise op stays on the calling thread: handing a part
#: to another thread costs tens of microseconds.
PARALLEL_MIN = 1 << 16


def by_size(fn: Callable[[range], object], n: int, size: int) -> None:
    """``fn(r)`` for ranges ``r`` that cut ``range(n)`` (channels, say) into parts of at
    least about :data:`PARALLEL_MIN` of an array's ``size`` elements, on the threads;
    one call ``fn(range(n))`` for small arrays or one thread. ``fn`` writes its part
    of preallocated outputs."""
    parts = size // max(1, PARALLEL_MIN)
    if parts < 2 or num_threads() == 1:
        fn(range(n))
        return
    map_ranges(fn, n, parts)
