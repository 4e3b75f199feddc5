"""Shared test helpers: float64 numerical gradients and scale-aware comparisons.

These work on host NumPy float64 arrays only; the function under test is free to
move its argument to any backend (``backend.asarray``) and bring the result back
(``backend.to_numpy``), so one gradient check covers every backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

# The numerical-gradient helpers are public in xpcnn.testing (one copy).
from xpcnn.testing import assert_close_scaled, numerical_gradient, weighted_sum


def assert_gradients_match(
    backend: Any,
    forward: Callable[..., tuple[Any, Any]],
    backward: Callable[..., tuple[Any, ...]],
    inputs: list[np.ndarray],
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> None:
    """Float64 check of ``backward`` against central differences of ``forward``.

    ``forward(*device_inputs) -> (out, cache)``;
    ``backward(dout, cache, *device_inputs) -> tuple`` with one gradient per input
    (``None`` to skip one). The loss is ``sum(out * weights)`` with random weights
    unless given, so ``dout = weights``. The op runs on ``backend``; the differences
    are taken on the host in float64.
    """
    dev = [backend.asarray(a, "float64") for a in inputs]
    out, cache = forward(*dev)
    if weights is None:
        weights = rng.standard_normal(tuple(out.shape))
    grads = backward(backend.asarray(weights, "float64"), cache, *dev)
    assert len(grads) == len(inputs)
    checked = 0
    out_of = compiled_on_jax(backend, lambda *args: forward(*args)[0])
    for k, (a, g) in enumerate(zip(inputs, grads, strict=True)):
        if g is None:
            continue

        def loss(v: np.ndarray, k: int = k) -> float:
            args = list(dev)
            args[k] = backend.asarray(v, "float64")
            return weighted_sum(backend.to_numpy(out_of(*args)), weights)

        num = numerical_gradient(loss, a)
        assert_close_scaled(
            backend.to_numpy(g), num, rtol=1e-6, atol=1e-8, err_msg=f"gradient of input {k}"
        )
        checked += 1
    assert checked > 0


def distinct_values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Float64 values that are all different and at least 0.25 apart, roughly centred on 0:
    max pooling has no ties, even after a small central-difference perturbation."""
    n = math.prod(shape)
    return ((rng.permutation(n) - n / 2) / 4.0).reshape(shape)


def backend_device(backend: Any) -> Any:
    """The :class:`xpcnn.backend.Device` of a ``backend`` fixture value (what models take)."""
    from xpcnn.backend import Device

    return Device(backend.name, backend.xp, backend.device)


def assert_layer_gradients_match(
    backend: Any,
    make_layer: Callable[..., Any],
    x: np.ndarray,
    params: dict[str, np.ndarray],
    rng: np.random.Generator,
    *,
    forward: Callable[[Any, Any], Any] | None = None,
) -> None:
    """Float64 check of a layer's ``backward``: ``dx`` and every ``grads`` entry against
    central differences of its ``forward``.

    ``make_layer(**device_params)`` builds the layer from its parameters (already on
    ``backend``, float64); it is called afresh for every evaluation.
    ``forward(layer, x)`` runs it (default ``layer.forward(x)``). The loss is
    ``sum(out * weights)`` with random weights, so ``dout = weights`` (a Python float
    when the output is 0-d, as ``SoftmaxWithLoss.backward`` takes).
    """
    run = forward if forward is not None else (lambda layer, v: layer.forward(v))
    dev_params = {k: backend.asarray(v, "float64") for k, v in params.items()}
    layer = make_layer(**dev_params)
    out = run(layer, backend.asarray(x, "float64"))
    weights = rng.standard_normal(tuple(out.shape))
    dout = float(weights) if weights.ndim == 0 else backend.asarray(weights, "float64")
    dx = layer.backward(dout)
    assert set(layer.grads) == set(params), f"grads {sorted(layer.grads)} != {sorted(params)}"

    # A fresh layer per evaluation: a pure function of (x, params), compiled on JAX.
    forward_of = compiled_on_jax(backend, lambda x, p: run(make_layer(**p), x))

    def loss(x_host: np.ndarray, **override: np.ndarray) -> float:
        p = dict(dev_params)
        p.update({k: backend.asarray(v, "float64") for k, v in override.items()})
        out = forward_of(backend.asarray(x_host, "float64"), p)
        return weighted_sum(backend.to_numpy(out), weights)

    num_dx = numerical_gradient(loss, x)
    assert_close_scaled(backend.to_numpy(dx), num_dx, rtol=1e-6, atol=1e-8, err_msg="dx")
    for key, value in params.items():
        num = numerical_gradient(lambda v, key=key: loss(x, **{key: v}), value)
        assert_close_scaled(
            backend.to_numpy(layer.grads[key]), num, rtol=1e-6, atol=1e-8, err_msg=f"grads[{key!r}]"
        )


