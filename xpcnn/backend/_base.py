"""What every array library's adapter answers, with the generic array-API answers.

A library is one subclass of :class:`Adapter` in a module of its own (``_numpy.py``,
``_torch.py``, ...), listed once in ``_device.ADAPTERS``. A method a library does not
override gets the behaviour of a plain array-API library: devices ``cpu`` / ``cuda:N``,
random numbers drawn on the host and copied over, BLAS's threads only.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol, overload

import numpy as np
from array_api_compat import array_namespace, device, is_array_api_obj, is_numpy_array

from ..errors import XpcnnError

_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


class DeviceError(XpcnnError, RuntimeError):
    """The requested device cannot be used (bad name, library missing, no such device)."""


class NotInstalledError(DeviceError):
    """The library is not installed (so ``resolve_device`` can add where else to look)."""


class Compiler(Protocol):
    """A library that traces a function of arrays into one compiled function (JAX)."""

    def jit(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` compiled once per structure, shapes and dtypes of its array arguments."""
        ...

    def key(self, seed: int) -> Any:
        """A random key for any non-negative integer seed."""
        ...

    def fold_in(self, key: Any, n: Any) -> Any:
        """The key derived from ``key`` and the integer ``n`` (a traced value too)."""
        ...

    def uniform(self, key: Any, shape: tuple[int, ...], dtype: Any) -> Any:
        """Uniform [0, 1) numbers of ``shape`` and ``dtype`` from ``key``."""
        ...

    def eval_shape(self, fn: Callable[..., Any], *args: Any) -> Any:
        """The shapes and dtypes ``fn(*args)`` returns, traced, without computing it."""
        ...

    def is_traced(self, x: Any) -> bool:
        """Whether ``x`` is a traced value (a placeholder of a function being compiled)."""
        ...


