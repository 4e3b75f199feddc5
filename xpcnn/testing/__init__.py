"""Test a layer on every installed array library: the portability kit.

- :func:`backends`: the installed backends (NumPy; array-api-strict on its CPU and
  on its GPU-like ``device1``; PyTorch; JAX; CuPy where a GPU is visible), each a
  :class:`~xpcnn.backend.Device` with ``.name`` (the test id), ``.xp``, ``.device``,
  ``.asarray(host_array, dtype=None)`` and ``.to_numpy(x)``.
- :func:`check_layer`: a layer's ``backward`` against float64 central differences,
  for the input and every entry of ``layer.params``, plus dtype/device checks.
- :func:`check_jit`: the layer traces under ``jax.jit`` (as a compiled training
  step traces it) and computes there what it computes eagerly; a failure names the
  layer and the cause (control flow on an array value, item assignment, a host
  conversion, random numbers drawn on the host).
- A pytest plugin: ``pytest_plugins = ["xpcnn.testing"]`` in a test module or
  ``conftest.py`` gives an ``xp_backend`` fixture parametrised over :func:`backends`
  (ids ``numpy``, ``strict``, ``strict-device1``, ``torch``, ``jax``, ``cupy``),
  and switches JAX to 64-bit mode (``jax_enable_x64``) at session start so float64
  tests run there too.

This module imports neither pytest nor any optional array library at import time.
Its failures are explicit ``AssertionError`` messages, so pytest need not rewrite
its asserts (PYTEST_DONT_REWRITE): importing it before pytest loads the plugin
gives no warning.

Example::

    # test_my_layer.py
    import numpy as np
    from xpcnn.testing import check_layer

    pytest_plugins = ["xpcnn.testing"]

    def test_my_layer(xp_backend):
        rng = np.random.default_rng(0)
        W = xp_backend.asarray(rng.standard_normal((4, 3)), "float64")
        x = xp_backend.asarray(rng.standard_normal((2, 4)), "float64")
        check_layer(MyLayer(W), x)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device

from .._numerical import numerical_gradient
from ..backend import Device, DeviceError, devices_to_test, enable_float64, to_numpy
from ._jit import check_jit

__all__ = [
    "assert_close_scaled",
    "backends",
    "check_jit",
    "check_layer",
    "enable_jax_x64",
    "numerical_gradient",
    "weighted_sum",
    "xp_backend_params",
]


@functools.cache
def _backends() -> tuple[Device, ...]:
    return tuple(devices_to_test())


def backends() -> list[Device]:
    """The installed backends to test on, each a :class:`~xpcnn.backend.Device` whose
    ``name`` is its test id: ``numpy``; ``strict`` and ``strict-device1``
    (array-api-strict's CPU and its ``device1``, which refuses host conversion and
    mixing devices like a GPU does); ``torch`` (CPU); ``jax`` (CPU); ``cupy`` (GPU 0,
    only when a GPU is visible).

    ``b.asarray(host_array, dtype=None)`` (dtype an ``xp`` dtype or a name such as
    ``"float64"``) moves data there; ``b.to_numpy(x)`` brings any array back.
    float64 on JAX needs ``jax_enable_x64`` (:func:`enable_jax_x64`; the pytest
    plugin enables it).
    """
    return list(_backends())


def xp_backend_params() -> tuple[list[Device], list[str]]:
    """``(backends(), ids)`` for ``pytest.fixture(params=..., ids=...)`` or
    ``pytest.mark.parametrize``."""
    found = backends()
    return found, [b.name for b in found]


def enable_jax_x64() -> None:
    """Switch JAX (when installed) to 64-bit mode, so float64 arrays are float64.

    Call it before creating JAX arrays; float32 then has to be asked for
    explicitly, as xpcnn always does.
    """
    enable_float64()


# -- numerical gradients -------------------------------------------------------------


def weighted_sum(out: np.ndarray, weights: np.ndarray) -> float:
    """``sum(out * weights)`` correctly rounded (``math.fsum``): a scalar loss whose
    gradient with respect to ``out`` is ``weights``, with minimal rounding noise
    for central differences."""
    out = np.asarray(out, dtype=np.float64)
    if out.shape != weights.shape:
        raise ValueError(f"output shape {out.shape} does not match weights {weights.shape}")
    return math.fsum((out * weights).ravel().tolist())


def assert_close_scaled(
    actual: np.ndarray,
    expected: np.ndarray,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    err_msg: str = "",
) -> None:
    """``|actual - expected| <= atol * scale + rtol * |expected|`` elementwise with
    ``scale = max(1, max|expected|)``, so the absolute floor grows with the data.

    Also checks the shapes match exactly (no broadcasting).
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{err_msg}: shape {actual.shape} != expected {expected.shape}")
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=err_msg)


# -- check_layer -----------------------------------------------------------------------


def _backend_name(x: Any) -> str:
    """``"jax (jax:cpu:0)"``: the test id when ``x`` is on one of :func:`backends`."""
    dev = Device.of(x)
    for b in _backends():
        if b.xp is dev.xp and b.device == dev.device:
            return b.name
    return dev.name


