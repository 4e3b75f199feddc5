"""One backend fixture for the whole suite.

Every op/layer/model test takes ``backend`` (and often ``dtype``) and runs on
numpy, array-api-strict (default device and the GPU-like ``device1``), torch
and jax (CPU, when installed) and cupy (only when a GPU is visible): the list
comes from :func:`xpcnn.testing.backends`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xpcnn.backend import Device
from xpcnn.testing import xp_backend_params

# The plugin also switches JAX to 64-bit mode for the session (float64 tests).
pytest_plugins = ["xpcnn.testing"]

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: The backends under test: ``xpcnn.testing.backends()`` (one definition for the
#: suite and for users' tests), with their ids.
BACKENDS, BACKEND_IDS = xp_backend_params()

# Kept for the tests that annotate the fixture's type.
Backend = Device


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


@pytest.fixture(autouse=True, scope="session")
def _jax_compilation_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One XLA compilation per distinct program in the session: the compiled-step tests
    build many networks of one architecture (resumes, seeds, ranks), whose programs are
    the same (the values are inputs). A compile costs seconds on a busy 2-core machine."""
    if importlib.util.find_spec("jax") is None:
        yield
        return
    import jax

    options = {
        "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("jax-cache")),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    before = {k: getattr(jax.config, k) for k in options}
    for k, v in options.items():
        jax.config.update(k, v)
    yield
    for k, v in before.items():
        jax.config.update(k, v)


@pytest.fixture(params=BACKENDS, ids=BACKEND_IDS)
def backend(request: pytest.FixtureRequest) -> Device:
    """A :class:`xpcnn.backend.Device` named by its test id (``.name``, ``.xp``,
    ``.device``, ``.asarray(host, dtype)``, ``.to_numpy(x)``)."""
    return request.param


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


@pytest.fixture
def threads_used(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[int]]:
    """Fast paths on three threads, sharing out even small arrays; yields the set of
    threads that ran a part, so a test can check that the work was shared."""
    import threading

    from xpcnn._fast import _threads, compiled

    monkeypatch.setattr(_threads, "PARALLEL_MIN", 0)
    monkeypatch.setattr(compiled, "PARALLEL_MACS", 0)
    seen: set[int] = set()
    map_ranges = _threads.map_ranges

    def recording(fn: Callable[[range], Any], n: int, *args: Any, **kwargs: Any) -> list[Any]:
        def part(r: range) -> Any:
            seen.add(threading.get_ident())
            return fn(r)

        return map_ranges(part, n, *args, **kwargs)

    monkeypatch.setattr(_threads, "map_ranges", recording)
    with _threads.using(3):
        yield seen
