"""The book's layers (``xpcnn.layers``) on every backend of the ``backend`` fixture.

Gradients are checked in float64 against central differences of the layer's own
``forward`` (``helpers.assert_layer_gradients_match``): ``dx`` and every entry of
``grads``. The ops underneath have their own tests (``test_ops.py``); these check the
layer objects: what they keep between ``forward`` and ``backward``, their
``params``/``grads`` dicts, ``output_shape`` and their errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from array_api_compat import device as device_of
from helpers import CONV_CASES, POOL_CASES, assert_layer_gradients_match, distinct_values

from xpcnn.layers import (
    LRN,
    Affine,
    BatchNormalization,
    Convolution,
    Pooling,
    Relu,
    Sigmoid,
    SoftmaxWithLoss,
)
from xpcnn.ops import conv_output_size

# --------------------------------------------------------------------------------------------
# Parameter grids: small, since each numerical gradient runs the layer twice per element
# --------------------------------------------------------------------------------------------


# (x shape, W shape)
AFFINE_CASES = [
    pytest.param((3, 5), (5, 4), id="2d-input"),
    pytest.param((3, 2, 3, 2), (12, 4), id="4d-input"),
    pytest.param((2, 3, 1, 1), (3, 2), id="4d-input-1x1"),
]


def _dtype_of(backend: Any, name: str) -> Any:
    return getattr(backend.xp, name)


def _expected_device(backend: Any) -> Any:
    """The device that arrays created on ``backend`` report."""
    return device_of(backend.asarray(np.zeros(1), "float32"))


# --------------------------------------------------------------------------------------------
# 1. Float64 numerical gradient checks of every layer, every backend
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CONV_CASES)
def test_convolution_gradients_numerical(backend, rng, case):
    N, C, H, W, FN, FH, FW, stride, pad = case
    assert_layer_gradients_match(
        backend,
        lambda W, b: Convolution(W, b, stride=stride, pad=pad),
        rng.standard_normal((N, C, H, W)),
        {"W": rng.standard_normal((FN, C, FH, FW)), "b": rng.standard_normal(FN)},
        rng,
    )


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pooling_gradients_numerical(backend, rng, mode, case):
    N, C, H, W, PH, PW, stride, pad = case
    # distinct values: max pooling has no ties, so its gradient is defined and stable under eps
    assert_layer_gradients_match(
        backend,
        lambda: Pooling(PH, PW, stride=stride, pad=pad, mode=mode),
        distinct_values(rng, (N, C, H, W)),
        {},
        rng,
    )


@pytest.mark.parametrize(("x_shape", "w_shape"), AFFINE_CASES)
def test_affine_gradients_numerical(backend, rng, x_shape, w_shape):
    assert_layer_gradients_match(
        backend,
        Affine,
        rng.standard_normal(x_shape),
        {"W": rng.standard_normal(w_shape), "b": rng.standard_normal(w_shape[1])},
        rng,
    )


def test_relu_gradient_numerical(backend, rng):
    shape = (2, 3, 4, 2)
    x = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 2.0, size=shape)  # away from 0
    assert_layer_gradients_match(backend, Relu, x, {}, rng)


def test_sigmoid_gradient_numerical(backend, rng):
    assert_layer_gradients_match(backend, Sigmoid, 3.0 * rng.standard_normal((3, 2, 5)), {}, rng)


def _labels(backend: Any, kind: str, idx: np.ndarray, K: int, dtype: str = "float64") -> Any:
    """Integer labels (N,) or one-hot labels (N, K) for class indices ``idx`` on ``backend``."""
    if kind == "integer":
        return backend.asarray(idx, "int64")
    return backend.asarray(np.eye(K)[idx], dtype)


@pytest.mark.parametrize("labels", ["integer", "one-hot"])
def test_softmax_with_loss_gradient_numerical(backend, rng, labels):
    N, K = 4, 5
    t = _labels(backend, labels, rng.integers(0, K, size=N), K)
    assert_layer_gradients_match(
        backend,
        SoftmaxWithLoss,
        2.0 * rng.standard_normal((N, K)),
        {},
        rng,
        forward=lambda layer, x: layer.forward(x, t),
    )


@pytest.mark.parametrize("labels", ["integer", "one-hot"])
def test_softmax_with_loss_matches_book_definition(backend, rng, labels):
    """Loss = mean of -log softmax at the label; ``backward()`` = (y - t) / N; ``y`` kept."""
    N, K = 5, 4
    idx = rng.integers(0, K, size=N)
    x_host = 3.0 * rng.standard_normal((N, K))
    layer = SoftmaxWithLoss()
    loss = layer.forward(backend.asarray(x_host, "float64"), _labels(backend, labels, idx, K))
    dx = layer.backward()

    e = np.exp(x_host - x_host.max(axis=1, keepdims=True))
    y = e / e.sum(axis=1, keepdims=True)
    assert tuple(loss.shape) == ()
    np.testing.assert_allclose(
        float(backend.to_numpy(loss)), -np.mean(np.log(y[np.arange(N), idx])), rtol=1e-12
    )
    np.testing.assert_allclose(backend.to_numpy(layer.y), y, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(backend.to_numpy(dx), (y - np.eye(K)[idx]) / N, atol=1e-15)


# --------------------------------------------------------------------------------------------
# 2. Every layer: dout untouched, input untouched, dtype and device kept
# --------------------------------------------------------------------------------------------


class Case:
    """One layer with an input and, for the loss layer, labels (built per backend and dtype)."""

    def __init__(self, layer: Any, x: Any, t: Any = None) -> None:
        self.layer, self.x, self.t = layer, x, t

    def forward(self) -> Any:
        if self.t is not None:
            return self.layer.forward(self.x, self.t)
        return self.layer.forward(self.x)


def _conv_case(bk, dt, rng):
    W, b = (bk.asarray(rng.standard_normal(s), dt) for s in ((3, 2, 3, 2), (3,)))
    return Case(
        Convolution(W, b, stride=2, pad=1), bk.asarray(rng.standard_normal((2, 2, 6, 5)), dt)
    )


def _pool_case(mode):
    def build(bk, dt, rng):
        x = bk.asarray(distinct_values(rng, (2, 3, 6, 5)), dt)
        return Case(Pooling(3, 2, stride=2, pad=1, mode=mode), x)

    return build


def _affine_case(x_shape):
    def build(bk, dt, rng):
        D = int(np.prod(x_shape[1:]))
        W, b = (bk.asarray(rng.standard_normal(s), dt) for s in ((D, 4), (4,)))
        return Case(Affine(W, b), bk.asarray(rng.standard_normal(x_shape), dt))

    return build


def _activation_case(cls):
    def build(bk, dt, rng):
        return Case(cls(), bk.asarray(rng.standard_normal((3, 2, 4)), dt))

    return build


def _softmax_case(labels):
    def build(bk, dt, rng):
        x = bk.asarray(rng.standard_normal((4, 3)), dt)
        return Case(SoftmaxWithLoss(), x, _labels(bk, labels, np.array([0, 2, 1, 2]), 3, dt))

    return build


LAYER_CASES: dict[str, Callable[..., Case]] = {
    "convolution": _conv_case,
    "pooling-max": _pool_case("max"),
    "pooling-avg": _pool_case("avg"),
    "affine-2d": _affine_case((3, 5)),
    "affine-4d": _affine_case((3, 2, 2, 3)),
    "relu": _activation_case(Relu),
    "sigmoid": _activation_case(Sigmoid),
    "softmax-integer-labels": _softmax_case("integer"),
    "softmax-one-hot-labels": _softmax_case("one-hot"),
}
NON_LOSS_CASES = [name for name in LAYER_CASES if not name.startswith("softmax")]


@pytest.mark.parametrize("name", NON_LOSS_CASES)
def test_backward_does_not_modify_dout(backend, dtype, rng, name):
    """The book's ``Relu.backward`` zeroed ``dout`` in place (``dout[self.mask] = 0``)."""
    case = LAYER_CASES[name](backend, dtype, rng)
    out = case.forward()
    # negative and positive entries everywhere: an in-place mask would change some
    dout_host = rng.standard_normal(tuple(out.shape)).astype(dtype)
    dout = backend.asarray(dout_host.copy(), dtype)  # NumPy may share the host buffer
    case.layer.backward(dout)
    np.testing.assert_array_equal(backend.to_numpy(dout), dout_host)