def compiled_on_jax(backend: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a pure function of arrays), compiled with ``jax.jit`` on the JAX backend.

    For the central-difference references, which evaluate a forward pass two times
    per element: eagerly JAX dispatches every operation (milliseconds a pass), compiled
    a pass is one call. The code under test (``backward``, ``gradient``) still runs
    eagerly; the references run the same forward code, traced (as a compiled training
    step runs it). Measured in the commit that added it (see the README)."""
    if backend.name != "jax":
        return fn
    import jax

    return jax.jit(fn)


def network_loss(backend: Any, net: Any, x: Any, t: Any) -> Callable[[], float]:
    """``net.loss(x, t)`` as a host float for the network's current parameters; on JAX
    one compiled function of the parameters and buffers (``xpcnn.train.compiled.functional``
    runs the network on them and restores it)."""
    if backend.name != "jax":
        return lambda: float(backend.to_numpy(net.loss(x, t)))
    from xpcnn.train.compiled import functional

    def pure(params: Any, buffers: Any) -> Any:
        with functional(net, params=params, buffers=buffers):
            return net.loss(x, t)

    compiled = compiled_on_jax(backend, pure)
    return lambda: float(backend.to_numpy(compiled(dict(net.params), dict(net.buffers))))


CODE_PATHS = ["default-path", "generic-path"]


def code_path_context(name: str) -> Any:
    """A context for running a test on one code path: ``"default-path"`` as configured
    (backend fast paths on where they exist), ``"generic-path"`` with them switched off
    (``xpcnn._fast.enabled(False)``), so fused/in-place variants and the generic
    array-API code are both held to the same reference. Skips the generic path when
    xpcnn has no fast-path switch (then the default path is the generic one)."""
    import contextlib

    import pytest

    if name == "default-path":
        return contextlib.nullcontext()
    try:
        from xpcnn import _fast
    except ImportError:
        pytest.skip("xpcnn has no fast-path switch: the default path is the generic one")
    return _fast.enabled(False)


# -- parameter grids shared by the op and layer tests -----------------------------------
# Small shapes: each numerical gradient runs the op twice per element.

# (N, C, H, W, FN, FH, FW, stride, pad): strides 1/2/3, pads 0/1/2, non-square inputs and filters
CONV_CASES = [
    pytest.param((2, 3, 5, 6, 2, 3, 3, 1, 0), id="s1-p0"),
    pytest.param((2, 2, 6, 5, 3, 3, 2, 2, 1), id="s2-p1-filter-3x2"),
    pytest.param((1, 2, 7, 8, 2, 2, 3, 3, 2), id="s3-p2-filter-2x3"),
    pytest.param((2, 1, 4, 5, 2, 4, 1, 1, 2), id="s1-p2-filter-4x1"),
    pytest.param((2, 2, 7, 6, 2, 3, 3, 2, 2), id="s2-p2-filter-3x3"),
    pytest.param((2, 3, 3, 4, 2, 1, 1, 1, 0), id="filter-1x1"),
    # FH*FW*C = 36 >= 32: the generic backward's one product for dW (fewer: one per image)
    pytest.param((2, 4, 5, 6, 3, 3, 3, 1, 1), id="C4-K36"),
]

# (N, C, H, W, PH, PW, stride, pad); pad <= half the window (PyTorch's and xpcnn's rule)
POOL_CASES = [
    pytest.param((2, 2, 4, 6, 2, 2, 2, 0), id="2x2-s2-p0"),
    pytest.param((1, 2, 5, 6, 3, 3, 1, 1), id="3x3-s1-p1"),
    pytest.param((2, 1, 7, 5, 3, 2, 2, 1), id="3x2-s2-p1"),
    pytest.param((1, 2, 6, 7, 4, 4, 3, 2), id="4x4-s3-p2"),
    pytest.param((2, 2, 7, 8, 2, 3, 3, 0), id="2x3-s3-p0"),
    pytest.param((1, 2, 3, 3, 1, 1, 1, 0), id="1x1-s1"),
]


# -- MPI jobs ---------------------------------------------------------------------------

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def mpi_available() -> str | None:
    """None when ``mpiexec`` and mpi4py are both present, else why MPI tests are skipped."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("mpi4py") is None:
        return 'mpi4py is not installed (pip install -e ".[mpi]")'
    if shutil.which("mpiexec") is None:
        return "mpiexec is not on PATH (the mpich wheel of the mpi extra provides one)"
    return None


def run_mpi(
    n: int, args: list[str], timeout: float = 120, launcher: Sequence[str] = (), **kwargs: Any
) -> Any:
    """``mpiexec LAUNCHER -n n python ARGS`` from the repository root with this
    checkout's xpcnn, one BLAS/OpenMP thread per rank; returns the CompletedProcess
    (text output).

    A job still running after ``timeout`` seconds is killed with its whole process
    group and the test fails: a hang is a failure, never a stalled CI.
    """
    import os
    import signal
    import subprocess
    import sys

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        **kwargs.pop("env", {}),
    }
    cmd = ["mpiexec", *launcher, "-n", str(n), sys.executable, *args]
    with subprocess.Popen(
        cmd,
        cwd=kwargs.pop("cwd", REPO),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the ranks die with it
        **kwargs,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(
                f"`{' '.join(cmd)}` hung: killed after {timeout} s\nstdout:\n{out}\nstderr:\n{err}"
            )
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def pool_inputs(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Pooling inputs of a kind: "distinct" values, many "ties", a "constant" image, or
    "special" values (NaN, infinities, signed zeros among normals)."""
    if kind == "distinct":
        return rng.permutation(math.prod(shape)).reshape(shape) / 7.0 - 3.0
    if kind == "ties":  # few values: many ties, which must go to the first maximum
        return rng.integers(-2, 3, shape).astype(np.float64)
    if kind == "constant":  # a blank image: every window is one big tie
        return np.full(shape, 0.25)
    x = rng.standard_normal(shape)  # "special": NaN, infinities, signed zeros
    flat = x.reshape(-1)
    idx = rng.permutation(flat.size)
    flat[idx[0::7]] = np.nan
    flat[idx[1::7]] = np.inf
    flat[idx[2::7]] = -np.inf
    flat[idx[3::7]] = -0.0
    flat[idx[4::7]] = 0.0
    return x
