"""CuPy: NVIDIA GPUs only; the library ``--device cuda`` picks by default."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import array_api_compat
import numpy as np
from array_api_compat import device

from ._base import Adapter, DeviceError, int_seed


class CuPyAdapter(Adapter):
    name = "cupy"
    module = "cupy"
    display = "CuPy"
    install = (
        "pip install cupy-cuda12x (CUDA 12) or cupy-cuda13x (CUDA 13), "
        'or pip install ".[cuda12]" from a clone of xpcnn'
    )
    distributions = ("cupy-cuda12x", "cupy-cuda13x", "cupy")
    gpu_only = True
    test_ids = (("cupy", "cuda:0"),)
    test_rank = 4

    def is_namespace(self, xp: Any) -> bool:
        return array_api_compat.is_cupy_namespace(xp)

    def is_array(self, x: Any) -> bool:
        return array_api_compat.is_cupy_array(x)

    def testable(self) -> bool:
        return bool(self.gpu_names())

    def parse(self, spec: str | None) -> tuple[str, int]:
        return ("cuda", 0) if spec is None else super().parse(spec)

    def pick(self, mod: Any, kind: str, index: int, spec: str | None) -> tuple[Any, Any]:
        if kind != "cuda":
            raise DeviceError(
                f"--device {spec}: CuPy runs on GPUs only; use --device cuda, or --backend numpy for the CPU"
            )
        try:
            count = mod.cuda.runtime.getDeviceCount()
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

        return cp_xp, mod.cuda.Device(index)

    def devices(self) -> list[str]:
        import cupy

        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception:  # CUDARuntimeError when there is no driver
            n = 0
        return [f"cuda:{i}" for i in range(n)]

    def gpu_names(self) -> list[str]:
        """Names of the visible GPUs (empty without CuPy or a GPU)."""
        try:
            import cupy

            n = cupy.cuda.runtime.getDeviceCount()
        except Exception:  # not installed, or CUDARuntimeError when there is no driver
            return []
        return [cupy.cuda.runtime.getDeviceProperties(i)["name"].decode() for i in range(n)]

    def label(self, dev: Any) -> str:
        return f"cuda:{dev.id}"

    def activate(self, dev: Any) -> AbstractContextManager[Any]:
        # compat's CuPy creation functions ignore device=: the current device decides.
        return dev

    def to_numpy(self, x: Any, copy: bool = False) -> np.ndarray:
        return x.get()

    def random_uniform(self, like: Any, shape: tuple[int, ...], seed_state: dict[str, Any]) -> Any:
        import cupy

        dev = device(like)
        key = f"cupy:{dev.id}"
        with dev:
            if key not in seed_state:
                seed_state[key] = cupy.random.default_rng(int_seed(seed_state.get("seed")))
            return seed_state[key].random(shape, dtype=like.dtype)
