"""The adapters, selected once by name or namespace, and :class:`Device`: a library and
a device of it, which is what the rest of xpcnn holds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device, is_numpy_array

from ._base import Adapter, DeviceError, NotInstalledError
from ._cupy import CuPyAdapter
from ._jax import JaxAdapter
from ._numpy import NumPyAdapter
from ._strict import StrictAdapter
from ._torch import TorchAdapter

#: One adapter per array library, in the order of :data:`BACKENDS`.
ADAPTERS: tuple[Adapter, ...] = (
    NumPyAdapter(),
    CuPyAdapter(),
    TorchAdapter(),
    JaxAdapter(),
    StrictAdapter(),
)

#: Array libraries ``resolve_device`` knows, by the name ``--backend`` takes.
BACKENDS = tuple(a.name for a in ADAPTERS)

_BY_NAME = {n: a for a in ADAPTERS for n in (a.name, *a.aliases)}
_GENERIC = Adapter()  # a namespace of no known library: plain array-API behaviour
#: The library of a ``--device`` given without ``--backend``.
_DEFAULT = {"cpu": "numpy", "cuda": "cupy"}


def adapter(name: str) -> Adapter:
    """The adapter of ``--backend`` ``name`` (also ``strict``, ``jax.numpy``; any case)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in _BY_NAME:
        raise DeviceError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    return _BY_NAME[key]


def adapter_of(x: Any) -> Adapter:
    """The adapter of array ``x`` (the generic one for other objects)."""
    return next((a for a in ADAPTERS if a.is_array(x)), _GENERIC)


def _adapter_for(xp: Any) -> Adapter | None:
    return next((a for a in ADAPTERS if a.is_namespace(xp)), None)


def _library(xp: Any) -> str:
    """The :data:`BACKENDS` name of a namespace (else its module name)."""
    lib = _adapter_for(xp)
    return lib.name if lib else getattr(xp, "__name__", str(xp))


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

    @property
    def adapter(self) -> Adapter:
        """The library's :class:`~xpcnn.backend.Adapter` (capabilities: ``.immutable``, ...)."""
        return _BY_NAME.get(self.backend, _GENERIC)

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Copy ``a`` (NumPy, a list, or an array of any supported backend) onto this device.

        ``dtype`` may be a dtype of ``xp`` or its name (``"float32"``).

        Raises
        ------
        DeviceError
            For float64 on JAX without ``jax_enable_x64``.
        """
        if dtype is not None:
            self.adapter.check_dtype(dtype)
        if isinstance(dtype, str):
            dtype = getattr(self.xp, dtype)
        if is_numpy_array(a):
            a = self.adapter.host_input(a)
        elif not _belongs_to(a, self.xp):
            a = to_numpy(a)
        with self.activate():
            return self.xp.asarray(a, dtype=dtype, device=self.device)

    def check_dtype(self, dtype: str) -> None:
        """Raise :class:`DeviceError` when this device cannot hold ``dtype`` (a name):
        JAX gives float64 only with ``jax_enable_x64`` (else it silently truncates)."""
        self.adapter.check_dtype(dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        """Array ``x`` (of this or any backend) as a host NumPy array (see :func:`to_numpy`)."""
        return to_numpy(x)

    @classmethod
    def of(cls, x: Any) -> Device:
        """The Device an existing array lives on (any array-API backend)."""
        xp = array_namespace(x)
        lib, dev = _adapter_for(xp), device(x)
        if lib is None:
            return cls(f"{_library(xp)}:{dev}", xp, dev)
        return cls(lib.label(dev), xp, dev, lib.name)

    def activate(self) -> AbstractContextManager[Any]:
        """Make this the current CUDA device (compat's CuPy creation functions ignore ``device=``)."""
        return self.adapter.activate(self.device)

    def __str__(self) -> str:
        return self.name


def _belongs_to(a: Any, xp: Any) -> bool:
    try:
        return array_namespace(a) is xp
    except TypeError:
        return False


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
        if backend is not None and adapter(backend).name != spec.backend:
            raise DeviceError(f"device {spec} is a {spec.backend} device, not {backend}")
        return spec
    text = None if spec is None else str(spec).strip()
    if backend is not None:
        lib = adapter(backend)
        return _resolve(lib, text, f"--backend {lib.name}")
    lib = adapter(_DEFAULT["cuda" if text and text.lower().startswith("cuda") else "cpu"])
    try:
        return _resolve(lib, text, f"--device {text}")
    except NotInstalledError as exc:
        if not lib.gpu_only:
            raise
        raise DeviceError(f"{exc}; or --backend torch / jax with a CUDA build of those") from None


def _resolve(lib: Adapter, text: str | None, what: str) -> Device:
    xp, dev = lib.resolve(text, what)
    return Device(lib.label(dev), xp, dev, lib.name)


def backend_devices(backend: str) -> list[str]:
    """The devices of an installed array library, as ``--device`` names
    (``["cpu", "cuda:0"]``).

    Raises
    ------
    DeviceError
        For an unknown backend or a library that is not installed.
    """
    lib = adapter(backend)
    lib.load(f"--backend {lib.name}")
    return lib.devices()


def devices_to_test() -> Iterator[Device]:
    """Each device :func:`xpcnn.testing.backends` runs on, named by its test id:
    every library's ``test_ids`` where it is installed (CuPy: where a GPU is visible)."""
    for lib in sorted(ADAPTERS, key=lambda a: a.test_rank):
        if lib.testable():
            for test_id, spec in lib.test_ids:
                yield replace(_resolve(lib, spec, f"--backend {lib.name}"), name=test_id)


def to_numpy(x: Any, *, copy: bool = False) -> np.ndarray:
    """Any supported array (NumPy, CuPy, torch, JAX, array-api-strict on any device) as NumPy.

    Without ``copy``, a NumPy array (or a CPU tensor) may come back as itself or a
    view; ``copy=True`` always gives an independent snapshot.
    """
    return adapter_of(x).to_numpy(x, copy)


#: Floating dtypes by name; float16 and bfloat16 serve inference (not every library has them).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def float_dtype(device: Device, name: str) -> Any:
    """The floating dtype ``name`` (one of :data:`FLOAT_DTYPES`) of ``device``'s library.

    Raises :class:`DeviceError` in one line when the library has no such dtype (NumPy
    and array-api-strict have no bfloat16, array-api-strict no float16) or ``name`` is
    not a floating dtype, and for float64 on JAX without 64-bit mode.
    """
    dt = getattr(device.xp, name, None) if name in FLOAT_DTYPES else None
    if dt is None:
        have = [n for n in FLOAT_DTYPES if getattr(device.xp, n, None) is not None]
        hint = "; bfloat16 needs --backend torch or jax" if name == "bfloat16" else ""
        raise DeviceError(
            f"{device.adapter.display or device.backend} has no {name}: "
            f"choose {', '.join(have)}{hint}"
        )
    device.check_dtype(name)
    return dt