def _batchnorm_case(bk, dt, rng):
    gamma, beta = (bk.asarray(rng.standard_normal(3), dt) for _ in range(2))
    return Case(BatchNormalization(gamma, beta), bk.asarray(rng.standard_normal((4, 3, 2, 2)), dt))


def _lrn_case(bk, dt, rng):
    return Case(LRN(size=3), bk.asarray(rng.standard_normal((2, 4, 3, 3)), dt))


CACHING_CASES = {**LAYER_CASES, "batchnorm": _batchnorm_case, "lrn": _lrn_case}


@pytest.mark.parametrize("clear", [False, True], ids=["never-forward", "after-clear-cache"])
@pytest.mark.parametrize("name", list(CACHING_CASES))
def test_backward_without_forward_says_call_forward_first(backend, dtype, rng, name, clear):
    """Not ``'NoneType' object has no attribute ...`` from deep inside the ops."""
    case = CACHING_CASES[name](backend, dtype, rng)
    if clear:
        case.forward()
        case.layer.clear_cache()
    dout = 1.0 if case.t is not None else backend.asarray(np.ones(case.x.shape), dtype)
    cls = type(case.layer).__name__
    with pytest.raises(RuntimeError, match=rf"^{cls}\.backward .*; call forward first$"):
        case.layer.backward(dout)


