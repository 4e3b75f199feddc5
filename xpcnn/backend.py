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
from typing import Any

import array_api_compat
import numpy as np
from array_api_compat import array_namespace, device, is_cupy_array, is_numpy_array

__all__ = [
    "Device",
    "DeviceError",
    "array_namespace",
    "blas_summary",
    "device",
    "gpu_available",
    "gpu_names",
    "host_rng",
    "namespace",
    "random_uniform",
    "resolve_device",
    "rng_state",
    "set_rng_state",
    "to_device",
    "to_numpy",
]

_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")

_CUPY_HINT = (
    'install CuPy with `pip install "xpcnn[cuda12]"` (CUDA 12) or `"xpcnn[cuda13]"` (CUDA 13)'
)


class DeviceError(RuntimeError):
    """The requested device cannot be used (bad name, CuPy missing, no GPU)."""


@dataclass(frozen=True)
class Device:
    """A resolved compute target.

    Attributes
    ----------
    name : str
        Canonical name, ``"cpu"`` or ``"cuda:N"``.
    xp : module
        Array-API-compatible namespace (``array_api_compat.numpy`` or ``.cupy``).
    device : object
        The namespace's device object, passed as ``device=`` to creation calls.
    """

    name: str
    xp: Any
    device: Any

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Copy ``a`` (NumPy, a list, or an array of any supported backend) onto this device.

        ``dtype`` may be a dtype of ``xp`` or its name (``"float32"``).
        """
        if isinstance(dtype, str):
            dtype = getattr(self.xp, dtype)
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

    @classmethod
    def of(cls, x: Any) -> Device:
        """The Device an existing array lives on (any array-API backend)."""
        xp = array_namespace(x)
        return cls(f"{xp.__name__}:{device(x)}", xp, device(x))

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


def resolve_device(spec: str | Device = "cpu") -> Device:
    """Resolve ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` to a :class:`Device`.

    Raises
    ------
    DeviceError
        For an unknown name, a CUDA request without CuPy installed, without a
        visible GPU, or with an index past the number of GPUs.
    """
    if isinstance(spec, Device):
        return spec
    m = _DEVICE_RE.match(str(spec).strip().lower())
    if m is None:
        raise DeviceError(f"unknown device {spec!r}: use 'cpu', 'cuda' or 'cuda:N' (N = GPU index)")
    kind, index = m.group(1), int(m.group(2) or 0)
    if kind == "cpu":
        if m.group(2) is not None:
            raise DeviceError(f"unknown device {spec!r}: the CPU takes no index, use 'cpu'")
        import array_api_compat.numpy as np_xp

        return Device("cpu", np_xp, "cpu")
    try:
        import cupy
    except ImportError as exc:
        raise DeviceError(
            f"--device {spec} needs CuPy, which is not installed: {_CUPY_HINT}"
        ) from exc
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

    return Device(f"cuda:{index}", cp_xp, cupy.cuda.Device(index))


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


def namespace(*arrays: Any) -> Any:
    """The array-API namespace shared by ``arrays`` (``array_api_compat.array_namespace``)."""
    return array_namespace(*arrays)


def _belongs_to(a: Any, xp: Any) -> bool:
    try:
        return array_namespace(a) is xp
    except TypeError:
        return False


def to_numpy(x: Any, *, copy: bool = False) -> np.ndarray:
    """Any supported array (NumPy, CuPy, torch, array-api-strict on any device) as NumPy.

    Without ``copy``, a NumPy array (or a CPU tensor) may come back as itself or a
    view; ``copy=True`` always gives an independent snapshot.
    """
    if is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        x = x.detach().cpu().numpy()
    elif array_api_compat.is_array_api_obj(x) and not is_numpy_array(x):
        if array_api_compat.is_array_api_strict_namespace(array_namespace(x)):
            import array_api_strict

            x = x.to_device(array_api_strict.Device("CPU_DEVICE"))
        return np.from_dlpack(x).copy()
    return np.array(x, copy=True) if copy else np.asarray(x)


def to_device(x: Any, like: Any) -> Any:
    """Copy array ``x`` (any backend) onto the namespace and device of array ``like``."""
    return Device.of(like).asarray(x)


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
    - any other backend (NumPy, array-api-strict, ...): the host
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

            gen = torch.Generator(device=key.split(":", 1)[1])
            gen.set_state(torch.from_numpy(np.array(a, np.uint8)))
            seed_state[key] = gen


def _int_seed(seed: int | np.random.Generator | None) -> int | None:
    """An integer seed for the backends' generators (a host Generator gives one draw)."""
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**62))
    return None if seed is None else int(seed)
