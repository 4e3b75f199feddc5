"""Every fast path equals the generic array-API path it stands in for.

The generic path is the reference: each test runs an op (or a whole training
step) twice, with ``xpcnn._fast.enabled(False)`` and with fast paths on, and
compares. Where a fast path reorders floating-point sums (the per-image GEMMs
of the NumPy convolution) results agree to rounding; everywhere else they are
equal, NaN, infinities and ties included. Backends: the fast paths exist for
NumPy and CuPy (the latter runs only where a GPU is visible); the tests that
the switch changes nothing (the ReLU + max pooling op, Adam) run on every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from conftest import BACKENDS, Backend
from helpers import assert_close_scaled, pool_inputs

from xpcnn import _fast
from xpcnn.backend import Device, to_numpy
from xpcnn.models import MODELS, SimpleConvNet, build_model
from xpcnn.ops import (
    Im2colCache,
    col2im,
    conv2d_forward,
    conv2d_relu_forward,
    im2col,
    max_pool2d_forward,
    relu_forward,
    relu_max_pool2d_forward,
)
from xpcnn.optim import Adam

FAST_BACKENDS = [b for b in BACKENDS if b.name in ("numpy", "cupy")]


@pytest.fixture(autouse=True)
def fast_paths_on() -> Iterator[None]:
    """Every test here starts with fast paths on, whatever ``XPCNN_FAST`` says."""
    with _fast.enabled(True):
        yield


@pytest.fixture(params=FAST_BACKENDS, ids=lambda b: b.name)
def fast_backend(request: pytest.FixtureRequest) -> Backend:
    """The backends that have fast paths (NumPy; CuPy where a GPU is visible)."""
    return request.param


def both(fn: Callable[[], Any]) -> tuple[Any, Any]:
    """``fn()`` on the generic path, then with fast paths on."""
    with _fast.enabled(False):
        generic = fn()
    with _fast.enabled(True):
        fast = fn()
    return generic, fast


def host(*arrays: Any) -> list[np.ndarray]:
    return [None if a is None else to_numpy(a) for a in arrays]


def tol(dtype: str) -> dict[str, float]:
    """Rounding tolerance for results whose sums are ordered differently."""
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-12}


def assert_same(fast: np.ndarray, generic: np.ndarray, what: str) -> None:
    """Equal values (NaN where NaN), same shape and dtype."""
    assert fast.shape == generic.shape, what
    assert fast.dtype == generic.dtype, what
    np.testing.assert_array_equal(fast, generic, err_msg=what)


# -- the seam ---------------------------------------------------------------------------------


def test_lookup_dispatches_by_backend_and_switch(backend):
    x = backend.asarray(np.zeros((1, 1, 2, 2)), "float32")
    impl = _fast.lookup("max_pool2d_forward", x)
    if backend.name in ("numpy", "cupy"):
        assert impl is not None and impl.__module__.startswith("xpcnn._fast.")
    else:
        assert impl is None  # torch, array-api-strict: the generic code
    with _fast.enabled(False):
        assert _fast.lookup("max_pool2d_forward", x) is None
        assert not _fast.is_enabled()
    assert _fast.is_enabled()


def test_lookup_of_a_misspelt_op_raises(backend):
    """A misspelt name must not silently run the generic code, whatever the switch."""
    x = backend.asarray(np.zeros((1, 1, 2, 2)), "float32")
    with pytest.raises(ValueError, match="unknown fast-path op 'max_pool_forward'"):
        _fast.lookup("max_pool_forward", x)
    with _fast.enabled(False), pytest.raises(ValueError, match="known ops are"):
        _fast.lookup("max_pool_forward", x)


def test_every_backend_module_function_is_a_known_op():
    """What the backend modules offer under an op's name is in the registry (parsed,
    so the CuPy module is checked without a GPU), and every registered op exists."""
    import ast
    from pathlib import Path

    import xpcnn._fast

    offered: set[str] = set()
    for name in ("numpy_ops", "cupy_ops"):
        tree = ast.parse((Path(xpcnn._fast.__file__).parent / f"{name}.py").read_text())
        functions = {
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
        }
        offered |= functions & set(_fast.OPS)
        unknown = {f for f in functions if f.endswith(("_forward", "_update", "im2col", "col2im"))}
        assert unknown <= _fast.OPS, f"{name}: {sorted(unknown - _fast.OPS)} not in _fast.OPS"
    assert offered == _fast.OPS, f"registered but implemented nowhere: {_fast.OPS - offered}"


def test_switch_is_per_thread():
    """``enabled(False)`` in one thread leaves another thread's switch alone."""
    import threading

    inside, other = threading.Event(), threading.Event()
    seen: list[bool] = []

    def worker() -> None:
        inside.wait(5)
        seen.append(_fast.is_enabled())
        other.set()

    thread = threading.Thread(target=worker)
    thread.start()
    with _fast.enabled(False):
        inside.set()
        other.wait(5)
        assert not _fast.is_enabled()
    thread.join(5)
    assert seen == [_default_switch()]