class Adapter:
    """One array library as xpcnn uses it: its devices, host copies, random numbers,
    threads and capabilities. Instances are stateless; one per library.

    Class attributes
    ----------------
    name : the ``--backend`` name (:data:`xpcnn.backend.BACKENDS`); ``aliases`` also accepted.
    module, display, install : the module imported, the name in messages, how to install it.
    distributions : its pip packages, whose versions ``xpcnn info`` prints.
    immutable : arrays cannot be written in place (JAX): writes go through
        ``array_api_extra.at`` or ``where``, never item assignment.
    gpu_only : every device is a GPU (CuPy): ``--device cuda`` picks this library by default.
    test_ids : ``(test id, --device)`` pairs that :func:`xpcnn.testing.backends` runs on;
        ``test_rank`` orders the libraries there (NumPy, the reference, first).
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    module: ClassVar[str] = ""
    display: ClassVar[str] = ""
    install: ClassVar[str] = ""
    distributions: ClassVar[tuple[str, ...]] = ()
    immutable: ClassVar[bool] = False
    gpu_only: ClassVar[bool] = False
    test_ids: ClassVar[tuple[tuple[str, str], ...]] = ()
    test_rank: ClassVar[int] = 99

    # -- which namespaces and arrays are this library's ---------------------------------

    def is_namespace(self, xp: Any) -> bool:
        return False

    def is_array(self, x: Any) -> bool:
        return False

    # -- devices -----------------------------------------------------------------------------

    def load(self, what: str) -> Any:
        """The library's module, or a :class:`DeviceError` saying that ``what`` (the
        option that asked for it) needs it and how to install it."""
        try:
            return importlib.import_module(self.module)
        except ImportError as exc:
            raise NotInstalledError(
                f"{what} needs {self.display}, which is not installed: {self.install}"
            ) from exc

    def testable(self) -> bool:
        """Whether :func:`xpcnn.testing.backends` runs on it here (installed, by default)."""
        return importlib.util.find_spec(self.module) is not None

    def resolve(self, spec: str | None, what: str) -> tuple[Any, Any]:
        """``(namespace, device object)`` for a ``--device`` text (None: the library's
        default); ``what`` names the option in the error when the library is missing."""
        kind, index = self.parse(spec)
        mod = self.load(what)
        return self.pick(mod, kind, index, spec)

    def parse(self, spec: str | None) -> tuple[str, int]:
        """``("cpu" | "cuda" | "default", index)`` from ``cpu``, ``cuda`` or ``cuda:N``."""
        if spec is None:
            return "default", 0
        m = _DEVICE_RE.match(spec.lower())
        if m is None:
            raise DeviceError(
                f"unknown device {spec!r}: use 'cpu', 'cuda' or 'cuda:N' (N = GPU index)"
            )
        if m.group(1) == "cpu" and m.group(2) is not None:
            raise DeviceError(f"unknown device {spec!r}: the CPU takes no index, use 'cpu'")
        return m.group(1), int(m.group(2) or 0)

    def pick(self, mod: Any, kind: str, index: int, spec: str | None) -> tuple[Any, Any]:
        """The namespace and device of the parsed ``--device`` (``mod`` the library)."""
        raise NotImplementedError

    def check_gpu_index(self, spec: str | None, index: int, count: int) -> None:
        """A :class:`DeviceError` unless GPU ``index`` is among ``count``."""
        if count == 0:
            raise DeviceError(
                f"--backend {self.name} --device {spec}: {self.name} sees no GPU (a CPU-only "
                f"build, or no driver); install a CUDA build ({self.install}), or use --device cpu"
            )
        if index >= count:
            raise DeviceError(
                f"--device {spec}: only {count} GPU(s) visible to {self.name} "
                f"(cuda:0..cuda:{count - 1})"
            )

    def devices(self) -> list[str]:
        """Its devices as ``--device`` names (the library is installed)."""
        return ["cpu"]

    def label(self, dev: Any) -> str:
        """A :class:`~xpcnn.backend.Device`'s name for device object ``dev``."""
        return f"{self.name}:{dev}"

    def activate(self, dev: Any) -> AbstractContextManager[Any]:
        """A context in which ``dev`` is the library's current device."""
        return contextlib.nullcontext()

    # -- dtypes and host data ------------------------------------------------------------

    def check_dtype(self, dtype: Any) -> None:
        """Raise :class:`DeviceError` when the library cannot hold ``dtype`` (a name or a dtype)."""

    def enable_float64(self) -> None:
        """Let float64 arrays be float64 (where the library needs a switch for it)."""

    def host_input(self, a: np.ndarray) -> np.ndarray:
        """A NumPy array the library can take in its ``asarray``."""
        return a

    def to_numpy(self, x: Any, copy: bool = False) -> np.ndarray:
        """Array ``x`` of this library on the host (see :func:`xpcnn.backend.to_numpy`)."""
        if is_array_api_obj(x) and not is_numpy_array(x):
            return np.from_dlpack(x).copy()
        return np.array(x, copy=True) if copy else np.asarray(x)

    # -- random numbers ------------------------------------------------------------------

    def random_uniform(self, like: Any, shape: tuple[int, ...], seed_state: dict[str, Any]) -> Any:
        """Uniform [0, 1) numbers like ``like``; the generic way: drawn on the host with the
        ``"host"`` generator of ``seed_state``, then copied to ``like``'s device."""
        xp = array_namespace(like)
        if "host" not in seed_state:
            seed_state["host"] = np.random.default_rng(int_seed(seed_state.get("seed")))
        bits = xp.finfo(like.dtype).bits
        u = seed_state["host"].random(shape, dtype=np.float32 if bits == 32 else np.float64)
        return xp.asarray(u, dtype=like.dtype, device=device(like))

    def rng_snapshot(self, gen: Any) -> np.ndarray | None:
        """A host copy (uint8) of a generator this adapter keeps in a ``seed_state``
        under ``"<name>:<device>"``; None when the library cannot restore one."""
        return None

    def rng_restore(self, dev: str, state: np.ndarray) -> Any:
        """The generator of :meth:`rng_snapshot`'s ``state`` on device ``dev`` (None: none)."""
        return None

    # -- compiling -----------------------------------------------------------------------

    def compiler(self) -> Compiler | None:
        """What a compiled training step needs of the library (a tracing ``jit`` and
        functional random numbers), or None: it has none."""
        return None

    # -- threads -------------------------------------------------------------------------

    def threads(self, n: int) -> AbstractContextManager[Any]:
        """``n`` threads per process inside the block: BLAS's, by default."""
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=n, user_api="blas")

    def thread_parts(self, n: int | None, blas: str) -> list[str]:
        """The parts of the ``threads:`` log line, ``blas`` being BLAS's."""
        return [blas]

    def training_threads(self) -> AbstractContextManager[Any]:
        """What the Trainer enters while it trains, threads as they are otherwise:
        nothing, by default."""
        return contextlib.nullcontext()


def host_snapshot(gen: np.random.Generator) -> np.ndarray:
    """A NumPy generator's state as uint8 (JSON) for a checkpoint."""
    return np.frombuffer(json.dumps(gen.bit_generator.state).encode(), np.uint8).copy()


def host_restore(state: np.ndarray) -> np.random.Generator:
    gen = np.random.default_rng()
    gen.bit_generator.state = json.loads(np.asarray(state, np.uint8).tobytes())
    return gen


@overload
def int_seed(seed: None) -> None: ...
@overload
def int_seed(seed: int | np.random.Generator) -> int: ...
def int_seed(seed: int | np.random.Generator | None) -> int | None:
    """An integer seed for the backends' generators (a host Generator gives one draw)."""
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**62))
    return None if seed is None else int(seed)