@pytest.mark.parametrize(
    "make, what",
    [
        (
            lambda b: Convolution(
                b.asarray(np.ones((2, 1, 3, 3)), "float32"), b.asarray(np.zeros(2), "float32")
            ),
            "convolution",
        ),
        (lambda b: Pooling(2, 2, stride=2), "max pooling"),
        (
            lambda b: Affine(
                b.asarray(np.ones((16, 3)), "float32"), b.asarray(np.zeros(3), "float32")
            ),
            "affine",
        ),
    ],
    ids=["Convolution", "Pooling", "Affine"],
)
@pytest.mark.parametrize("int_dtype", ["uint8", "int64"])
def test_integer_input_is_refused_in_plain_words(backend, make, what, int_dtype):
    """Not NumPy's "data type <class 'numpy.int64'> not inexact" from deep inside,
    nor a silent promotion to float64."""
    x = backend.asarray(np.arange(16).reshape(1, 1, 4, 4), int_dtype)
    with pytest.raises(
        TypeError, match=rf"^{what} needs floating-point input, got .*{int_dtype}; cast it"
    ):
        make(backend).forward(x)


@pytest.mark.parametrize("name", list(LAYER_CASES))
def test_forward_and_backward_do_not_modify_input(backend, dtype, rng, name):
    case = LAYER_CASES[name](backend, dtype, rng)
    x_before = backend.to_numpy(case.x).copy()
    out = case.forward()
    case.layer.backward(1.0 if case.t is not None else backend.asarray(np.ones(out.shape), dtype))
    np.testing.assert_array_equal(backend.to_numpy(case.x), x_before)


@pytest.mark.parametrize("name", list(LAYER_CASES))
def test_outputs_keep_input_dtype_and_device(backend, dtype, rng, name):
    case = LAYER_CASES[name](backend, dtype, rng)
    out = case.forward()
    if case.t is not None:
        dx = case.layer.backward(1.0)
    else:
        dx = case.layer.backward(backend.asarray(rng.standard_normal(tuple(out.shape)), dtype))
    arrays = {"out": out, "dx": dx, **{f"grads[{k!r}]": g for k, g in case.layer.grads.items()}}
    expected_device = _expected_device(backend)
    if backend.name.startswith("strict"):
        assert expected_device == backend.device
    for what, arr in arrays.items():
        assert arr.dtype == _dtype_of(backend, dtype), f"{name} {what}: dtype {arr.dtype}"
        assert device_of(arr) == expected_device, f"{name} {what}: device {device_of(arr)}"
        assert np.all(np.isfinite(backend.to_numpy(arr))), f"{name} {what}: not finite"
    assert tuple(dx.shape) == tuple(case.x.shape)