def _default_switch() -> bool:
    import os

    return os.environ.get("XPCNN_FAST", "1").strip().lower() not in ("0", "false", "no", "off")


# -- convolution ------------------------------------------------------------------------------

# (N, C, H, W, FN, FH, FW, stride, pad)
CONV_GRID = [
    (2, 1, 28, 28, 4, 5, 5, 1, 0),  # SimpleConvNet's shape, smaller
    (2, 3, 7, 7, 2, 3, 3, 1, 1),
    (3, 2, 8, 9, 3, 3, 2, 2, 0),
    (2, 2, 9, 8, 2, 2, 3, 3, 2),
    (1, 4, 5, 5, 3, 5, 5, 1, 2),
    (2, 2, 6, 6, 3, 1, 1, 1, 0),
    (2, 3, 4, 7, 2, 4, 1, 2, 1),
]


@pytest.mark.parametrize("case", CONV_GRID, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("need_dx", [True, False])
@pytest.mark.parametrize(
    "forward", [conv2d_forward, conv2d_relu_forward], ids=["conv", "conv-relu"]
)
def test_conv2d_forward_backward_equal_generic(fast_backend, dtype, rng, case, need_dx, forward):
    """The convolution, and the convolution + ReLU as one op (the compiled kernels for
    float32, or the fast convolution then the fast ReLU), give the generic results."""
    N, C, H, W, FN, FH, FW, stride, pad = case
    bk = fast_backend
    x = bk.asarray(rng.standard_normal((N, C, H, W)), dtype)
    w = bk.asarray(rng.standard_normal((FN, C, FH, FW)), dtype)
    b = bk.asarray(rng.standard_normal(FN), dtype)
    OH, OW = (H + 2 * pad - FH) // stride + 1, (W + 2 * pad - FW) // stride + 1
    dout = bk.asarray(rng.standard_normal((N, FN, OH, OW)), dtype)

    def run() -> list[np.ndarray]:
        out, cache = forward(x, w, b, stride, pad)
        dx, dW, db = cache.backward(dout, need_dx=need_dx)
        return host(out, dx, dW, db)

    generic, fast = both(run)
    for name, g, f in zip(("out", "dx", "dW", "db"), generic, fast, strict=True):
        if g is None:
            assert f is None and not need_dx
            continue
        assert f.dtype == g.dtype, name
        assert_close_scaled(f, g, err_msg=name, **tol(dtype))


def test_numpy_conv_fast_path_is_taken_and_caches_cross_the_switch(rng):
    """The cache says which backward it needs, so a forward pass run with fast
    paths on and a backward run with them off (or the reverse) still agree."""
    x, w, b = (rng.standard_normal(s) for s in ((2, 2, 6, 6), (3, 2, 3, 3), (3,)))
    dout = rng.standard_normal((2, 3, 6, 6))
    _, fast_cache = conv2d_forward(x, w, b, 1, 1)
    assert type(fast_cache).__name__ == "ChwnConvCache"
    with _fast.enabled(False):
        _, generic_cache = conv2d_forward(x, w, b, 1, 1)
        assert type(generic_cache) is Im2colCache
        crossed = fast_cache.backward(dout)
    reference = generic_cache.backward(dout)
    for c, r in zip(crossed, reference, strict=True):
        assert_close_scaled(c, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("block_bytes", [1, 5000, 1 << 30])
@pytest.mark.parametrize("stride", [1, 2])
def test_numpy_conv_in_blocks_of_rows_equals_generic(monkeypatch, rng, block_bytes, stride):
    """The fast convolution works a few output rows at a time (1 row, 2 rows,
    all rows here); any block size gives the generic results. With stride 2,
    dx is folded like col2im and is equal exactly (its terms arrive in the
    generic order); with stride 1 it is a transposed convolution (other sums)."""
    from xpcnn._fast import numpy_conv

    monkeypatch.setattr(numpy_conv, "_BLOCK_BYTES", block_bytes)
    transposed_calls = []
    transposed = numpy_conv._transposed_input_gradient
    monkeypatch.setattr(
        numpy_conv,
        "_transposed_input_gradient",
        lambda *a: transposed_calls.append(1) or transposed(*a),
    )
    # 2 filters on 2 channels: stride 1 takes the transposed convolution
    x, w, b = (rng.standard_normal(s) for s in ((5, 2, 7, 6), (2, 2, 3, 2), (2,)))
    OH, OW = (7 + 2 - 3) // stride + 1, (6 + 2 - 2) // stride + 1
    dout = rng.standard_normal((5, 2, OH, OW))

    def run() -> list[np.ndarray]:
        out, cache = conv2d_forward(x, w, b, stride, 1)
        return host(out, *cache.backward(dout))

    generic, fast = both(run)
    assert len(transposed_calls) == (stride == 1)
    if stride == 2:
        assert_same(fast[1], generic[1], "dx")
    for k, name in ((0, "out"), (1, "dx"), (2, "dW"), (3, "db")):
        f, g = fast[k], generic[k]
        np.testing.assert_allclose(f, g, rtol=1e-12, atol=1e-12, err_msg=name)


def test_numpy_chwn_layout_flows_through_conv_relu_pool_and_back(rng):
    """The fast convolution stores (N, C, H, W) arrays as (C, H, W, N); ReLU,
    pooling and the next convolution keep that layout forward and backward, so
    no layer pays a transposing copy (the point of the layout)."""

    def chwn(a: np.ndarray) -> bool:
        return a.transpose(1, 2, 3, 0).flags.c_contiguous

    x = rng.standard_normal((4, 2, 8, 8)).astype(np.float32)
    w1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((3, 2, 3, 3), (3, 3, 3, 3)))
    b = np.zeros(3, np.float32)
    h1, _ = conv2d_forward(x, w1, b, 1, 1)
    h2, relu = relu_forward(h1)
    h3, pool = max_pool2d_forward(h2, 2, 2, 2, 0)
    h4, conv2 = conv2d_forward(h3, w2, b, 1, 1)
    assert all(chwn(a) for a in (h1, h2, h3, h4))
    d3 = conv2.backward(np.ones_like(h4))[0]  # FN <= C: transposed convolution
    d2 = pool.backward(d3)
    d1 = relu.backward(d2)
    assert all(chwn(a) for a in (d3, d2, d1))


@pytest.mark.parametrize("stride", [1, 2])
def test_empty_batch_equal_generic(fast_backend, rng, stride):
    """N = 0 runs through the fast convolution, pooling and ReLU like the generic path."""
    bk = fast_backend
    x = bk.asarray(np.zeros((0, 2, 6, 6)), "float32")
    w = bk.asarray(rng.standard_normal((3, 2, 3, 3)), "float32")
    b = bk.asarray(rng.standard_normal(3), "float32")

    def run() -> list[np.ndarray]:
        out, conv = conv2d_forward(x, w, b, stride, 1)
        pooled, pool = max_pool2d_forward(out, 2, 2, 2, 0)
        y, relu = relu_forward(pooled)
        dpool = relu.backward(bk.asarray(np.zeros(y.shape), "float32"))
        return host(out, y, *conv.backward(pool.backward(dpool)))

    generic, fast = both(run)
    for name, f, g in zip(("out", "y", "dx", "dW", "db"), fast, generic, strict=True):
        assert_same(f, g, name)


@pytest.mark.parametrize("case", CONV_GRID, ids=lambda c: "x".join(map(str, c)))
def test_im2col_col2im_equal_generic(fast_backend, dtype, rng, case):
    N, C, H, W, _, FH, FW, stride, pad = case
    bk = fast_backend
    x = bk.asarray(rng.standard_normal((N, C, H, W)), dtype)
    OH, OW = (H + 2 * pad - FH) // stride + 1, (W + 2 * pad - FW) // stride + 1
    col = bk.asarray(rng.standard_normal((N * OH * OW, C * FH * FW)), dtype)
    generic, fast = both(
        lambda: host(im2col(x, FH, FW, stride, pad), col2im(col, (N, C, H, W), FH, FW, stride, pad))
    )
    assert_same(fast[0], generic[0], "im2col")
    # col2im adds the offsets in the same order on both paths: equal, not just close.
    assert_same(fast[1], generic[1], "col2im")


# -- max pooling ------------------------------------------------------------------------------

# (N, C, H, W, PH, PW, stride, pad)
POOL_GRID = [
    (2, 3, 8, 8, 2, 2, 2, 0),  # tiles the input: the usual case
    (2, 2, 7, 9, 2, 2, 2, 0),  # odd sizes: the last row/column is left out
    (2, 2, 7, 7, 3, 3, 2, 1),  # overlapping, padded (AlexNet-like)
    (1, 2, 6, 5, 2, 3, 1, 1),  # stride 1, non-square window
    (2, 1, 9, 9, 3, 3, 3, 0),  # tiles with 3x3
    (2, 2, 5, 5, 2, 2, 3, 0),  # gaps between windows
    (1, 2, 4, 4, 1, 1, 1, 0),  # 1x1 window
    (1, 1, 5, 6, 4, 4, 2, 2),  # pad half the window
]


@pytest.mark.parametrize("case", POOL_GRID, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("kind", ["distinct", "ties", "constant", "special"])
def test_max_pool_forward_backward_equal_generic(fast_backend, dtype, rng, case, kind):
    N, C, H, W, PH, PW, stride, pad = case
    bk = fast_backend
    x = bk.asarray(pool_inputs(rng, (N, C, H, W), kind), dtype)
    OH, OW = (H + 2 * pad - PH) // stride + 1, (W + 2 * pad - PW) // stride + 1
    dout = bk.asarray(rng.standard_normal((N, C, OH, OW)), dtype)

    def run() -> list[np.ndarray]:
        out, cache = max_pool2d_forward(x, PH, PW, stride, pad)
        return host(out, cache.backward(dout))

    generic, fast = both(run)
    assert_same(fast[0], generic[0], "out")
    assert_same(fast[1], generic[1], "dx")


def test_numpy_pool_caches_cross_the_switch(rng):
    x = pool_inputs(rng, (2, 2, 6, 6), "special")
    dout = rng.standard_normal((2, 2, 3, 3))
    _, fast_cache = max_pool2d_forward(x, 2, 2, 2)
    assert type(fast_cache).__name__ == "MaxPoolCache"
    with _fast.enabled(False):
        _, generic_cache = max_pool2d_forward(x, 2, 2, 2)
        crossed = fast_cache.backward(dout)
    assert_same(crossed, generic_cache.backward(dout), "fast cache, generic switch")


# -- ReLU and the bitwise select ---------------------------------------------------------------


def test_relu_forward_backward_equal_generic(fast_backend, dtype, rng):
    bk = fast_backend
    x = bk.asarray(pool_inputs(rng, (3, 4, 5, 6), "special"), dtype)
    dout = bk.asarray(pool_inputs(rng, (3, 4, 5, 6), "special"), dtype)

    def run() -> list[np.ndarray]:
        out, relu = relu_forward(x)
        return host(out, relu.mask, relu.backward(dout))

    generic, fast = both(run)
    for name, g, f in zip(("out", "mask", "dx"), generic, fast, strict=True):
        assert_same(f, g, name)


@pytest.mark.parametrize("np_dtype", [np.float32, np.float64])
def test_bitwise_where_is_bit_identical(rng, np_dtype):
    from xpcnn._fast import numpy_ops

    a = pool_inputs(rng, (5, 7, 9), "special").astype(np_dtype)
    mask = rng.random((5, 7, 9)) < 0.5
    uint = np.dtype(f"u{a.itemsize}")  # compare bits: -0.0 and NaN payloads too
    expected = np.where(mask, a, np_dtype(0))
    got = numpy_ops.where(mask, a)
    np.testing.assert_array_equal(got.view(uint), expected.view(uint))
    strided = a[:, ::2, 1::2]  # any strides for the source and an out= view
    out = np.empty((5, 7, 18), np_dtype)[:, :, ::2][:, ::2, 1::2]
    numpy_ops.where(mask[:, ::2, 1::2], strided, out=out)
    np.testing.assert_array_equal(
        out.view(uint), np.where(mask[:, ::2, 1::2], strided, np_dtype(0)).view(uint)
    )


# -- ReLU then max pooling as one op, and whole networks -------------------------------------


@pytest.mark.parametrize("case", POOL_GRID, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("kind", ["distinct", "ties", "special"])
def test_relu_max_pool_equals_relu_then_pool(backend, dtype, rng, case, kind):
    """The one op gives exactly the two ops' results (NaN, -inf, -0.0, ties and
    padding included), forward and backward, whether a fast path runs it as
    pooling then ReLU (NumPy, CuPy) or not, with the switch on and off."""
    N, C, H, W, PH, PW, stride, pad = case
    bk = backend
    x = bk.asarray(pool_inputs(rng, (N, C, H, W), kind), dtype)
    OH, OW = (H + 2 * pad - PH) // stride + 1, (W + 2 * pad - PW) // stride + 1
    dout_host = rng.standard_normal((N, C, OH, OW))
    dout_host.reshape(-1)[::5] = np.nan  # NaN gradients are routed (or masked) alike
    dout = bk.asarray(dout_host, dtype)

    def fused() -> list[np.ndarray]:
        out, cache = relu_max_pool2d_forward(x, PH, PW, stride, pad)
        return host(out, cache.backward(dout))

    def unfused() -> list[np.ndarray]:
        y, relu = relu_forward(x)
        out, cache = max_pool2d_forward(y, PH, PW, stride, pad)
        return host(out, relu.backward(cache.backward(dout)))

    reference, _ = both(unfused)
    for results in both(fused):
        assert_same(results[0], reference[0], "out")
        assert_same(results[1], reference[1], "dx")


@pytest.mark.parametrize("case", POOL_GRID, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("kind", ["distinct", "ties", "special"])
def test_nan_free_max_pool_equals_max_pool_without_nan(backend, dtype, rng, case, kind):
    """``nan_free=True`` (the promise of an input without NaN, a ReLU's output) gives
    exactly the default's results on such inputs (-inf, -0.0, ties and padding
    included), forward and backward, with the switch on and off."""
    N, C, H, W, PH, PW, stride, pad = case
    bk = backend
    x_host = pool_inputs(rng, (N, C, H, W), kind)
    x = bk.asarray(np.where(np.isnan(x_host), -np.inf, x_host), dtype)
    OH, OW = (H + 2 * pad - PH) // stride + 1, (W + 2 * pad - PW) // stride + 1
    dout = bk.asarray(rng.standard_normal((N, C, OH, OW)), dtype)

    def pooled(nan_free: bool) -> list[np.ndarray]:
        out, cache = max_pool2d_forward(x, PH, PW, stride, pad, nan_free=nan_free)
        return host(out, cache.backward(dout))

    reference, _ = both(lambda: pooled(False))
    for results in both(lambda: pooled(True)):
        assert_same(results[0], reference[0], "out")
        assert_same(results[1], reference[1], "dx")


def _model_gradients(
    bk: Backend, model: str, dtype: str, rng: np.random.Generator, **config: Any
) -> tuple[list[dict[str, np.ndarray]], list[Any]]:
    x = rng.random((4, 1, 28, 28))
    t = rng.integers(0, 10, 4)
    dev = Device(bk.name, bk.xp, bk.device)
    results, plans = [], []
    for enabled in (False, True):
        net = build_model({"model": model, "dtype": dtype, **config}, device=dev, seed=3)
        with _fast.enabled(enabled):
            grads = net.gradient(bk.asarray(x, dtype), bk.asarray(t))
            scores = net.predict(bk.asarray(x, dtype))
        results.append({"scores": to_numpy(scores)} | {k: to_numpy(g) for k, g in grads.items()})
        plans.append([type(step).__name__ for step in net._plan])
    return results, plans


def test_simple_convnet_gradients_equal_generic(backend, dtype, rng):
    """Fast paths leave a training step's gradients unchanged (to rounding), on
    every backend; the network runs the same steps whatever the switch."""
    (generic, fast), (plan_off, plan_on) = _model_gradients(backend, "simple", dtype, rng)
    assert plan_on == plan_off and plan_on.count("_ConvReluMaxPool") == 1
    for key in generic:
        assert_close_scaled(fast[key], generic[key], err_msg=key, **tol(dtype))


@pytest.mark.skipif("deep" not in MODELS, reason="DeepConvNet is not built yet")
def test_deep_convnet_gradients_equal_generic(fast_backend, rng):
    (generic, fast), (_, plan_on) = _model_gradients(
        fast_backend, "deep", "float64", rng, dropout_ratio=0.0
    )
    assert plan_on.count("_ConvRelu") == 3 and plan_on.count("_ConvReluMaxPool") == 3
    for key in generic:
        assert_close_scaled(fast[key], generic[key], err_msg=key, **tol("float64"))


def test_network_with_nan_input_gives_the_same_scores_on_both_paths(backend, rng):
    """NaN pixels: the network's scores are the same with fast paths on and off (to
    the rounding of the GEMMs), and exactly those of running its layers one by one
    (ReLU then pooling) on the same path. ReLU maps NaN to 0, so NaN must not
    leak into the scores."""
    net = SimpleConvNet(
        input_dim=(1, 8, 8),
        conv_param={"filter_num": 3},
        hidden_size=5,
        seed=0,
        dtype="float64",
        device=Device(backend.name, backend.xp, backend.device),
    )
    x_host = rng.standard_normal((3, 1, 8, 8))
    x_host[0, 0, 2, 3] = np.nan
    x_host[1, 0, :4, :4] = np.nan
    x = backend.asarray(x_host, "float64")
    generic, fast = both(lambda: to_numpy(net.predict(x)))
    y = x
    for layer in net.layers:
        y = layer.forward(y, False)
    assert not np.isnan(generic).any()
    assert_close_scaled(fast, generic, err_msg="scores", **tol("float64"))
    assert_same(fast, to_numpy(y), "scores, layer by layer")


def test_fusion_plan_pairs_conv_relu_then_relu_max_pool_only():
    """Convolution + ReLU fuse first, with a max pooling after them into one step; a ReLU
    left over fuses with a max pooling after it; average pooling and other orders run
    layer by layer."""
    from xpcnn.models import NetBuilder
    from xpcnn.models.sequential import _fused

    net = (
        NetBuilder((1, 8, 8), seed=0)
        .conv(2, 3, pad=1)
        .relu()
        .pool(1)
        .conv(2, 3, pad=1)
        .relu()
        .pool(2, mode="avg")
        .conv(2, 3, pad=1)
        .pool(2)
        .relu()
        .conv(2, 1)
        .batchnorm()
        .relu()
        .pool(1)
        .affine(3)
        .build()
    )
    names = [type(step).__name__ for step in _fused(net.layers)]
    assert names == [
        "_ConvReluMaxPool",
        "_ConvRelu",
        "Pooling",
        "Convolution",
        "Pooling",
        "Relu",
        "Convolution",
        "BatchNormalization",
        "_ReluMaxPool",
        "Affine",
    ]


# -- Adam: one fused update where the seam has one, bit for bit --------------------------------


def _adam_run(bk: Backend, dtype: str, enabled: bool, steps: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    params = {k: bk.asarray(rng.standard_normal(s), dtype) for k, s in (("W", (5, 3)), ("b", (3,)))}
    opt = Adam(lr=0.01)
    with _fast.enabled(enabled):
        for _ in range(steps):
            grads = {
                k: bk.asarray(rng.standard_normal(tuple(v.shape)), dtype) for k, v in params.items()
            }
            opt.update(params, grads)
    out = {k: to_numpy(v) for k, v in params.items()}
    out.update({f"state/{k}": to_numpy(v) for k, v in opt.state_arrays().items()})
    return out


def test_adam_fused_is_bit_identical_to_generic(backend, dtype):
    generic = _adam_run(backend, dtype, enabled=False)
    fast = _adam_run(backend, dtype, enabled=True)
    for key in generic:
        np.testing.assert_array_equal(fast[key], generic[key], err_msg=key)


def test_adam_fused_update_exists_for_numpy_and_cupy(backend):
    # the bit-identity test above then checks them on their backends
    x = backend.asarray(np.zeros(3), "float32")
    assert (_fast.lookup("adam_update", x) is not None) == (backend.name in ("numpy", "cupy"))


@pytest.mark.parametrize("enabled", [False, True])
def test_adam_never_writes_parameters_or_returned_state(backend, enabled):
    """Aliasing is the same on both paths: each step binds new parameter arrays and
    writes none it was given; ``state_arrays()`` returns copies."""
    shared = backend.asarray(np.ones((2, 3)), "float32")
    params = {"W": shared}
    opt = Adam()
    grads = {"W": backend.asarray(np.full((2, 3), 0.5), "float32")}
    with _fast.enabled(enabled):
        opt.update(params, grads)
        first = params["W"]
        state = opt.state_arrays()
        kept = {k: to_numpy(v).copy() for k, v in state.items()}
        opt.update(params, grads)
    assert first is not shared and params["W"] is not first
    np.testing.assert_array_equal(to_numpy(shared), np.ones((2, 3)))
    assert not np.array_equal(to_numpy(params["W"]), to_numpy(first)), "no step was taken"
    for k, v in state.items():
        np.testing.assert_array_equal(to_numpy(v), kept[k], err_msg=k)
    np.testing.assert_array_equal(to_numpy(grads["W"]), np.full((2, 3), 0.5))


def test_adam_accepts_read_only_parameters():
    W = np.broadcast_to(np.float32(1.0), (2, 3))  # read-only, like shape_only networks
    params = {"W": W}
    Adam().update(params, {"W": np.full((2, 3), 0.5, np.float32)})
    assert params["W"] is not W and params["W"].flags.writeable
    np.testing.assert_array_equal(W, np.ones((2, 3), np.float32))


def test_adam_loaded_state_is_copied(rng):
    net = SimpleConvNet(input_dim=(1, 8, 8), conv_param={"filter_num": 2}, hidden_size=4, seed=0)
    opt = Adam()
    x, t = rng.random((3, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 3)
    opt.update(net.params, net.gradient(x, t))
    saved = {k: v.copy() for k, v in opt.state_arrays().items()}
    restored = Adam()
    restored.load_state_arrays(saved, opt.iter)
    before = {k: v.copy() for k, v in saved.items()}
    restored.update(net.params, net.gradient(x, t))
    for k in saved:
        np.testing.assert_array_equal(saved[k], before[k], err_msg=k)


# -- threads: the NumPy fast paths share their work among threads ----------------------------


def test_split_cuts_a_range_into_balanced_contiguous_parts():
    from xpcnn._fast._threads import split

    for n in range(12):
        for parts in range(1, 6):
            ranges = split(n, parts)
            assert len(ranges) == max(1, min(parts, n)), (n, parts)
            assert [i for r in ranges for i in r] == list(range(n)), (n, parts)
            lengths = [len(r) for r in ranges]
            assert max(lengths) - min(lengths) <= 1, (n, parts)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2", None])
def test_threads_must_be_a_positive_integer(bad):
    from xpcnn import cpu_threads

    with pytest.raises(ValueError, match="threads must be a positive integer"), cpu_threads(bad):
        pass


def test_cpu_threads_sets_the_fast_paths_threads_and_one_blas_thread_for_a_block():
    from threadpoolctl import threadpool_info

    from xpcnn import cpu_threads
    from xpcnn._fast._threads import num_threads

    def blas() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before, threads = blas(), num_threads()
    with cpu_threads(3):
        assert num_threads() == 3
        assert set(blas()) <= {1}
    assert num_threads() == threads and blas() == before


def test_map_ranges_waits_for_every_part_then_raises_the_first_error():
    import time

    from xpcnn._fast import _threads

    for failing in (0, 2):  # the calling thread's part, a pool thread's part
        done: list[int] = []

        def part(r: range, failing: int = failing, done: list[int] = done) -> int:
            if r.start == failing:
                raise KeyError(f"part {r.start}")
            time.sleep(0.05)
            done.append(r.start)
            return r.start

        with _threads.using(3), pytest.raises(KeyError, match=f"part {failing}"):
            _threads.map_ranges(part, 3)
        assert sorted(done) == sorted({0, 1, 2} - {failing})
    with _threads.using(3):
        assert _threads.map_ranges(lambda r: list(r), 7) == [[0, 1, 2], [3, 4], [5, 6]]
        assert _threads.map_ranges(len, 10, max_parts=2) == [5, 5]  # small work: fewer parts
        assert _threads.map_ranges(len, 10, max_parts=0) == [10]


def test_map_ranges_from_several_threads_with_other_counts():
    """Callers on other threads, each with its own count, share the pool (which grows
    to the largest) and each gets all its parts back."""
    from concurrent.futures import ThreadPoolExecutor

    from xpcnn._fast import _threads

    def caller(n: int) -> bool:
        with _threads.using(n):
            return all(_threads.map_ranges(len, 2 * n) == [2] * n for _ in range(50))

    with ThreadPoolExecutor(4) as callers:
        assert list(callers.map(caller, [2, 5, 3, 4] * 3)) == [True] * 12


def test_map_ranges_inside_a_part_runs_on_that_thread():
    """A part that splits work again runs it itself (pool threads start at one
    thread), so nested calls cannot wait on a full pool."""
    import threading

    from xpcnn._fast import _threads

    def inner(r: range) -> int:
        return threading.get_ident()

    def outer(r: range) -> bool:
        return set(_threads.map_ranges(inner, 4)) == {threading.get_ident()}

    with _threads.using(2):
        assert _threads.map_ranges(outer, 2) == [False, True]  # the caller keeps its 2 threads


def test_map_ranges_parts_see_the_callers_errstate_and_fast_path_switch():
    """A training loop under ``np.errstate(all="ignore")`` stays silent on every thread."""
    from xpcnn._fast import _threads

    with _threads.using(2), np.errstate(over="raise"), _fast.enabled(False):
        seen = _threads.map_ranges(lambda r: (np.geterr()["over"], _fast.is_enabled()), 2)
    assert seen == [("raise", False)] * 2


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # JAX threads: the child uses none
def test_map_ranges_works_in_a_forked_child():
    """A child forked after the pool started has none of its threads: it starts its own."""
    import multiprocessing

    from xpcnn._fast import _threads

    with _threads.using(2):
        assert _threads.map_ranges(len, 4) == [2, 2]  # the parent's pool exists
    child = multiprocessing.get_context("fork").Process(target=_threaded_sum_or_exit_1)
    child.start()
    child.join(30)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung on the parent's pool")
    assert child.exitcode == 0


def _threaded_sum_or_exit_1() -> None:
    from xpcnn._fast import _threads

    with _threads.using(2):
        ok = _threads.map_ranges(sum, 4) == [1, 5]
    raise SystemExit(0 if ok else 1)


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(f"u{a.itemsize}") if a.dtype.kind == "f" else a


def _one_thread(fn: Callable[[], Any]) -> Any:
    from xpcnn._fast import _threads

    with _threads.using(1):
        return fn()


@pytest.mark.parametrize("case", POOL_GRID[:4], ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("kind", ["ties", "special"])
def test_numpy_pool_and_relu_on_threads_equal_one_thread_bit_for_bit(threads_used, rng, case, kind):
    N, C, H, W, PH, PW, stride, pad = case
    x = pool_inputs(rng, (N, C, H, W), kind).astype(np.float32)
    OH, OW = (H + 2 * pad - PH) // stride + 1, (W + 2 * pad - PW) // stride + 1
    dout = pool_inputs(rng, (N, C, OH, OW), "special").astype(np.float32)

    @np.errstate(invalid="ignore")  # overlapping windows add inf and -inf gradients
    def run() -> list[np.ndarray]:
        y, relu = relu_forward(x)
        out, cache = max_pool2d_forward(y, PH, PW, stride, pad)
        dy = cache.backward(dout)
        return [y, relu.mask, out, dy, relu.backward(dy)]

    threaded = run()
    assert len(threads_used) > 1
    for name, t, o in zip(
        ("relu", "mask", "pool", "pool dx", "relu dx"), threaded, _one_thread(run), strict=True
    ):
        np.testing.assert_array_equal(_bits(t), _bits(o), err_msg=name)


@pytest.mark.parametrize("case", CONV_GRID, ids=lambda c: "x".join(map(str, c)))
def test_numpy_conv_on_threads_equals_generic(threads_used, rng, case):
    """Each thread unfolds and multiplies its own output rows; the weight gradient
    adds the threads' parts. Stride-1 dx takes the transposed convolution on
    several threads, also where FN > C (one thread folds there)."""
    N, C, H, W, FN, FH, FW, stride, pad = case
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((FN, C, FH, FW))
    b = rng.standard_normal(FN)
    OH, OW = (H + 2 * pad - FH) // stride + 1, (W + 2 * pad - FW) // stride + 1
    dout = rng.standard_normal((N, FN, OH, OW))

    def run() -> list[np.ndarray]:
        out, cache = conv2d_forward(x, w, b, stride, pad)
        return host(out, *cache.backward(dout))

    generic, threaded = both(run)
    assert len(threads_used) > 1
    for name, g, t in zip(("out", "dx", "dW", "db"), generic, threaded, strict=True):
        assert_close_scaled(t, g, err_msg=name, **tol("float64"))


@pytest.mark.skipif("deep" not in MODELS, reason="DeepConvNet is not built yet")
def test_deep_convnet_gradients_on_threads_equal_generic(threads_used, rng):
    (generic, threaded), _ = _model_gradients(
        next(b for b in BACKENDS if b.name == "numpy"), "deep", "float64", rng, dropout_ratio=0.0
    )
    assert len(threads_used) > 1
    for key in generic:
        assert_close_scaled(threaded[key], generic[key], err_msg=key, **tol("float64"))
