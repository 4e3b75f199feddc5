"""The one package that names array libraries.

Everything else in xpcnn takes its array namespace from its inputs
(``array_namespace(x)``). This package turns a user's ``--device`` / ``--backend``
into a namespace and a device, moves arrays between host and device, and owns the
random-number and thread policies, through one adapter per library with the same
methods (:class:`Adapter`): ``_numpy.py``, ``_cupy.py``, ``_torch.py``, ``_jax.py``,
``_strict.py``, listed once in ``_device.ADAPTERS``. A new library is one adapter
class there; nothing outside this package names a library.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from array_api_compat import array_namespace, device

from ._base import Adapter, Compiler, DeviceError
from ._cupy import CuPyAdapter
from ._device import (
    ADAPTERS,
    BACKENDS,
    FLOAT_DTYPES,
    Device,
    adapter,
    adapter_of,
    backend_devices,
    devices_to_test,
    float_dtype,
    resolve_device,
    to_numpy,
)
from ._numpy import blas_summary, cpu_threads, fast_path_threads, flush_subnormals, kernel_summary
from ._random import host_rng, random_uniform, rng_state, set_rng_state

__all__ = [
    "ADAPTERS",
    "BACKENDS",
    "FLOAT_DTYPES",
    "Adapter",
    "Compiler",
    "Device",
    "DeviceError",
    "adapter",
    "adapter_of",
    "array_namespace",
    "backend_devices",
    "blas_summary",
    "cpu_threads",
    "device",
    "devices_to_test",
    "enable_float64",
    "fast_path_threads",
    "float_dtype",
    "flush_subnormals",
    "gpu_available",
    "gpu_names",
    "host_rng",
    "is_traced",
    "kernel_summary",
    "library_packages",
    "random_uniform",
    "resolve_device",
    "rng_state",
    "set_rng_state",
    "thread_limits",
    "thread_summary",
    "to_numpy",
]


def thread_limits(n: int | None, device: Device) -> AbstractContextManager[Any]:
    """``n`` threads per process inside the block, for ``device``'s library: on NumPy
    xpcnn's own (:func:`cpu_threads`, BLAS at one); elsewhere BLAS's, and PyTorch's
    intra-op threads on torch. None leaves every library as it is."""
    return nullcontext() if n is None else device.adapter.threads(n)


def thread_summary(device: Device, n: int | None) -> str:
    """The threads in use, for a log line: ``"threads: xpcnn 2; BLAS openblas 1"``
    (xpcnn's own on NumPy, ``n`` or its default; BLAS's as threadpoolctl sees them;
    PyTorch's)."""
    from threadpoolctl import threadpool_info

    blas = [
        f"{i['internal_api']} {i['num_threads']}"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]
    parts = device.adapter.thread_parts(n, "BLAS " + (", ".join(blas) or "none loaded"))
    return "threads: " + "; ".join(parts)


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    return bool(gpu_names())


def gpu_names() -> list[str]:
    """Names of the GPUs CuPy sees (empty without CuPy or a GPU)."""
    return CuPyAdapter().gpu_names()


def enable_float64() -> None:
    """Let float64 arrays be float64 in every installed library (JAX's 64-bit mode).

    Call it before creating arrays; float32 then has to be asked for explicitly, as
    xpcnn always does.
    """
    for lib in ADAPTERS:
        lib.enable_float64()


def library_packages() -> list[str]:
    """The pip packages of the array libraries, for ``xpcnn info``'s versions."""
    return [d for lib in ADAPTERS for d in lib.distributions]


def is_traced(x: Any) -> bool:
    """Whether ``x`` is a traced value of a library's compiler (a JAX tracer): a
    placeholder that must not outlive the compiled function's trace."""
    return any(c is not None and c.is_traced(x) for c in _COMPILERS)


_COMPILERS = [lib.compiler() for lib in ADAPTERS]