# --------------------------------------------------------------------------------------------
# 3. params / grads dicts and output_shape
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "param_shapes"),
    [
        pytest.param("convolution", {"W": (3, 2, 3, 2), "b": (3,)}, id="convolution"),
        pytest.param("affine-2d", {"W": (5, 4), "b": (4,)}, id="affine-2d"),
        pytest.param("affine-4d", {"W": (12, 4), "b": (4,)}, id="affine-4d"),
        pytest.param("pooling-max", {}, id="pooling-max"),
        pytest.param("pooling-avg", {}, id="pooling-avg"),
        pytest.param("relu", {}, id="relu"),
        pytest.param("sigmoid", {}, id="sigmoid"),
        pytest.param("softmax-integer-labels", {}, id="softmax"),
    ],
)
def test_params_and_grads_keys_and_shapes(backend, rng, name, param_shapes):
    case = LAYER_CASES[name](backend, "float64", rng)
    assert {k: tuple(v.shape) for k, v in case.layer.params.items()} == param_shapes
    assert case.layer.grads == {}, "grads before any backward pass"
    out = case.forward()
    case.layer.backward(
        1.0 if case.t is not None else backend.asarray(np.ones(out.shape), "float64")
    )
    assert {k: tuple(v.shape) for k, v in case.layer.grads.items()} == param_shapes


