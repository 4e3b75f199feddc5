"""The one module that names array backends.

Everything else in xpcnn takes its array namespace from its inputs
(``array_namespace(x)``). This module turns a user's ``--device`` string into
a namespace and a device, moves arrays between host and device, and owns the
host random-number policy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, overload

import array_api_compat
import numpy as np
from array_api_compat import array_namespace, device, is_cupy_array, is_numpy_array

from .errors import XpcnnError

__all__ = [
    "BACKENDS",
    "Device",
    "DeviceError",
    "array_namespace",
    "backend_devices",
    "blas_summary",
    "cpu_threads",
    "device",
    "gpu_available",
    "gpu_names",
    "host_rng",
    "random_uniform",
    "resolve_device",
    "rng_state",
    "set_rng_state",
    "thread_limits",
    "thread_summary",
    "to_numpy",
]

#: Array libraries ``resolve_device`` knows, by the name ``--backend`` takes.
BACKENDS = ("numpy", "cupy", "torch", "jax", "array-api-strict")

_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")

_INSTALL = {
    "numpy": "pip install numpy",
    "cupy": (
        "pip install cupy-cuda12x (CUDA 12) or cupy-cuda13x (CUDA 13), "
        'or pip install ".[cuda12]" from a clone of xpcnn'
    ),
    "torch": "pip install torch (CUDA builds: https://pytorch.org/get-started/locally/)",
    "jax": 'pip install "jax[cpu]", or "jax[cuda12]" for NVIDIA GPUs',
    "array-api-strict": "pip install array-api-strict",
}
_MODULES = {"numpy": "numpy", "cupy": "cupy", "torch": "torch", "jax": "jax"}
_MODULES["array-api-strict"] = "array_api_strict"
_DISPLAY = {"numpy": "NumPy", "cupy": "CuPy", "torch": "PyTorch", "jax": "JAX"}


class DeviceError(XpcnnError, RuntimeError):
    """The requested device cannot be used (bad name, library missing, no such device)."""


@dataclass(frozen=True)
class Device:
    """A resolved compute target: an array library and a device of it.

    Attributes
    ----------
    name : str
        A label: ``"cpu"`` (NumPy), ``"cuda:N"`` (CuPy), ``"<backend>:<device>"``
        for the others (``"torch:cuda:0"``, ``"jax:cpu"``), or a test id.
    xp : module
        Array-API-compatible namespace (``array_api_compat.numpy``, ``.cupy``,
        ``.torch``, ``jax.numpy``, ``array_api_strict``).
    device : object
        The namespace's device object, passed as ``device=`` to creation calls.
    backend : str
        The library, one of :data:`BACKENDS` (derived from ``xp`` when not given).
    """

    name: str
    xp: Any
    device: Any
    backend: str = ""

    def __post_init__(self) -> None:
        if not self.backend:
            object.__setattr__(self, "backend", _library(self.xp))

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Copy ``a`` (NumPy, a list, or an array of any supported backend) onto this device.

        ``dtype`` may be a dtype of ``xp`` or its name (``"float32"``).

        Raises
        ------
        DeviceError
            For float64 on JAX without ``jax_enable_x64``.
        """
        if isinstance(dtype, str):
            self.check_dtype(dtype)
            dtype = getattr(self.xp, dtype)
        elif dtype is not None and self.backend == "jax":
            self.check_dtype(str(np.dtype(dtype)))
        if not (is_numpy_array(a) or _belongs_to(a, self.xp)):
            a = to_numpy(a)
        elif (
            is_numpy_array(a)
            and not a.flags.writeable
            and array_api_compat.is_torch_namespace(self.xp)
        ):
            a = a.copy()  # torch cannot wrap read-only memory (and warns)
        with self.activate():
            return self.xp.asarray(a, dtype=dtype, device=self.device)

    def check_dtype(self, dtype: str) -> None:
        """Raise :class:`DeviceError` when this device cannot hold ``dtype`` (a name):
        JAX gives float64 only with ``jax_enable_x64`` (else it silently truncates)."""
        if self.backend == "jax" and str(dtype) == "float64":
            import jax

            if not jax.config.read("jax_enable_x64"):
                raise DeviceError(
                    "float64 on JAX needs 64-bit mode: set JAX_ENABLE_X64=1 in the environment, "
                    'or call jax.config.update("jax_enable_x64", True) before creating arrays'
                )

    def to_numpy(self, x: Any) -> np.ndarray:
        """Array ``x`` (of this or any backend) as a host NumPy array (see :func:`to_numpy`)."""
        return to_numpy(x)

    @classmethod
    def of(cls, x: Any) -> Device:
        """The Device an existing array lives on (any array-API backend)."""
        xp = array_namespace(x)
        lib = _library(xp)
        dev = device(x)
        return cls(_label(lib, dev), xp, dev, lib)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Make this the current CUDA device (compat's CuPy creation functions ignore ``device=``)."""
        if array_api_compat.is_cupy_namespace(self.xp):
            with self.device:
                yield
        else:
            yield

    def __str__(self) -> str:
        return self.name


def _library(xp: Any) -> str:
    """The :data:`BACKENDS` name of a namespace."""
    for name, test in (
        ("numpy", array_api_compat.is_numpy_namespace),
        ("cupy", array_api_compat.is_cupy_namespace),
        ("torch", array_api_compat.is_torch_namespace),
        ("jax", array_api_compat.is_jax_namespace),
        ("array-api-strict", array_api_compat.is_array_api_strict_namespace),
    ):
        if test(xp):
            return name
    return getattr(xp, "__name__", str(xp))


def _label(backend: str, dev: Any) -> str:
    if backend == "numpy":
        return "cpu"
    if backend == "cupy":
        return f"cuda:{dev.id}"
    if backend == "jax":
        return f"jax:{'cuda' if dev.platform == 'gpu' else dev.platform}:{dev.id}"
    if backend == "array-api-strict":
        return f"array-api-strict:{dev._device}"
    return f"{backend}:{dev}"


def resolve_device(spec: str | Device | None = "cpu", backend: str | None = None) -> Device:
    """Resolve a device of an array library to a :class:`Device`.

    Parameters
    ----------
    spec : str, Device or None
        The device within the library: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``
        (array-api-strict: also ``"device1"``, ``"device2"``). None: the
        library's default (JAX's default device; ``cuda:0`` for CuPy; else the CPU).
    backend : str or None
        ``"numpy"``, ``"cupy"``, ``"torch"``, ``"jax"`` or ``"array-api-strict"``
        (:data:`BACKENDS`). None: NumPy for the CPU, CuPy for ``cuda``.

    Raises
    ------
    DeviceError
        One line naming the problem and the fix: an unknown backend or device, a
        library that is not installed, or one without such a device (no GPU,
        an index past the number of GPUs).
    """
    if isinstance(spec, Device):
        if backend is not None and _canonical_backend(backend) != spec.backend:
            raise DeviceError(f"device {spec} is a {spec.backend} device, not {backend}")
        return spec
    defaulted = backend is None
    if backend is None:
        cuda = spec is not None and str(spec).strip().lower().startswith("cuda")
        backend = "cupy" if cuda else "numpy"
    backend = _canonical_backend(backend)
    text = None if spec is None else str(spec).strip()
    if backend == "array-api-strict":
        return _strict_device(text)
    if text is None:
        kind, index = ("cuda", 0) if backend == "cupy" else ("default", 0)
    else:
        m = _DEVICE_RE.match(text.lower())
        if m is None:
            raise DeviceError(
                f"unknown device {spec!r}: use 'cpu', 'cuda' or 'cuda:N' (N = GPU index)"
            )
        if m.group(1) == "cpu" and m.group(2) is not None:
            raise DeviceError(f"unknown device {spec!r}: the CPU takes no index, use 'cpu'")
        kind, index = m.group(1), int(m.group(2) or 0)
    try:
        mod = _import(backend, f"--device {text}" if defaulted else f"--backend {backend}")
    except DeviceError as exc:
        if defaulted and backend == "cupy":
            raise DeviceError(
                f"{exc}; or --backend torch / jax with a CUDA build of those"
            ) from None
        raise
    if backend == "numpy":
        if kind == "cuda":
            raise DeviceError(
                f"--device {text}: NumPy runs on the CPU only; use --backend cupy, torch or jax for a GPU"
            )
        import array_api_compat.numpy as np_xp

        return Device("cpu", np_xp, "cpu", "numpy")
    if backend == "cupy":
        if kind != "cuda":
            raise DeviceError(
                f"--device {text}: CuPy runs on GPUs only; use --device cuda, or --backend numpy for the CPU"
            )
        return _cupy_device(mod, index, text)
    if backend == "torch":
        import array_api_compat.torch as torch_xp

        if kind in ("cpu", "default"):
            return Device("torch:cpu", torch_xp, mod.device("cpu"), "torch")
        count = mod.cuda.device_count() if mod.cuda.is_available() else 0
        _check_gpu_index(backend, text, index, count, _INSTALL["torch"])
        return Device(f"torch:cuda:{index}", torch_xp, mod.device("cuda", index), "torch")
    # jax
    import jax.numpy as jnp

    if kind == "default":
        dev = mod.devices()[0]
    elif kind == "cpu":
        dev = mod.devices("cpu")[0]
    else:
        try:
            gpus = mod.devices("gpu")
        except RuntimeError:
            gpus = []
        _check_gpu_index(backend, text, index, len(gpus), _INSTALL["jax"])
        dev = gpus[index]
    return Device(_label("jax", dev), jnp, dev, "jax")


def backend_devices(backend: str) -> list[str]:
    """The devices of an installed array library, as ``--device`` names
    (``["cpu", "cuda:0"]``).

    Raises
    ------
    DeviceError
        For an unknown backend or a library that is not installed.
    """
    backend = _canonical_backend(backend)
    mod = _import(backend, f"--backend {backend}")
    if backend == "numpy":
        return ["cpu"]
    if backend == "array-api-strict":
        return [
            "cpu" if d == mod.Device("CPU_DEVICE") else d._device
            for d in mod.__array_namespace_info__().devices()
        ]
    if backend == "cupy":
        try:
            n = mod.cuda.runtime.getDeviceCount()
        except Exception:  # CUDARuntimeError when there is no driver
            n = 0
        return [f"cuda:{i}" for i in range(n)]
    if backend == "torch":
        n = mod.cuda.device_count() if mod.cuda.is_available() else 0
        return ["cpu"] + [f"cuda:{i}" for i in range(n)]
    out = ["cpu"]
    with contextlib.suppress(RuntimeError):
        out += [f"cuda:{i}" for i in range(len(mod.devices("gpu")))]
    return out


def _canonical_backend(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    key = {"strict": "array-api-strict", "jax.numpy": "jax"}.get(key, key)
    if key not in BACKENDS:
        raise DeviceError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    return key


def _import(backend: str, what: str) -> Any:
    """The library's module, or a DeviceError saying that ``what`` (the option that
    asked for it) needs it and how to install it."""
    import importlib

    try:
        return importlib.import_module(_MODULES[backend])
    except ImportError as exc:
        name = _DISPLAY.get(backend, backend)
        raise DeviceError(
            f"{what} needs {name}, which is not installed: {_INSTALL[backend]}"
        ) from exc


def _check_gpu_index(backend: str, spec: str | None, index: int, count: int, hint: str) -> None:
    if count == 0:
        raise DeviceError(
            f"--backend {backend} --device {spec}: {backend} sees no GPU (a CPU-only build, "
            f"or no driver); install a CUDA build ({hint}), or use --device cpu"
        )
    if index >= count:
        raise DeviceError(
            f"--device {spec}: only {count} GPU(s) visible to {backend} (cuda:0..cuda:{count - 1})"
        )


def _cupy_device(cupy: Any, index: int, spec: str | None) -> Device:
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError when there is no driver
        raise DeviceError(
            f"--device {spec}: CuPy is installed but no GPU is visible ({exc}); "
            "check the NVIDIA driver and CUDA_VISIBLE_DEVICES, or use --device cpu"
        ) from exc
    if count == 0:
        raise DeviceError(
            f"--device {spec}: CuPy is installed but no GPU is visible; use --device cpu"
        )
    if index >= count:
        raise DeviceError(
            f"--device {spec}: only {count} GPU(s) visible (cuda:0..cuda:{count - 1})"
        )
    import array_api_compat.cupy as cp_xp

    return Device(f"cuda:{index}", cp_xp, cupy.cuda.Device(index), "cupy")


def _strict_device(spec: str | None) -> Device:
    """array-api-strict's devices: its CPU and the GPU stand-ins ``device1``, ``device2``."""
    strict = _import("array-api-strict", "--backend array-api-strict")
    names = {d._device: d for d in strict.__array_namespace_info__().devices()}
    key = "CPU_DEVICE" if spec is None or spec.lower() == "cpu" else spec
    if key not in names:
        raise DeviceError(
            f"unknown array-api-strict device {spec!r}: use "
            + ", ".join("cpu" if n == "CPU_DEVICE" else n for n in names)
        )
    return Device(_label("array-api-strict", names[key]), strict, names[key], "array-api-strict")


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

    from ._fast import _threads

    with _threads.using(n), threadpool_limits(limits=1, user_api="blas"):
        yield


@contextlib.contextmanager
def thread_limits(n: int | None, device: Device) -> Iterator[None]:
    """``n`` threads per process inside the block, for ``device``'s library: on NumPy
    xpcnn's own (:func:`cpu_threads`, BLAS at one); elsewhere BLAS's, and PyTorch's
    intra-op threads on torch. None leaves every library as it is."""
    if n is None:
        yield
    elif device.backend == "numpy":
        with cpu_threads(n):
            yield
    else:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=n, user_api="blas"), _torch_threads(n, device):
            yield


@contextlib.contextmanager
def _torch_threads(n: int, device: Device) -> Iterator[None]:
    if device.backend != "torch":
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    parts = [f"xpcnn {n or fast_path_threads()}"] if device.backend == "numpy" else []
    parts.append("BLAS " + (", ".join(blas) or "none loaded"))
    if device.backend == "torch":
        import torch

        parts.append(f"torch {torch.get_num_threads()}")
    return "threads: " + "; ".join(parts)


def fast_path_threads() -> int:
    """Threads the NumPy fast paths use here now: :func:`cpu_threads`' count inside
    its block, else every CPU the process may use."""
    from ._fast import _threads

    return _threads.num_threads()


def kernel_summary() -> str:
    """Which convolution the NumPy backend runs (the compiled kernels and their
    instruction set, or NumPy's GEMMs and why), for ``xpcnn info``."""
    from ._fast import compiled

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
    from ._fast import _threads, compiled

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


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    try:
        resolve_device("cuda")
    except DeviceError:
        return False
    return True


def gpu_names() -> list[str]:
    """Names of the visible GPUs (empty without CuPy or a GPU)."""
    if not gpu_available():
        return []
    import cupy

    n = cupy.cuda.runtime.getDeviceCount()
    return [cupy.cuda.runtime.getDeviceProperties(i)["name"].decode() for i in range(n)]


def _belongs_to(a: Any, xp: Any) -> bool:
    try:
        return array_namespace(a) is xp
    except TypeError:
        return False


def to_numpy(x: Any, *, copy: bool = False) -> np.ndarray:
    """Any supported array (NumPy, CuPy, torch, JAX, array-api-strict on any device) as NumPy.

    Without ``copy``, a NumPy array (or a CPU tensor) may come back as itself or a
    view; ``copy=True`` always gives an independent snapshot.
    """
    if is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        x = x.detach().cpu().numpy()
    elif array_api_compat.is_jax_array(x):
        return np.array(x)  # jax arrays copy to the host through __array__ (any device)
    elif array_api_compat.is_array_api_obj(x) and not is_numpy_array(x):
        if array_api_compat.is_array_api_strict_namespace(array_namespace(x)):
            import array_api_strict

            x = x.to_device(array_api_strict.Device("CPU_DEVICE"))
        return np.from_dlpack(x).copy()
    return np.array(x, copy=True) if copy else np.asarray(x)


def host_rng(seed: int | np.random.Generator | None = None) -> np.random.Generator:
    """The host random generator: weights and shuffles are drawn here, so a seed
    gives the same numbers on every backend."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def random_uniform(like: Any, shape: tuple[int, ...], *, seed_state: dict[str, Any]) -> Any:
    """Uniform numbers in [0, 1) with the dtype, namespace and device of array ``like``.

    The per-step seam for random masks (dropout): a GPU array gets numbers drawn
    on its own device, so no mask is copied from the host every step.

    - CuPy: a ``cupy.random.Generator`` on ``like``'s GPU;
    - torch: a ``torch.Generator`` on ``like``'s device;
    - any other backend (NumPy, JAX, array-api-strict, ...): the host
      ``numpy.random.Generator``, then ``xp.asarray(..., device=device(like))``.

    Parameters
    ----------
    like : floating array (float32 or float64)
    shape : output shape
    seed_state : dict
        Owned by the caller (a layer), e.g. ``{"seed": 0}``. ``seed_state["seed"]``
        (an int, a ``numpy.random.Generator`` or None for fresh entropy) seeds one
        generator per backend and device, created on first use and kept in the
        dict, so a given seed repeats the same sequence of masks on a given
        backend (the backends' generators differ from each other).

    Returns
    -------
    array of ``shape``, dtype of ``like``, on ``like``'s device.
    """
    xp = array_namespace(like)
    dev = device(like)
    shape = tuple(int(s) for s in shape)
    seed = seed_state.get("seed")
    if is_cupy_array(like):
        import cupy

        key = f"cupy:{dev.id}"
        with dev:
            if key not in seed_state:
                seed_state[key] = cupy.random.default_rng(_int_seed(seed))
            return seed_state[key].random(shape, dtype=like.dtype)
    if array_api_compat.is_torch_array(like):
        import torch

        key = f"torch:{like.device}"
        if key not in seed_state:
            gen = torch.Generator(device=like.device)
            if seed is None:
                gen.seed()
            else:
                gen.manual_seed(_int_seed(seed))
            seed_state[key] = gen
        return torch.rand(shape, generator=seed_state[key], dtype=like.dtype, device=like.device)
    if "host" not in seed_state:
        seed_state["host"] = np.random.default_rng(_int_seed(seed))
    bits = xp.finfo(like.dtype).bits
    u = seed_state["host"].random(shape, dtype=np.float32 if bits == 32 else np.float64)
    return xp.asarray(u, dtype=like.dtype, device=dev)


def rng_state(seed_state: dict[str, Any]) -> dict[str, np.ndarray]:
    """Host snapshots (uint8 arrays) of the generators in a :func:`random_uniform`
    ``seed_state``, for checkpoints: the host NumPy generator and torch generators.

    CuPy generators expose no state to restore; a resumed run draws fresh masks there.
    """
    out = {}
    for key, gen in seed_state.items():
        if key == "host":
            out[key] = np.frombuffer(json.dumps(gen.bit_generator.state).encode(), np.uint8).copy()
        elif key.startswith("torch:"):
            out[key] = gen.get_state().numpy().copy()
    return out


def set_rng_state(seed_state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Restore :func:`rng_state` snapshots into ``seed_state`` (the next draws continue
    the saved sequences)."""
    for key, a in arrays.items():
        if key == "host":
            gen = np.random.default_rng()
            gen.bit_generator.state = json.loads(np.asarray(a, np.uint8).tobytes())
            seed_state[key] = gen
        elif key.startswith("torch:"):
            import torch

            tgen = torch.Generator(device=key.split(":", 1)[1])
            tgen.set_state(torch.from_numpy(np.array(a, np.uint8)))
            seed_state[key] = tgen


@overload
def _int_seed(seed: None) -> None: ...
@overload
def _int_seed(seed: int | np.random.Generator) -> int: ...
def _int_seed(seed: int | np.random.Generator | None) -> int | None:
    """An integer seed for the backends' generators (a host Generator gives one draw)."""
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**62))
    return None if seed is None else int(seed)
