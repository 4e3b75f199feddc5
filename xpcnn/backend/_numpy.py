"""NumPy: the CPU library and the host format, and its CPU runtime in xpcnn (the fast
paths' threads, BLAS, subnormal flushing, which convolution runs)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import array_api_compat
import numpy as np

from ._base import Adapter, DeviceError


class NumPyAdapter(Adapter):
    name = "numpy"
    module = "numpy"
    display = "NumPy"
    install = "pip install numpy"
    distributions = ("numpy",)
    test_ids = (("numpy", "cpu"),)
    test_rank = 0

    def is_namespace(self, xp: Any) -> bool:
        return array_api_compat.is_numpy_namespace(xp)

    def is_array(self, x: Any) -> bool:
        return array_api_compat.is_numpy_array(x)

    def pick(self, mod: Any, kind: str, index: int, spec: str | None) -> tuple[Any, Any]:
        if kind == "cuda":
            raise DeviceError(
                f"--device {spec}: NumPy runs on the CPU only; use --backend cupy, torch or jax for a GPU"
            )
        import array_api_compat.numpy as np_xp

        return np_xp, "cpu"

    def label(self, dev: Any) -> str:
        return "cpu"

    def threads(self, n: int) -> AbstractContextManager[Any]:
        return cpu_threads(n)

    def training_threads(self) -> AbstractContextManager[Any]:
        """xpcnn's threads as they are here (every CPU by default), with BLAS at one
        thread per call, as ``xpcnn train`` runs: OpenBLAS's own threads, spinning
        between calls, would compete with them (a DeepConvNet epoch in a script took
        1.6x as long on two cores, scripts/BENCHMARKS.md)."""
        return cpu_threads(fast_path_threads())

    def thread_parts(self, n: int | None, blas: str) -> list[str]:
        return [f"xpcnn {n or fast_path_threads()}", blas]


#: OpenBLAS core types with AVX-512 kernels.
_AVX512_CORETYPES = {"SKYLAKEX", "COOPERLAKE", "SAPPHIRERAPIDS"}


def blas_summary() -> str:
    """The BLAS NumPy was built with, and a warning when ``OPENBLAS_CORETYPE`` is set.

    That variable makes OpenBLAS use the named core's kernels instead of the best
    ones for the CPU; a pre-AVX-512 core on an AVX-512 CPU halves the float32
    GEMM rate, which is most of a convolutional network's training time.
    """
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        text = f"{blas['name']} {blas.get('version', '')}".strip()
    except (KeyError, TypeError):
        text = "unknown"
    forced = os.environ.get("OPENBLAS_CORETYPE")
    if forced:
        text += f"; OPENBLAS_CORETYPE={forced} is set and forces that core's kernels"
        if forced.upper() not in _AVX512_CORETYPES:
            text += " (on an AVX-512 CPU, unset it for about twice the GEMM speed)"
    return text


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """NumPy work on ``n`` threads inside the ``with`` block (this thread or asyncio
    task only).

    The NumPy fast paths split each convolution (its blocks of output rows: the
    unfolding copies and the GEMMs), max pooling and ReLU into ``n`` parts that
    run at once, NumPy releasing the GIL inside them; BLAS is limited to one
    thread per call (threadpoolctl) for the block, so those threads do not wait
    on BLAS's own. Results equal one thread's up to the order of the
    weight-gradient sums, and do not vary from run to run for a given ``n``.
    ``xpcnn train --threads N`` uses this on the NumPy backend. Other backends are
    not affected (PyTorch: ``torch.set_num_threads``). Raises ValueError unless
    ``n`` is a positive integer.
    """
    from threadpoolctl import threadpool_limits

    from .._fast import _threads

    with _threads.using(n), threadpool_limits(limits=1, user_api="blas"):
        yield


def fast_path_threads() -> int:
    """Threads the NumPy fast paths use here now: :func:`cpu_threads`' count inside
    its block, else every CPU the process may use."""
    from .._fast import _threads

    return _threads.num_threads()


def kernel_summary() -> str:
    """Which convolution the NumPy backend runs (the compiled kernels and their
    instruction set, or NumPy's GEMMs and why), for ``xpcnn info``."""
    from .._fast import compiled

    return compiled.status()


@contextlib.contextmanager
def flush_subnormals(enabled: bool = True) -> Iterator[bool]:
    """Flush subnormal floats to zero inside the ``with`` block (this thread or
    asyncio task, and xpcnn's own threads while they work for it); yields whether
    flushing is on.

    Late in training, float32 gradients hold subnormal numbers (below about 1.2e-38),
    which the CPU computes with far slower microcode: a trained DeepConvNet's step
    took 1.9x a fresh one's (scripts/BENCHMARKS.md). With flush-to-zero and
    denormals-are-zero set, such values count as 0, a change far below float32's
    resolution for training. The thread's previous setting is restored on leaving
    the block, so the rest of the program computes as before. The Trainer and
    ``xpcnn train`` use this by default. A no-op (yields False) with
    ``enabled=False``, or where the compiled extension is not built or the CPU has
    no such control (``xpcnn info`` says which). NumPy arrays only: other libraries
    keep their own settings.
    """
    from .._fast import _threads, compiled

    control = compiled.fp_control
    if not enabled or control is None:
        yield False
        return
    token = _threads.FLUSH.set(True)
    before = control(True)
    try:
        yield True
    finally:
        control(before)
        _threads.FLUSH.reset(token)
