"""One backend fixture for the whole suite.

Every op/layer/model test takes ``backend`` (and often ``dtype``) and runs on
numpy, array-api-strict (default device and the GPU-like ``device1``), torch
(CPU, when installed) and cupy (only when a GPU is visible).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xpcnn.backend import gpu_available, to_numpy

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass
class Backend:
    """A (namespace, device) pair under test."""

    name: str
    xp: Any
    device: Any

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Host data -> array on this backend/device (dtype given as a string or xp dtype)."""
        if isinstance(dtype, str):
            dtype = getattr(self.xp, dtype)
        a = np.asarray(a)
        if self.name == "cupy":
            return self.xp.asarray(a, dtype=dtype)
        return self.xp.asarray(a, dtype=dtype, device=self.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return to_numpy(x)

    def __repr__(self) -> str:
        return self.name


def _backends() -> list[Any]:
    import array_api_compat.numpy as np_xp

    params = [pytest.param(("numpy", np_xp, "cpu"), id="numpy")]
    if importlib.util.find_spec("array_api_strict"):
        import array_api_strict as strict

        params.append(pytest.param(("strict", strict, strict.Device("CPU_DEVICE")), id="strict"))
        params.append(
            pytest.param(("strict-device1", strict, strict.Device("device1")), id="strict-device1")
        )
    if importlib.util.find_spec("torch"):
        import array_api_compat.torch as torch_xp

        params.append(pytest.param(("torch", torch_xp, "cpu"), id="torch"))
    if gpu_available():
        import array_api_compat.cupy as cp_xp
        import cupy

        params.append(pytest.param(("cupy", cp_xp, cupy.cuda.Device(0)), id="cupy"))
    return params


BACKENDS = _backends()


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread():
    """The suite's tensors are tiny: torch's intra-op threads only contend
    (about 80x slower on a busy 2-core machine)."""
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return Backend(*request.param)


@pytest.fixture(params=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def mnist_dir() -> Path:
    d = SHARED_DATA / "mnist"
    if not (d / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("../shared/data/mnist is not present")
    return d
