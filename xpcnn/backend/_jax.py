"""JAX: immutable arrays on its default device, the CPU or a GPU; float64 only in
64-bit mode. Random numbers come from the host (JAX's own are functional), except
in a compiled step (:class:`JaxCompiler`: ``jax.jit``, keys)."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

from ._base import Adapter, Compiler, DeviceError


class JaxAdapter(Adapter):
    name = "jax"
    aliases = ("jax.numpy",)
    module = "jax"
    display = "JAX"
    install = 'pip install "jax[cpu]", or "jax[cuda12]" for NVIDIA GPUs'
    distributions = ("jax",)
    immutable = True
    test_ids = (("jax", "cpu"),)
    test_rank = 3

    def is_namespace(self, xp: Any) -> bool:
        return array_api_compat.is_jax_namespace(xp)

    def is_array(self, x: Any) -> bool:
        return array_api_compat.is_jax_array(x)

    def pick(self, mod: Any, kind: str, index: int, spec: str | None) -> tuple[Any, Any]:
        import jax.numpy as jnp

        if kind == "default":
            return jnp, mod.devices()[0]
        if kind == "cpu":
            return jnp, mod.devices("cpu")[0]
        gpus = self._gpus()
        self.check_gpu_index(spec, index, len(gpus))
        return jnp, gpus[index]

    def devices(self) -> list[str]:
        return ["cpu"] + [f"cuda:{i}" for i in range(len(self._gpus()))]

    @staticmethod
    def _gpus() -> list[Any]:
        import jax

        with contextlib.suppress(RuntimeError):  # no GPU backend
            return list(jax.devices("gpu"))
        return []

    def label(self, dev: Any) -> str:
        return f"jax:{'cuda' if dev.platform == 'gpu' else dev.platform}:{dev.id}"

    def check_dtype(self, dtype: Any) -> None:
        name = dtype if isinstance(dtype, str) else str(np.dtype(dtype))
        if name == "float64":
            import jax

            if not jax.config.read("jax_enable_x64"):
                raise DeviceError(
                    "float64 on JAX needs 64-bit mode: set JAX_ENABLE_X64=1 in the environment, "
                    'or call jax.config.update("jax_enable_x64", True) before creating arrays'
                )

    def enable_float64(self) -> None:
        if importlib.util.find_spec("jax"):
            import jax

            jax.config.update("jax_enable_x64", True)

    def to_numpy(self, x: Any, copy: bool = False) -> np.ndarray:
        return np.array(x)  # jax arrays copy to the host through __array__ (any device)

    def compiler(self) -> Compiler:
        return JaxCompiler()


class JaxCompiler:
    """``jax.jit`` and JAX's keyed random numbers (:class:`~xpcnn.backend.Compiler`)."""

    def jit(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        import jax

        return jax.jit(fn)

    def key(self, seed: int) -> Any:
        # jax.random.key keeps 32 bits when 64-bit mode is off: fold the high bits in.
        import jax

        return jax.random.fold_in(jax.random.key(seed & 0xFFFFFFFF), seed >> 32)

    def fold_in(self, key: Any, n: Any) -> Any:
        import jax

        return jax.random.fold_in(key, n)

    def uniform(self, key: Any, shape: tuple[int, ...], dtype: Any) -> Any:
        import jax

        return jax.random.uniform(key, shape, dtype)

    def eval_shape(self, fn: Callable[..., Any], *args: Any) -> Any:
        import jax

        return jax.eval_shape(fn, *args)

    def is_traced(self, x: Any) -> bool:
        jax = sys.modules.get("jax")  # not imported: nothing can be traced
        return jax is not None and isinstance(x, jax.core.Tracer)