def check_layer(
    layer: Any,
    x: Any,
    *,
    seed: int = 0,
    eps: float = 1e-6,
    rtol: float = 1e-6,
    atol: float = 1e-8,
) -> None:
    """Check a layer's ``backward`` on ``x``'s backend.

    1. ``layer.forward(x)`` and ``layer.backward(dout)`` keep ``x``'s dtype, device
       and array library: the output, ``dx`` (shaped like ``x``) and every
       ``layer.grads[k]`` (shaped like ``layer.params[k]``, one per parameter).
    2. In float64 (``x`` and the parameters are cast on their device when they are
       float32), ``dx`` and every ``grads[k]`` match central differences of the loss
       ``sum(forward(x) * w)`` for random weights ``w`` (so ``dout = w``).

    Parameters
    ----------
    layer : an :class:`xpcnn.layers.Layer` (or any object with ``forward(x)``,
        ``backward(dout)``, ``params`` and ``grads`` dicts). ``forward`` must be
        deterministic and read its parameters from ``layer.params`` on each call
        (the parameters are swapped for perturbed copies, then restored).
    x : floating array (any shape the layer takes), on the backend under test.
        Keep it small: every element of ``x`` and of each parameter costs two
        forward passes.
    seed : seed of the random ``w``.
    eps, rtol, atol : central-difference step and tolerances (elementwise
        ``|analytic - numerical| <= atol * max(1, max|numerical|) + rtol * |numerical|``).

    Raises
    ------
    AssertionError
        Naming the backend, the gradient (``dx`` or ``grads['W']``) and the error.
    """
    where = _backend_name(x)
    ref = Device.of(x)
    rng = np.random.default_rng(seed)

    def fail(what: str, problem: str) -> None:
        raise AssertionError(f"check_layer on {where}: {what}: {problem}")

    def same_place(a: Any, what: str, shape: tuple[int, ...], dtype: Any) -> None:
        try:
            same_lib = array_namespace(a) is ref.xp
        except TypeError:
            same_lib = False
        if not same_lib:
            fail(
                what, f"is a {type(a).__module__}.{type(a).__name__}, not an array of {ref.backend}"
            )
        if device(a) != ref.device:
            fail(what, f"is on device {device(a)}, not on the input's {ref.device}")
        if a.dtype != dtype:
            fail(what, f"has dtype {a.dtype}, expected {dtype}")
        if tuple(a.shape) != shape:
            fail(what, f"has shape {tuple(a.shape)}, expected {shape}")

    # 1. dtype, device and shapes, in x's own dtype.
    out = layer.forward(x)
    same_place(out, "forward output", tuple(out.shape), x.dtype)
    w = rng.standard_normal(tuple(out.shape))
    dx = layer.backward(ref.asarray(w, x.dtype))
    same_place(dx, "dx", tuple(x.shape), x.dtype)
    if set(layer.grads) != set(layer.params):
        fail("grads", f"keys {sorted(layer.grads)} differ from params {sorted(layer.params)}")
    for k, p in layer.params.items():
        same_place(layer.grads[k], f"grads[{k!r}]", tuple(p.shape), p.dtype)

    # 2. gradients in float64, on the same device.
    try:
        ref.check_dtype("float64")
    except DeviceError as exc:
        fail("float64 gradient check", str(exc))
    analytic, numeric = _float64_gradients(layer, x, ref, w, eps)
    for what, num in numeric.items():
        got = analytic[what]
        scale = max(1.0, float(np.max(np.abs(num)))) if num.size else 1.0
        err = np.abs(got - num) - (atol * scale + rtol * np.abs(num))
        if num.size and float(np.max(err)) > 0:
            i = np.unravel_index(int(np.argmax(err)), num.shape)
            fail(
                what,
                "does not match central differences: "
                f"max abs error {float(np.max(np.abs(got - num))):.3g} "
                f"(at {tuple(int(j) for j in i)}: backward {got[i]:.6g}, numerical {num[i]:.6g}; "
                f"rtol {rtol:g}, atol {atol:g})",
            )


def _float64_gradients(
    layer: Any, x: Any, ref: Device, w: np.ndarray, eps: float
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(analytic, numeric)`` host gradients of ``sum(forward(x) * w)`` in float64 on
    ``ref``, keyed ``"dx"`` and ``"grads['W']"``; the layer's parameters are restored."""
    f64 = "float64"
    original = dict(layer.params)
    params64 = {k: ref.asarray(p, f64) for k, p in original.items()}
    try:
        layer.params.update(params64)
        x64 = ref.asarray(x, f64)
        x_host = to_numpy(x64)
        layer.forward(x64)
        analytic = {"dx": to_numpy(layer.backward(ref.asarray(w, f64)))}
        analytic.update({f"grads[{k!r}]": to_numpy(layer.grads[k]) for k in original})

        def loss(x_new: np.ndarray, key: str | None = None, p_new: Any = None) -> float:
            if key is not None:
                layer.params[key] = ref.asarray(p_new, f64)
            try:
                return weighted_sum(to_numpy(layer.forward(ref.asarray(x_new, f64))), w)
            finally:
                if key is not None:
                    layer.params[key] = params64[key]

        numeric = {"dx": numerical_gradient(loss, x_host, eps)}
        for k, p in params64.items():
            numeric[f"grads[{k!r}]"] = numerical_gradient(
                functools.partial(loss, x_host, k), to_numpy(p), eps
            )
    finally:
        layer.params.update(original)
    return analytic, numeric


# -- pytest plugin (hooks only: no pytest import) ----------------------------------------


def pytest_configure(config: Any) -> None:
    """float64 on JAX for the whole session (created float32 must be asked for)."""
    enable_jax_x64()


def pytest_generate_tests(metafunc: Any) -> None:
    """Parametrise every test that takes ``xp_backend`` over :func:`backends`."""
    if "xp_backend" in metafunc.fixturenames:
        found, ids = xp_backend_params()
        metafunc.parametrize("xp_backend", found, ids=ids)