@pytest.mark.parametrize("case", CONV_CASES)
def test_convolution_output_shape_matches_forward(backend, rng, case):
    N, C, H, W, FN, FH, FW, stride, pad = case
    layer = Convolution(
        backend.asarray(rng.standard_normal((FN, C, FH, FW)), "float32"),
        backend.asarray(np.zeros(FN), "float32"),
        stride=stride,
        pad=pad,
    )
    out = layer.forward(backend.asarray(rng.standard_normal((N, C, H, W)), "float32"))
    expected = (FN, conv_output_size(H, FH, stride, pad), conv_output_size(W, FW, stride, pad))
    assert layer.output_shape((C, H, W)) == expected
    assert tuple(out.shape) == (N, *expected)


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pooling_output_shape_matches_forward_and_counts_pad(backend, rng, mode, case):
    """The book's Pooling ignored ``pad`` in its output size."""
    N, C, H, W, PH, PW, stride, pad = case
    layer = Pooling(PH, PW, stride=stride, pad=pad, mode=mode)
    out = layer.forward(backend.asarray(rng.standard_normal((N, C, H, W)), "float32"))
    expected = (C, (H + 2 * pad - PH) // stride + 1, (W + 2 * pad - PW) // stride + 1)
    assert layer.output_shape((C, H, W)) == expected
    assert tuple(out.shape) == (N, *expected)


@pytest.mark.parametrize("name", ["affine-2d", "affine-4d", "relu", "sigmoid"])
def test_dense_output_shape_matches_forward(backend, rng, name):
    case = LAYER_CASES[name](backend, "float32", rng)
    out = case.forward()
    assert tuple(case.layer.output_shape(tuple(case.x.shape[1:]))) == tuple(out.shape[1:])


# --------------------------------------------------------------------------------------------
# 4. Convolution(need_dx=False): no input gradient, same parameter gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CONV_CASES)
def test_convolution_without_dx_fills_grads(backend, dtype, rng, case):
    N, C, H, W, FN, FH, FW, stride, pad = case
    Wt, b = (backend.asarray(rng.standard_normal(s), dtype) for s in ((FN, C, FH, FW), (FN,)))
    x = backend.asarray(rng.standard_normal((N, C, H, W)), dtype)
    full = Convolution(Wt, b, stride=stride, pad=pad)
    lean = Convolution(Wt, b, stride=stride, pad=pad)
    lean.need_dx = False
    out = full.forward(x)
    np.testing.assert_array_equal(backend.to_numpy(lean.forward(x)), backend.to_numpy(out))
    dout = backend.asarray(rng.standard_normal(tuple(out.shape)), dtype)

    assert full.backward(dout) is not None
    assert lean.backward(dout) is None
    assert set(lean.grads) == {"W", "b"}
    for k in ("W", "b"):
        np.testing.assert_array_equal(
            backend.to_numpy(lean.grads[k]), backend.to_numpy(full.grads[k]), err_msg=k
        )


# --------------------------------------------------------------------------------------------
# 5. Errors: ValueError naming the shapes
# --------------------------------------------------------------------------------------------


def _ones(bk: Any, *shapes: tuple[int, ...]) -> list[Any]:
    return [bk.asarray(np.ones(s), "float64") for s in shapes]


def _conv(bk: Any, w_shape: tuple[int, ...], **kw: int) -> Convolution:
    W, b = _ones(bk, w_shape, (w_shape[0],))
    return Convolution(W, b, **kw)


def _affine(bk: Any, w_shape: tuple[int, int]) -> Affine:
    return Affine(*_ones(bk, w_shape, (w_shape[1],)))


ERROR_CASES = [
    pytest.param(
        lambda bk: _conv(bk, (2, 2, 3, 3)).forward(*_ones(bk, (1, 3, 5, 5))),
        r"\(1, 3, 5, 5\).*\(2, 2, 3, 3\)",
        id="conv-forward-channel-mismatch",
    ),
    pytest.param(
        lambda bk: _conv(bk, (2, 3, 3, 3)).forward(*_ones(bk, (3, 5, 5))),
        r"4-D input.*\(3, 5, 5\)",
        id="conv-forward-3d-input",
    ),
    pytest.param(
        lambda bk: _conv(bk, (2, 1, 4, 4)).forward(*_ones(bk, (1, 1, 3, 5))),
        r"4x4 window.*\(1, 1, 3, 5\)",
        id="conv-forward-filter-too-large",
    ),
    pytest.param(
        lambda bk: _conv(bk, (2, 2, 3, 3)).output_shape((3, 5, 5)),
        r"W \(2, 2, 3, 3\).*C=2.*\(3, 5, 5\)",
        id="conv-output-shape-channel-mismatch",
    ),
    pytest.param(
        lambda bk: _conv(bk, (2, 1, 3, 3)).output_shape((25,)),
        r"W \(2, 1, 3, 3\).*\(25,\)",
        id="conv-output-shape-flat-input",
    ),
    pytest.param(
        lambda bk: _conv(bk, (2, 1, 4, 4)).output_shape((1, 3, 5)),
        r"\(1, 3, 5\)",
        id="conv-output-shape-filter-too-large",
    ),
    pytest.param(
        lambda bk: Pooling(2, 2).forward(*_ones(bk, (4, 4))),
        r"4-D input.*\(4, 4\)",
        id="pool-forward-2d-input",
    ),
    pytest.param(
        lambda bk: Pooling(3, 3, stride=1).forward(*_ones(bk, (1, 1, 2, 4))),
        r"3x3 window.*\(1, 1, 2, 4\)",
        id="pool-forward-window-too-large",
    ),
    pytest.param(
        lambda bk: Pooling(3, 3, stride=1).output_shape((1, 2, 4)),
        r"3x3.*\(1, 2, 4\)",
        id="pool-output-shape-window-too-large",
    ),
    pytest.param(
        lambda bk: Pooling(2, 2).output_shape((16,)),
        r"\(16,\)",
        id="pool-output-shape-flat-input",
    ),
    pytest.param(
        lambda bk: _affine(bk, (17, 4)).forward(*_ones(bk, (2, 2, 3, 3))),
        r"\(2, 2, 3, 3\).*18 features.*\(17, 4\)",
        id="affine-forward-feature-mismatch",
    ),
    pytest.param(
        lambda bk: _affine(bk, (17, 4)).output_shape((2, 3, 3)),
        r"W \(17, 4\).*\(2, 3, 3\)",
        id="affine-output-shape-feature-mismatch",
    ),
    pytest.param(
        lambda bk: SoftmaxWithLoss().forward(
            *_ones(bk, (4, 5)), _labels(bk, "integer", [0] * 3, 5)
        ),
        r"\(4, 5\) and \(3,\)",
        id="softmax-batch-mismatch",
    ),
    pytest.param(
        lambda bk: SoftmaxWithLoss().forward(*_ones(bk, (4, 5), (4, 3))),
        r"3 classes.*5",
        id="softmax-one-hot-classes-mismatch",
    ),
    pytest.param(
        lambda bk: Pooling(2, 2, mode="median"),
        r"'max' or 'avg'.*'median'",
        id="pool-unknown-mode",
    ),
]


@pytest.mark.parametrize(("call", "match"), ERROR_CASES)
def test_invalid_shapes_raise_value_error_naming_shapes(backend, call, match):
    with pytest.raises(ValueError, match=match):
        call(backend)
