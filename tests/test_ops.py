"""Correctness of ``xpcnn.ops`` on every backend of the ``backend`` fixture.

References are independent of the code under test: naive NumPy loops written
from the book's definitions, float64 central differences, and (when installed)
``torch.nn.functional`` with autograd. Each test body runs once per backend.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from array_api_compat import device as device_of
from helpers import CONV_CASES, POOL_CASES, assert_close_scaled, assert_gradients_match
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from xpcnn import _fast
from xpcnn.ops import (
    affine_forward,
    avg_pool2d_forward,
    col2im,
    conv2d_forward,
    conv2d_relu_forward,
    conv2d_relu_max_pool2d_forward,
    conv_output_size,
    cross_entropy_error,
    im2col,
    max_pool2d_forward,
    relu_forward,
    sigmoid_forward,
    softmax,
    softmax_cross_entropy_forward,
)

# --------------------------------------------------------------------------------------------
# Parameter grids (kept small: numerical gradients evaluate each op twice per input element)
# --------------------------------------------------------------------------------------------

# (N, C, H, W, FH, FW, stride, pad)
WINDOW_CASES = [
    pytest.param((1, 3, 7, 7, 5, 5, 1, 0), id="book-7x7-f5x5"),
    pytest.param((2, 2, 5, 6, 3, 3, 1, 1), id="s1-p1-nonsquare-input"),
    pytest.param((2, 3, 7, 6, 3, 2, 2, 0), id="s2-p0-nonsquare-filter"),
    pytest.param((1, 2, 8, 7, 2, 3, 3, 2), id="s3-p2"),
    pytest.param((2, 1, 4, 5, 4, 1, 2, 2), id="s2-p2-filter-4x1"),
    pytest.param((2, 2, 6, 9, 3, 4, 3, 1), id="s3-p1-filter-3x4"),
    pytest.param((1, 2, 5, 4, 5, 4, 1, 0), id="filter-covers-input"),
    pytest.param((2, 2, 3, 3, 1, 1, 1, 0), id="filter-1x1"),
]


POOL_OPS = {"max": max_pool2d_forward, "avg": avg_pool2d_forward}


def _tol(dtype: str) -> dict[str, float]:
    """Tolerances for comparing two independent computations in ``dtype``."""
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-10, "atol": 1e-12}


def _expected_device(backend: Any) -> Any:
    """The device object arrays created on ``backend`` report."""
    return device_of(backend.asarray(np.zeros(1), "float32"))


def _distinct(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values that are all different and at least 0.25 apart (no max-pool ties, even
    after a 1e-6 perturbation), roughly centred on 0."""
    n = math.prod(shape)
    return ((rng.permutation(n) - n / 2) / 4.0).reshape(shape)


# --------------------------------------------------------------------------------------------
# Naive references, written from the book's definitions (NumPy loops)
# --------------------------------------------------------------------------------------------


def naive_im2col(x: np.ndarray, fh: int, fw: int, stride: int, pad: int) -> np.ndarray:
    """Row ``n*OH*OW + oh*OW + ow``, column ``c*FH*FW + i*FW + j`` holds
    ``x_padded[n, c, oh*stride + i, ow*stride + j]``."""
    N, C, H, W = x.shape
    OH = (H + 2 * pad - fh) // stride + 1
    OW = (W + 2 * pad - fw) // stride + 1
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    col = np.empty((N * OH * OW, C * fh * fw), dtype=x.dtype)
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                for c in range(C):
                    for i in range(fh):
                        for j in range(fw):
                            col[n * OH * OW + oh * OW + ow, c * fh * fw + i * fw + j] = xp_[
                                n, c, oh * stride + i, ow * stride + j
                            ]
    return col


def naive_col2im(
    col: np.ndarray, shape: tuple[int, int, int, int], fh: int, fw: int, stride: int, pad: int
) -> np.ndarray:
    """Each ``col`` entry added back where :func:`naive_im2col` took it from, in float64;
    the padding is then cut off."""
    N, C, H, W = shape
    OH = (H + 2 * pad - fh) // stride + 1
    OW = (W + 2 * pad - fw) // stride + 1
    img = np.zeros((N, C, H + 2 * pad, W + 2 * pad))
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                for c in range(C):
                    for i in range(fh):
                        for j in range(fw):
                            img[n, c, oh * stride + i, ow * stride + j] += col[
                                n * OH * OW + oh * OW + ow, c * fh * fw + i * fw + j
                            ]
    return img[:, :, pad : pad + H, pad : pad + W]


def naive_conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Cross-correlation by a loop over output positions."""
    N, _, H, W = x.shape
    FN, _, FH, FW = w.shape
    OH = (H + 2 * pad - FH) // stride + 1
    OW = (W + 2 * pad - FW) // stride + 1
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.empty((N, FN, OH, OW), dtype=np.float64)
    for n in range(N):
        for f in range(FN):
            for oh in range(OH):
                for ow in range(OW):
                    window = xp_[
                        n, :, oh * stride : oh * stride + FH, ow * stride : ow * stride + FW
                    ]
                    out[n, f, oh, ow] = np.sum(window * w[f]) + b[f]
    return out


def naive_max_pool2d(
    x: np.ndarray, ph: int, pw: int, stride: int, pad: int, dout: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Max pooling where padding never takes part, ties go to the first maximum in
    row-major window order and the first NaN beats every number (PyTorch's NaN
    policy, argmax's choice); returns ``(out, dx)`` for upstream gradient ``dout``."""
    N, C, H, W = x.shape
    OH = (H + 2 * pad - ph) // stride + 1
    OW = (W + 2 * pad - pw) // stride + 1
    out = np.empty((N, C, OH, OW), dtype=np.float64)
    dx = np.zeros(x.shape, dtype=np.float64)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    best, at = None, None
                    for i in range(ph):
                        for j in range(pw):
                            h, w = oh * stride + i - pad, ow * stride + j - pad
                            if not (0 <= h < H and 0 <= w < W):
                                continue
                            v = x[n, c, h, w]
                            nan_wins = np.isnan(v) and not (best is not None and np.isnan(best))
                            if best is None or v > best or nan_wins:
                                best, at = v, (h, w)
                    out[n, c, oh, ow] = best
                    dx[n, c, at[0], at[1]] += dout[n, c, oh, ow]
    return out, dx


# --------------------------------------------------------------------------------------------
# Shared checkers
# --------------------------------------------------------------------------------------------


def torch_forward_backward(
    fn: Callable[..., Any], inputs: list[np.ndarray], dout: np.ndarray, dtype: str
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run ``fn`` (on torch tensors) forward and ``out.backward(dout)``; return host
    output and input gradients."""
    torch = pytest.importorskip("torch")
    tdtype = getattr(torch, dtype)
    ts = [torch.tensor(a, dtype=tdtype, requires_grad=True) for a in inputs]
    out = fn(*ts)
    out.backward(torch.tensor(dout, dtype=tdtype))
    return out.detach().numpy(), [t.grad.numpy() for t in ts]


# --------------------------------------------------------------------------------------------
# 1. The book's examples
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x_shape", "expected"),
    [
        pytest.param((1, 3, 7, 7), (9, 75), id="batch1"),
        pytest.param((10, 3, 7, 7), (90, 75), id="batch10"),
    ],
)
def test_im2col_book_shapes(backend, dtype, rng, x_shape, expected):
    x = backend.asarray(rng.standard_normal(x_shape), dtype)
    col = im2col(x, 5, 5, stride=1, pad=0)
    assert tuple(col.shape) == expected
    assert col.dtype == x.dtype


# (H, W, FH, FW, stride, pad, (OH, OW))
BOOK_OUTPUT_SIZES = [
    pytest.param(4, 4, 3, 3, 1, 1, (4, 4), id="4x4-p1-s1-f3"),
    pytest.param(7, 7, 3, 3, 2, 0, (3, 3), id="7x7-p0-s2-f3"),
    pytest.param(28, 31, 5, 5, 3, 2, (10, 11), id="28x31-p2-s3-f5"),
]


@pytest.mark.parametrize(("H", "W", "FH", "FW", "stride", "pad", "expected"), BOOK_OUTPUT_SIZES)
def test_conv_output_size_book_examples(H, W, FH, FW, stride, pad, expected):
    assert (
        conv_output_size(H, FH, stride, pad),
        conv_output_size(W, FW, stride, pad),
    ) == expected


@pytest.mark.parametrize(("H", "W", "FH", "FW", "stride", "pad", "expected"), BOOK_OUTPUT_SIZES)
def test_conv2d_forward_book_output_shapes(
    backend, dtype, rng, H, W, FH, FW, stride, pad, expected
):
    x = backend.asarray(rng.standard_normal((2, 3, H, W)), dtype)
    w = backend.asarray(rng.standard_normal((4, 3, FH, FW)), dtype)
    b = backend.asarray(rng.standard_normal(4), dtype)
    out, _ = conv2d_forward(x, w, b, stride=stride, pad=pad)
    assert tuple(out.shape) == (2, 4, *expected)


@pytest.mark.parametrize("kind", list(POOL_OPS))
def test_pool_output_shape_counts_padding(backend, dtype, rng, kind):
    """The book's Pooling ignored ``pad`` in its output size."""
    forward = POOL_OPS[kind]
    x = backend.asarray(rng.standard_normal((2, 3, 7, 9)), dtype)
    out, _ = forward(x, 3, 2, stride=2, pad=1)
    assert tuple(out.shape) == (2, 3, conv_output_size(7, 3, 2, 1), conv_output_size(9, 2, 2, 1))
    assert tuple(out.shape) == (2, 3, 4, 5)


# --------------------------------------------------------------------------------------------
# 2-3. im2col against the book's definition; col2im is its adjoint
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", WINDOW_CASES)
def test_im2col_matches_naive_loop(backend, dtype, rng, case):
    N, C, H, W, FH, FW, stride, pad = case
    x_host = rng.standard_normal((N, C, H, W)).astype(dtype)
    col = im2col(backend.asarray(x_host, dtype), FH, FW, stride=stride, pad=pad)
    assert col.dtype == getattr(backend.xp, dtype)
    assert device_of(col) == _expected_device(backend)
    # im2col only moves values: the match is exact.
    np.testing.assert_array_equal(backend.to_numpy(col), naive_im2col(x_host, FH, FW, stride, pad))


@pytest.mark.parametrize("case", WINDOW_CASES)
def test_col2im_is_adjoint_of_im2col(backend, dtype, rng, case):
    """<im2col(x), y> == <x, col2im(y)> for random x, y."""
    N, C, H, W, FH, FW, stride, pad = case
    OH, OW = conv_output_size(H, FH, stride, pad), conv_output_size(W, FW, stride, pad)
    x_host = rng.standard_normal((N, C, H, W))
    y_host = rng.standard_normal((N * OH * OW, C * FH * FW))
    x, y = backend.asarray(x_host, dtype), backend.asarray(y_host, dtype)
    col = im2col(x, FH, FW, stride=stride, pad=pad)
    img = col2im(y, (N, C, H, W), FH, FW, stride=stride, pad=pad)
    assert tuple(img.shape) == (N, C, H, W)
    for arr in (col, img):
        assert arr.dtype == getattr(backend.xp, dtype)
        assert device_of(arr) == _expected_device(backend)
    lhs = float(np.sum(backend.to_numpy(col).astype(np.float64) * y_host.astype(dtype)))
    rhs = float(np.sum(x_host.astype(dtype).astype(np.float64) * backend.to_numpy(img)))
    scale = float(np.sum(np.abs(backend.to_numpy(col).astype(np.float64) * y_host)))
    assert abs(lhs - rhs) <= (1e-5 if dtype == "float32" else 1e-12) * max(1.0, scale)


# Every way col2im folds: one grid (stride 1) at pads 0-3, windows that tile (stride ==
# filter) with sizes the stride does not divide, gaps (stride > filter), overlapping
# strides, a window only one way, tiny and empty inputs. (N, C, H, W, FH, FW, stride, pad)
FOLD_CASES = [
    *(pytest.param((2, 2, 5, 6, 3, 3, 1, p), id=f"s1-p{p}") for p in range(4)),
    pytest.param((1, 2, 4, 7, 2, 4, 1, 2), id="s1-p2-filter-2x4"),
    pytest.param((2, 3, 7, 9, 2, 2, 2, 0), id="tiles-2x2-odd-sizes"),
    pytest.param((1, 2, 11, 10, 3, 3, 3, 0), id="tiles-3x3-sizes-not-multiples"),
    pytest.param((1, 2, 7, 8, 2, 2, 2, 1), id="tiles-2x2-p1"),
    pytest.param((2, 1, 9, 7, 3, 2, 3, 0), id="tiles-rows-gaps-columns"),
    pytest.param((1, 2, 9, 8, 2, 2, 3, 1), id="gaps-s3-f2"),
    pytest.param((2, 2, 9, 7, 3, 3, 2, 1), id="overlap-s2-f3"),
    pytest.param((1, 1, 10, 11, 5, 4, 3, 2), id="overlap-s3-f5x4-p2"),
    pytest.param((1, 1, 1, 1, 1, 1, 1, 0), id="1x1"),
    pytest.param((1, 1, 3, 3, 3, 3, 1, 0), id="filter-is-input"),
    pytest.param((0, 2, 5, 5, 2, 2, 2, 0), id="empty-batch"),
]


@pytest.mark.parametrize("case", FOLD_CASES)
def test_col2im_matches_naive_loop(backend, dtype, rng, case):
    N, C, H, W, FH, FW, stride, pad = case
    OH, OW = conv_output_size(H, FH, stride, pad), conv_output_size(W, FW, stride, pad)
    col_host = rng.standard_normal((N * OH * OW, C * FH * FW))
    img = col2im(backend.asarray(col_host, dtype), (N, C, H, W), FH, FW, stride=stride, pad=pad)
    assert img.dtype == getattr(backend.xp, dtype)
    assert device_of(img) == _expected_device(backend)
    expected = naive_col2im(col_host.astype(dtype), (N, C, H, W), FH, FW, stride, pad)
    np.testing.assert_allclose(backend.to_numpy(img), expected, **_tol(dtype))


@pytest.mark.parametrize("case", FOLD_CASES)
def test_col2im_and_pool_backward_of_negative_zeros_give_positive_zeros(backend, dtype, case):
    """The generic folds add to zeros, as slice additions into a zero image did: -0.0
    comes out +0.0 (the compiled NumPy kernels are compared with them bit for bit)."""
    N, C, H, W, FH, FW, stride, pad = case
    OH, OW = conv_output_size(H, FH, stride, pad), conv_output_size(W, FW, stride, pad)
    with _fast.enabled(False):
        col = backend.asarray(np.full((N * OH * OW, C * FH * FW), -0.0), dtype)
        folded = [col2im(col, (N, C, H, W), FH, FW, stride=stride, pad=pad)]
        if 2 * pad <= min(FH, FW):
            x = backend.asarray(np.zeros((N, C, H, W)), dtype)
            dout = backend.asarray(np.full((N, C, OH, OW), -0.0), dtype)
            folded += [
                f(x, FH, FW, stride=stride, pad=pad)[1].backward(dout) for f in POOL_OPS.values()
            ]
    for img in folded:
        host = backend.to_numpy(img)
        assert host.shape == (N, C, H, W)
        assert not np.any(np.signbit(host))


@pytest.mark.parametrize("case", FOLD_CASES)
def test_col2im_is_adjoint_of_im2col_float64(backend, rng, case):
    """<im2col(x), c> == <x, col2im(c)> in float64 for every way col2im folds."""
    N, C, H, W, FH, FW, stride, pad = case
    OH, OW = conv_output_size(H, FH, stride, pad), conv_output_size(W, FW, stride, pad)
    x_host = rng.standard_normal((N, C, H, W))
    c_host = rng.standard_normal((N * OH * OW, C * FH * FW))
    col = backend.to_numpy(im2col(backend.asarray(x_host, "float64"), FH, FW, stride, pad))
    img = backend.to_numpy(
        col2im(backend.asarray(c_host, "float64"), (N, C, H, W), FH, FW, stride, pad)
    )
    lhs, rhs = float(np.sum(col * c_host)), float(np.sum(x_host * img))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, float(np.sum(np.abs(col * c_host))))


# --------------------------------------------------------------------------------------------
# 4. Float64 numerical gradient checks on every backend
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradients_numerical(backend, rng, case):
    N, C, H, W, FN, FH, FW, stride, pad = case
    assert_gradients_match(
        backend,
        lambda x, w, b: conv2d_forward(x, w, b, stride=stride, pad=pad),
        lambda d, cache, *_: cache.backward(d),
        [
            rng.standard_normal((N, C, H, W)),
            rng.standard_normal((FN, C, FH, FW)),
            rng.standard_normal(FN),
        ],
        rng,
    )


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("kind", list(POOL_OPS))
def test_pool_gradients_numerical(backend, rng, kind, case):
    N, C, H, W, PH, PW, stride, pad = case
    forward = POOL_OPS[kind]
    # Distinct values: the max-pooling gradient is defined (no ties) and stable under +-eps.
    assert_gradients_match(
        backend,
        lambda x: forward(x, PH, PW, stride=stride, pad=pad),
        lambda d, cache, *_: (cache.backward(d),),
        [_distinct(rng, (N, C, H, W))],
        rng,
    )


def test_affine_gradients_numerical_4d_input(backend, rng):
    assert_gradients_match(
        backend,
        affine_forward,
        lambda d, cache, x, w, b: cache.backward(d),
        [
            rng.standard_normal((3, 2, 3, 2)),
            rng.standard_normal((12, 4)),
            rng.standard_normal(4),
        ],
        rng,
    )


def test_relu_gradient_numerical(backend, rng):
    shape = (2, 3, 4)
    x = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 2.0, size=shape)  # away from 0
    assert_gradients_match(
        backend, relu_forward, lambda d, cache, *_: (cache.backward(d),), [x], rng
    )


def test_sigmoid_gradient_numerical(backend, rng):
    assert_gradients_match(
        backend,
        sigmoid_forward,
        lambda d, cache, *_: (cache.backward(d),),
        [3.0 * rng.standard_normal((3, 5))],
        rng,
    )


@pytest.mark.parametrize("labels", ["int64", "int32", "one-hot", "soft"])
@pytest.mark.parametrize("dout", [1.0, 0.3])
def test_softmax_cross_entropy_gradient_numerical(backend, rng, labels, dout):
    N, K = 4, 5
    idx = rng.integers(0, K, size=N)
    if labels in ("int64", "int32"):
        t = backend.asarray(idx, labels)
    elif labels == "one-hot":
        t = backend.asarray(np.eye(K)[idx], "float64")
    else:
        p = rng.random((N, K))
        t = backend.asarray(p / p.sum(axis=1, keepdims=True), "float64")
    assert_gradients_match(
        backend,
        lambda x: softmax_cross_entropy_forward(x, t),
        lambda d, cache, *_: (cache.backward(dout),),
        [2.0 * rng.standard_normal((N, K))],
        rng,
        weights=np.asarray(dout),
    )


# --------------------------------------------------------------------------------------------
# 5. Against torch.nn.functional (forward and autograd backward), float32 and float64
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch(backend, dtype, rng, case):
    F = pytest.importorskip("torch.nn.functional")
    N, C, H, W, FN, FH, FW, stride, pad = case
    hosts = [
        rng.standard_normal((N, C, H, W)).astype(dtype),
        rng.standard_normal((FN, C, FH, FW)).astype(dtype),
        rng.standard_normal(FN).astype(dtype),
    ]
    x, w, b = (backend.asarray(a, dtype) for a in hosts)
    out, cache = conv2d_forward(x, w, b, stride=stride, pad=pad)
    dout = rng.standard_normal(tuple(out.shape)).astype(dtype)
    grads = cache.backward(backend.asarray(dout, dtype))

    ref_out, ref_grads = torch_forward_backward(
        lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=pad), hosts, dout, dtype
    )
    tol = _tol(dtype)
    assert_close_scaled(backend.to_numpy(out), ref_out, **tol, err_msg="out")
    for name, g, ref in zip(("dx", "dW", "db"), grads, ref_grads, strict=True):
        assert_close_scaled(backend.to_numpy(g), ref, **tol, err_msg=name)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_matches_naive_loop(backend, rng, case):
    """Independent of torch being installed."""
    N, C, H, W, FN, FH, FW, stride, pad = case
    x, w, b = (
        rng.standard_normal((N, C, H, W)),
        rng.standard_normal((FN, C, FH, FW)),
        rng.standard_normal(FN),
    )
    out, _ = conv2d_forward(
        *(backend.asarray(a, "float64") for a in (x, w, b)), stride=stride, pad=pad
    )
    assert_close_scaled(
        backend.to_numpy(out), naive_conv2d(x, w, b, stride, pad), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("kind", list(POOL_OPS))
def test_pool_matches_torch(backend, dtype, rng, kind, case):
    F = pytest.importorskip("torch.nn.functional")
    N, C, H, W, PH, PW, stride, pad = case
    forward = POOL_OPS[kind]
    x_host = rng.standard_normal((N, C, H, W)).astype(dtype)
    out, cache = forward(backend.asarray(x_host, dtype), PH, PW, stride=stride, pad=pad)
    dout = rng.standard_normal(tuple(out.shape)).astype(dtype)
    dx = cache.backward(backend.asarray(dout, dtype))

    if kind == "max":

        def ref(t):
            return F.max_pool2d(t, (PH, PW), stride=stride, padding=pad)
    else:

        def ref(t):
            return F.avg_pool2d(t, (PH, PW), stride=stride, padding=pad, count_include_pad=True)

    ref_out, (ref_dx,) = torch_forward_backward(ref, [x_host], dout, dtype)
    tol = _tol(dtype)
    assert_close_scaled(backend.to_numpy(out), ref_out, **tol, err_msg="out")
    assert_close_scaled(backend.to_numpy(dx), ref_dx, **tol, err_msg="dx")


# (N, C, H, W, PH, PW, stride, pad) where every border window holds padding
PADDED_MAX_CASES = [
    pytest.param((2, 2, 4, 5, 2, 2, 2, 1), id="2x2-s2-p1"),
    pytest.param((1, 2, 5, 5, 3, 3, 1, 1), id="3x3-s1-p1"),
    pytest.param((1, 1, 5, 6, 4, 4, 2, 2), id="4x4-s2-p2"),
]


@pytest.mark.parametrize("case", PADDED_MAX_CASES)
def test_max_pool_padding_never_wins_on_negative_input(backend, dtype, rng, case):
    """All inputs < 0: a zero (or any) padding value must never be the maximum, and the
    whole upstream gradient reaches the input (PyTorch semantics)."""
    N, C, H, W, PH, PW, stride, pad = case
    x_host = -rng.uniform(1.0, 2.0, size=(N, C, H, W)).astype(dtype)
    out, cache = max_pool2d_forward(backend.asarray(x_host, dtype), PH, PW, stride=stride, pad=pad)
    dout = rng.uniform(0.5, 1.5, size=tuple(out.shape)).astype(dtype)
    dx = backend.to_numpy(cache.backward(backend.asarray(dout, dtype)))
    out = backend.to_numpy(out)

    assert np.all(out <= -1.0), "a padding value won a window"
    assert set(np.unique(out)) <= set(np.unique(x_host)), "output holds a value not in the input"
    np.testing.assert_allclose(dx.sum(), dout.astype(np.float64).sum(), rtol=1e-5)
    ref_out, ref_dx = naive_max_pool2d(x_host, PH, PW, stride, pad, dout)
    tol = _tol(dtype)
    assert_close_scaled(out, ref_out, **tol, err_msg="out")
    assert_close_scaled(dx, ref_dx, **tol, err_msg="dx")

    if importlib.util.find_spec("torch") is not None:  # the naive loop above is the main reference
        import torch.nn.functional as F

        t_out, (t_dx,) = torch_forward_backward(
            lambda t: F.max_pool2d(t, (PH, PW), stride=stride, padding=pad), [x_host], dout, dtype
        )
        assert_close_scaled(out, t_out, **tol, err_msg="out vs torch")
        assert_close_scaled(dx, t_dx, **tol, err_msg="dx vs torch")


def test_max_pool_padding_never_wins_over_minus_infinity(backend, dtype):
    x = backend.asarray(np.full((1, 1, 2, 2), -np.inf), dtype)
    out, cache = max_pool2d_forward(x, 2, 2, stride=2, pad=1)
    dx = backend.to_numpy(cache.backward(backend.asarray(np.ones((1, 1, 2, 2)), dtype)))
    assert np.all(np.isneginf(backend.to_numpy(out)))
    assert dx.sum() == 4.0


# (N, C, H, W, PH, PW, stride, pad)
NAN_POOL_CASES = [
    pytest.param((2, 2, 6, 6, 2, 2, 2, 0), id="2x2-s2"),
    pytest.param((1, 2, 5, 5, 3, 3, 1, 1), id="3x3-s1-p1"),
    pytest.param((1, 1, 5, 6, 4, 4, 2, 2), id="4x4-s2-p2"),
    pytest.param((2, 1, 7, 7, 3, 3, 2, 1), id="3x3-s2-p1"),
]


@pytest.mark.parametrize("case", NAN_POOL_CASES)
def test_max_pool_nan_at_every_window_offset_gives_nan(backend, dtype, case):
    """PyTorch's NaN policy: a NaN at any offset of a window makes its output NaN,
    and that window's gradient goes to the NaN. One NaN at a time, at each real
    offset of the first window; the rest of the input increases, so without the
    NaN the maximum would sit elsewhere."""
    F = pytest.importorskip("torch.nn.functional")
    torch = pytest.importorskip("torch")
    N, C, H, W, PH, PW, stride, pad = case
    for i in range(pad, PH):
        for j in range(pad, PW):
            x_host = np.arange(N * C * H * W, dtype=dtype).reshape(N, C, H, W)
            x_host[0, 0, i - pad, j - pad] = np.nan
            out, cache = max_pool2d_forward(backend.asarray(x_host, dtype), PH, PW, stride, pad)
            dout = np.ones(tuple(out.shape), dtype=dtype)
            dx = backend.to_numpy(cache.backward(backend.asarray(dout, dtype)))
            out = backend.to_numpy(out)
            t_out = F.max_pool2d(torch.from_numpy(x_host), (PH, PW), stride, pad).numpy()
            where = f"NaN at window offset ({i}, {j})"
            assert np.isnan(out[0, 0, 0, 0]), where
            np.testing.assert_array_equal(np.isnan(out), np.isnan(t_out), err_msg=where)
            np.testing.assert_array_equal(out, t_out, err_msg=where)  # NaN where NaN
            assert dx[0, 0, i - pad, j - pad] >= 1, where  # the NaN window routes to the NaN
            ref_out, ref_dx = naive_max_pool2d(x_host, PH, PW, stride, pad, dout)
            np.testing.assert_array_equal(out, ref_out, err_msg=where)
            np.testing.assert_array_equal(dx, ref_dx, err_msg=where)


@pytest.mark.parametrize("case", NAN_POOL_CASES)
def test_max_pool_with_many_nans_matches_torch_and_naive(backend, dtype, rng, case):
    """Random NaN (and infinities) everywhere: the output is NaN exactly where
    torch's is; the gradient goes to each window's first NaN (or first maximum)."""
    F = pytest.importorskip("torch.nn.functional")
    torch = pytest.importorskip("torch")
    N, C, H, W, PH, PW, stride, pad = case
    x_host = rng.standard_normal((N, C, H, W)).astype(dtype)
    flat = x_host.reshape(-1)
    idx = rng.permutation(flat.size)
    flat[idx[: flat.size // 6]] = np.nan
    flat[idx[flat.size // 6 : flat.size // 4]] = -np.inf
    out, cache = max_pool2d_forward(backend.asarray(x_host, dtype), PH, PW, stride, pad)
    dout = rng.uniform(0.5, 1.5, size=tuple(out.shape)).astype(dtype)
    dx = backend.to_numpy(cache.backward(backend.asarray(dout, dtype)))
    out = backend.to_numpy(out)
    t_out = F.max_pool2d(torch.from_numpy(x_host), (PH, PW), stride, pad).numpy()
    assert np.isnan(out).any() and not np.isnan(out).all(), "a case that tests nothing"
    np.testing.assert_array_equal(out, t_out)  # NaN where torch has NaN, else equal
    ref_out, ref_dx = naive_max_pool2d(x_host, PH, PW, stride, pad, dout)
    np.testing.assert_array_equal(out, ref_out)
    assert_close_scaled(dx, ref_dx, **_tol(dtype), err_msg="dx")


@pytest.mark.parametrize("case", POOL_CASES + PADDED_MAX_CASES)
def test_max_pool_ties_go_to_first_max_in_row_major_order(backend, dtype, rng, case):
    N, C, H, W, PH, PW, stride, pad = case
    x_host = rng.integers(-1, 2, size=(N, C, H, W)).astype(dtype)  # many ties among {-1, 0, 1}
    out, cache = max_pool2d_forward(backend.asarray(x_host, dtype), PH, PW, stride=stride, pad=pad)
    dout = rng.standard_normal(tuple(out.shape)).astype(dtype)
    dx = cache.backward(backend.asarray(dout, dtype))
    ref_out, ref_dx = naive_max_pool2d(x_host, PH, PW, stride, pad, dout)
    np.testing.assert_array_equal(backend.to_numpy(out), ref_out)
    assert_close_scaled(backend.to_numpy(dx), ref_dx, **_tol(dtype), err_msg="dx")


def test_max_pool_tie_example_goes_to_top_left(backend, dtype):
    x = backend.asarray(np.array([[[[3.0, 3.0], [3.0, 1.0]]]]), dtype)
    out, cache = max_pool2d_forward(x, 2, 2, stride=2)
    dx = cache.backward(backend.asarray(np.array([[[[5.0]]]]), dtype))
    np.testing.assert_array_equal(backend.to_numpy(out), [[[[3.0]]]])
    np.testing.assert_array_equal(backend.to_numpy(dx), [[[[5.0, 0.0], [0.0, 0.0]]]])


# --------------------------------------------------------------------------------------------
# 6. need_dx=False
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_backward_without_dx(backend, dtype, rng, case):
    N, C, H, W, FN, FH, FW, stride, pad = case
    x, w, b = (
        backend.asarray(rng.standard_normal(s), dtype)
        for s in ((N, C, H, W), (FN, C, FH, FW), (FN,))
    )
    out, cache = conv2d_forward(x, w, b, stride=stride, pad=pad)
    dout = backend.asarray(rng.standard_normal(tuple(out.shape)), dtype)
    dx_full, dW_full, db_full = cache.backward(dout)
    dx, dW, db = cache.backward(dout, need_dx=False)
    assert dx_full is not None
    assert dx is None
    np.testing.assert_array_equal(backend.to_numpy(dW), backend.to_numpy(dW_full))
    np.testing.assert_array_equal(backend.to_numpy(db), backend.to_numpy(db_full))


# --------------------------------------------------------------------------------------------
# 7. dtype and device follow the input, for every output of every op
# --------------------------------------------------------------------------------------------


def _outputs_conv(bk, dt, rng):
    x, w, b = (bk.asarray(rng.standard_normal(s), dt) for s in ((2, 3, 6, 5), (4, 3, 3, 2), (4,)))
    out, cache = conv2d_forward(x, w, b, stride=2, pad=1)
    dout = bk.asarray(rng.standard_normal(tuple(out.shape)), dt)
    dx, dW, db = cache.backward(dout)
    _, dW2, db2 = cache.backward(dout, need_dx=False)
    return {"out": out, "dx": dx, "dW": dW, "db": db, "dW(no dx)": dW2, "db(no dx)": db2}


def _outputs_im2col(bk, dt, rng):
    x = bk.asarray(rng.standard_normal((2, 3, 5, 5)), dt)
    col = im2col(x, 3, 3, stride=1, pad=1)
    return {"col": col, "img": col2im(col, (2, 3, 5, 5), 3, 3, stride=1, pad=1)}


def _outputs_pool(forward):
    def build(bk, dt, rng):
        x = bk.asarray(rng.standard_normal((2, 3, 6, 5)), dt)
        out, cache = forward(x, 3, 2, stride=2, pad=1)
        dx = cache.backward(bk.asarray(rng.standard_normal(tuple(out.shape)), dt))
        return {"out": out, "dx": dx}

    return build


def _outputs_affine(bk, dt, rng):
    x, w, b = (bk.asarray(rng.standard_normal(s), dt) for s in ((2, 3, 2, 2), (12, 5), (5,)))
    out, cache = affine_forward(x, w, b)
    dx, dW, db = cache.backward(bk.asarray(rng.standard_normal((2, 5)), dt))
    return {"out": out, "dx": dx, "dW": dW, "db": db}


def _outputs_activation(forward):
    def build(bk, dt, rng):
        x = bk.asarray(rng.standard_normal((3, 4)), dt)
        out, cache = forward(x)
        return {"out": out, "dx": cache.backward(bk.asarray(rng.standard_normal((3, 4)), dt))}

    return build


def _outputs_softmax(bk, dt, rng):
    x = bk.asarray(rng.standard_normal((3, 4)), dt)
    t = bk.asarray(rng.integers(0, 4, size=3), "int64")
    onehot = bk.asarray(np.eye(4)[[0, 2, 3]], dt)
    loss, cache = softmax_cross_entropy_forward(x, t)
    loss_oh, cache_oh = softmax_cross_entropy_forward(x, onehot)
    return {
        "softmax": softmax(x),
        "cross_entropy_error": cross_entropy_error(softmax(x), t),
        "loss": loss,
        "dx": cache.backward(),
        "loss(one-hot)": loss_oh,
        "dx(one-hot)": cache_oh.backward(0.5),
    }


OUTPUT_BUILDERS = {
    "conv2d": _outputs_conv,
    "im2col-col2im": _outputs_im2col,
    "max_pool2d": _outputs_pool(max_pool2d_forward),
    "avg_pool2d": _outputs_pool(avg_pool2d_forward),
    "affine": _outputs_affine,
    "relu": _outputs_activation(relu_forward),
    "sigmoid": _outputs_activation(sigmoid_forward),
    "softmax-cross-entropy": _outputs_softmax,
}


@pytest.mark.parametrize("op", list(OUTPUT_BUILDERS))
def test_outputs_keep_input_dtype_and_device(backend, dtype, rng, op):
    outputs = OUTPUT_BUILDERS[op](backend, dtype, rng)
    expected_device = _expected_device(backend)
    if backend.name.startswith("strict"):
        assert expected_device == backend.device
    for name, arr in outputs.items():
        assert arr.dtype == getattr(backend.xp, dtype), f"{op} {name}: dtype {arr.dtype}"
        assert device_of(arr) == expected_device, f"{op} {name}: device {device_of(arr)}"
        assert np.all(np.isfinite(backend.to_numpy(arr))), f"{op} {name}: not finite"


# --------------------------------------------------------------------------------------------
# 8. Errors name the shapes
# --------------------------------------------------------------------------------------------


def _arrays(bk, *shapes):
    return [bk.asarray(np.ones(s), "float64") for s in shapes]


ERROR_CASES = [
    pytest.param(
        lambda bk: im2col(*_arrays(bk, (2, 3, 4)), 2, 2),
        r"im2col expects a 4-D input \(N, C, H, W\), got shape \(2, 3, 4\)",
        id="im2col-3d-input",
    ),
    pytest.param(
        lambda bk: im2col(*_arrays(bk, (1, 1, 2, 3, 4)), 2, 2),
        r"im2col expects a 4-D input \(N, C, H, W\), got shape \(1, 1, 2, 3, 4\)",
        id="im2col-5d-input",
    ),
    pytest.param(
        lambda bk: col2im(*_arrays(bk, (9, 75)), (3, 7, 7), 5, 5),
        r"col2im expects a 4-D input \(N, C, H, W\), got shape \(3, 7, 7\)",
        id="col2im-3d-input-shape",
    ),
    pytest.param(
        lambda bk: conv2d_forward(*_arrays(bk, (3, 5, 5), (2, 3, 3, 3), (2,))),
        r"convolution expects a 4-D input \(N, C, H, W\), got shape \(3, 5, 5\)",
        id="conv-3d-input",
    ),
    pytest.param(
        lambda bk: conv2d_forward(*_arrays(bk, (1, 3, 5, 5), (2, 27), (2,))),
        r"weights must be 4-D \(FN, C, FH, FW\), got shape \(2, 27\)",
        id="conv-2d-weights",
    ),
    pytest.param(
        lambda bk: max_pool2d_forward(*_arrays(bk, (4, 4)), 2, 2),
        r"max pooling expects a 4-D input \(N, C, H, W\), got shape \(4, 4\)",
        id="maxpool-2d-input",
    ),
    pytest.param(
        lambda bk: avg_pool2d_forward(*_arrays(bk, (1, 1, 1, 4, 4)), 2, 2),
        r"average pooling expects a 4-D input \(N, C, H, W\), got shape \(1, 1, 1, 4, 4\)",
        id="avgpool-5d-input",
    ),
    pytest.param(
        lambda bk: conv2d_forward(*_arrays(bk, (1, 3, 5, 5), (2, 2, 3, 3), (2,))),
        r"channel mismatch: input has shape \(1, 3, 5, 5\) with 3 channels but the filters W \(2, 2, 3, 3\) expect C=2",
        id="conv-channel-mismatch",
    ),
    pytest.param(
        lambda bk: conv2d_forward(*_arrays(bk, (1, 1, 2, 2), (1, 1, 3, 3), (1,))),
        r"3x3 window with stride 1 and pad 0 does not fit the input of shape \(1, 1, 2, 2\) \(output would be 0x0\)",
        id="conv-output-too-small",
    ),
    pytest.param(
        lambda bk: im2col(*_arrays(bk, (1, 1, 5, 2)), 2, 3),
        r"2x3 window .* does not fit the input of shape \(1, 1, 5, 2\) \(output would be 4x0\)",
        id="im2col-output-too-small",
    ),
    pytest.param(
        lambda bk: max_pool2d_forward(*_arrays(bk, (1, 2, 3, 3)), 4, 4, stride=1),
        r"max pooling: a 4x4 window .* does not fit the input of shape \(1, 2, 3, 3\)",
        id="maxpool-output-too-small",
    ),
    pytest.param(
        lambda bk: conv2d_forward(*_arrays(bk, (1, 3, 5, 5), (2, 3, 3, 3), (2,)), stride=0),
        r"convolution: stride must be an integer >= 1, got 0",
        id="conv-stride-0",
    ),
    pytest.param(
        lambda bk: avg_pool2d_forward(*_arrays(bk, (1, 3, 5, 5)), 2, 2, stride=-1),
        r"average pooling: stride must be an integer >= 1, got -1",
        id="avgpool-stride-negative",
    ),
    pytest.param(
        lambda bk: im2col(*_arrays(bk, (1, 3, 5, 5)), 2, 2, stride=1.5),
        r"im2col: stride must be an integer >= 1, got 1.5",
        id="im2col-stride-float",
    ),
    pytest.param(
        lambda bk: conv2d_forward(*_arrays(bk, (1, 3, 5, 5), (2, 3, 3, 3), (2,)), pad=-1),
        r"convolution: pad must be an integer >= 0, got -1",
        id="conv-pad-negative",
    ),
    pytest.param(
        lambda bk: max_pool2d_forward(*_arrays(bk, (1, 3, 5, 5)), 2, 2, pad=-1),
        r"max pooling: pad must be an integer >= 0, got -1",
        id="maxpool-pad-negative",
    ),
    pytest.param(
        lambda bk: max_pool2d_forward(*_arrays(bk, (1, 3, 5, 5)), 3, 3, pad=2),
        r"pad 2 must be at most half the window 3x3",
        id="maxpool-pad-over-half-window",
    ),
    pytest.param(
        lambda bk: conv2d_forward(*_arrays(bk, (1, 3, 5, 5), (2, 3, 3, 3), (3,))),
        r"convolution bias must have shape \(2,\), got \(3,\)",
        id="conv-bias-shape",
    ),
    pytest.param(
        lambda bk: conv2d_forward(*_arrays(bk, (1, 3, 5, 5), (2, 3, 3, 3), (1, 2))),
        r"convolution bias must have shape \(2,\), got \(1, 2\)",
        id="conv-bias-2d",
    ),
    pytest.param(
        lambda bk: affine_forward(*_arrays(bk, (2, 2, 3, 3), (17, 4), (4,))),
        r"input of shape \(2, 2, 3, 3\) flattens to 18 features but W has shape \(17, 4\)",
        id="affine-feature-mismatch",
    ),
    pytest.param(
        lambda bk: affine_forward(*_arrays(bk, (2, 3), (3, 4), (1,))),
        r"bias must have shape \(4,\), got \(1,\)",
        id="affine-bias-shape",
    ),
    pytest.param(
        lambda bk: col2im(*_arrays(bk, (9, 74)), (1, 3, 7, 7), 5, 5),
        r"col has shape \(9, 74\) but input_shape \(1, 3, 7, 7\) with a 5x5 filter needs \(9, 75\)",
        id="col2im-col-shape",
    ),
    pytest.param(
        lambda bk: softmax_cross_entropy_forward(*_arrays(bk, (4, 5), (3,))),
        r"got \(4, 5\) and \(3,\)",
        id="softmax-ce-batch-mismatch",
    ),
    pytest.param(
        lambda bk: softmax_cross_entropy_forward(*_arrays(bk, (4, 5), (4, 3))),
        r"one-hot labels have 3 classes but the scores have 5",
        id="softmax-ce-one-hot-classes",
    ),
]


@pytest.mark.parametrize(("call", "match"), ERROR_CASES)
def test_invalid_arguments_raise_value_error_naming_shapes(backend, call, match):
    with pytest.raises(ValueError, match=match):
        call(backend)


# --------------------------------------------------------------------------------------------
# 9. Backward passes do not modify their inputs
# --------------------------------------------------------------------------------------------


def _cache_arrays(cache):
    """The arrays a cache holds (a NamedTuple, or a dataclass such as each conv or
    pooling path's cache)."""
    if isinstance(cache, tuple):
        values = iter(cache)
    else:
        values = (getattr(cache, f.name) for f in dataclasses.fields(cache))
    return [v for v in values if hasattr(v, "shape")]


def _backward_conv(bk, rng):
    x, w, b = (
        bk.asarray(rng.standard_normal(s), "float64") for s in ((2, 2, 5, 5), (3, 2, 3, 3), (3,))
    )
    out, cache = conv2d_forward(x, w, b, stride=1, pad=1)
    dout = bk.asarray(rng.standard_normal(tuple(out.shape)), "float64")
    return [x, w, b, dout, *_cache_arrays(cache)], lambda: (
        cache.backward(dout),
        cache.backward(dout, need_dx=False),
    )


def _backward_pool(forward):
    def build(bk, rng):
        x = bk.asarray(rng.standard_normal((2, 2, 4, 4)), "float64")
        out, cache = forward(x, 2, 2, stride=1, pad=1)
        dout = bk.asarray(rng.standard_normal(tuple(out.shape)), "float64")
        return [x, dout, *_cache_arrays(cache)], lambda: cache.backward(dout)

    return build


def _backward_affine(bk, rng):
    x, w, b = (bk.asarray(rng.standard_normal(s), "float64") for s in ((2, 2, 2, 2), (8, 3), (3,)))
    _, cache = affine_forward(x, w, b)
    dout = bk.asarray(rng.standard_normal((2, 3)), "float64")
    return [x, w, b, dout, cache[0]], lambda: cache.backward(dout)


def _backward_activation(forward):
    def build(bk, rng):
        x = bk.asarray(rng.standard_normal((3, 4)), "float64")
        _, cache = forward(x)
        dout = bk.asarray(rng.standard_normal((3, 4)), "float64")
        return [x, dout, *_cache_arrays(cache)], lambda: cache.backward(dout)

    return build


def _backward_softmax_ce(bk, rng):
    x = bk.asarray(rng.standard_normal((3, 4)), "float64")
    t = bk.asarray(np.eye(4)[[1, 0, 3]], "float64")
    _, cache = softmax_cross_entropy_forward(x, t)
    return [x, t, *cache], lambda: cache.backward(2.0)


BACKWARD_BUILDERS = {
    "conv2d": _backward_conv,
    "max_pool2d": _backward_pool(max_pool2d_forward),
    "avg_pool2d": _backward_pool(avg_pool2d_forward),
    "affine": _backward_affine,
    "relu": _backward_activation(relu_forward),
    "sigmoid": _backward_activation(sigmoid_forward),
    "softmax-cross-entropy": _backward_softmax_ce,
}


def test_every_forward_returns_a_cache_that_owns_its_backward(backend, rng):
    """One op contract: every ``*_forward`` of ``xpcnn.ops`` returns ``(out, cache)`` and
    ``cache.backward(dout)`` gives ``dx`` shaped like the input, or ``(dx, d<param>, ...)``
    shaped like the forward's input and parameter arguments; no ``*_backward`` function
    is left to be paired with its forward by hand."""
    import xpcnn.ops as ops

    def arr(*shape: int) -> Any:
        return backend.asarray(rng.standard_normal(shape), "float64")

    x, W, b, g = arr(2, 3, 4, 4), arr(2, 3, 3, 3), arr(2), arr(3)
    u = backend.asarray(rng.random((2, 3, 4, 4)), "float64")
    t = backend.asarray(np.array([0, 2]), "int64")
    calls: dict[str, tuple[Callable[[], Any], list[Any]]] = {
        "conv2d_forward": (lambda: ops.conv2d_forward(x, W, b, pad=1), [x, W, b]),
        "conv2d_relu_forward": (lambda: ops.conv2d_relu_forward(x, W, b, pad=1), [x, W, b]),
        "conv2d_relu_max_pool2d_forward": (
            lambda: ops.conv2d_relu_max_pool2d_forward(x, W, b, pad=1),
            [x, W, b],
        ),
        "affine_forward": (lambda: ops.affine_forward(x, arr(48, 2), b), [x, arr(48, 2), b]),
        "batchnorm_forward": (lambda: ops.batchnorm_forward(x, g, g, g, g), [x, g, g]),
        "max_pool2d_forward": (lambda: ops.max_pool2d_forward(x, 2, 2), [x]),
        "avg_pool2d_forward": (lambda: ops.avg_pool2d_forward(x, 2, 2), [x]),
        "relu_max_pool2d_forward": (lambda: ops.relu_max_pool2d_forward(x, 2, 2), [x]),
        "relu_forward": (lambda: ops.relu_forward(x), [x]),
        "sigmoid_forward": (lambda: ops.sigmoid_forward(x), [x]),
        "tanh_forward": (lambda: ops.tanh_forward(x), [x]),
        "dropout_forward": (lambda: ops.dropout_forward(x, u, 0.5), [x]),
        "lrn_forward": (lambda: ops.lrn_forward(x, 3), [x]),
        "softmax_cross_entropy_forward": (
            lambda: ops.softmax_cross_entropy_forward(arr(2, 3), t),
            [arr(2, 3)],
        ),
    }
    assert set(calls) == {n for n in ops.__all__ if n.endswith("_forward")}
    assert [n for n in ops.__all__ if n.endswith("_backward")] == []
    for name, (call, inputs) in calls.items():
        out, cache = call()
        dout = 1.0 if out.shape == () else backend.asarray(np.ones(tuple(out.shape)), "float64")
        grads = cache.backward(dout)
        grads = grads if len(inputs) > 1 else (grads,)
        assert isinstance(grads, tuple) and len(grads) == len(inputs), name
        for k, (grad, inp) in enumerate(zip(grads, inputs, strict=True)):
            assert tuple(grad.shape) == tuple(inp.shape), f"{name}: gradient {k}"


@pytest.mark.parametrize("op", list(BACKWARD_BUILDERS))
def test_backward_does_not_modify_dout_or_cache(backend, rng, op):
    watched, run_backward = BACKWARD_BUILDERS[op](backend, rng)
    before = [backend.to_numpy(a).copy() for a in watched]
    run_backward()
    for k, (a, old) in enumerate(zip(watched, before, strict=True)):
        np.testing.assert_array_equal(backend.to_numpy(a), old, err_msg=f"{op}: input {k} changed")


@pytest.mark.parametrize("stride, pad", [(1, 1), (2, 0)])
def test_conv_relu_is_conv_then_relu(backend, dtype, rng, stride, pad):
    """The fused op gives exactly the two ops' results in turn, forward and backward,
    NaN included (the same sums on whatever path the backend takes)."""
    x = rng.standard_normal((3, 2, 7, 6))
    x[0, 0, 1, 1] = np.nan
    x, W, b = (
        backend.asarray(a, dtype)
        for a in (x, rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4))
    )
    out, cache = conv2d_relu_forward(x, W, b, stride, pad)
    dout = backend.asarray(rng.standard_normal(tuple(out.shape)), dtype)
    pre, conv = conv2d_forward(x, W, b, stride, pad)
    y, relu = relu_forward(pre)
    fused = [out, *cache.backward(dout)]
    apart = [y, *conv.backward(relu.backward(dout))]
    assert np.isnan(backend.to_numpy(pre)).any() and not np.isnan(backend.to_numpy(out)).any()
    for name, f, a in zip(("out", "dx", "dW", "db"), fused, apart, strict=True):
        np.testing.assert_array_equal(backend.to_numpy(f), backend.to_numpy(a), err_msg=name)
    assert cache.backward(dout, need_dx=False)[0] is None


# (N, C, H, W, FN, FH, FW, stride, pad, pool window = pool stride)
CONV_POOL_CASES = [
    pytest.param((3, 1, 8, 9, 4, 3, 3, 1, 0, 2), id="K9-a-column-unread"),
    pytest.param((2, 3, 9, 8, 3, 3, 3, 2, 1, 2), id="K27-s2-p1-a-row-unread"),
    pytest.param((2, 1, 11, 10, 2, 5, 5, 1, 2, 3), id="K25-p2-pool3"),
    pytest.param((2, 2, 7, 6, 3, 2, 3, 1, 1, 2), id="K12-filter-2x3"),
    pytest.param((2, 4, 6, 6, 3, 3, 3, 1, 1, 2), id="K36-ops-in-turn"),
]


@pytest.mark.parametrize("case", CONV_POOL_CASES)
@pytest.mark.parametrize("nan", [False, True], ids=["", "nan"])
def test_conv_relu_max_pool_is_the_ops_in_turn(backend, dtype, rng, case, nan):
    """Exactly the three ops' results in turn, forward and backward (with and without
    dx), on integer values, so every sum is exact in any order and the ReLU's zeros tie
    in the windows: the windows' blocks of a first layer with stride, padding, unread
    rows and columns and 3x3 windows, and the ops in turn for FH*FW*C >= 32."""
    N, C, H, W, FN, FH, FW, stride, pad, P = case
    x_host = rng.integers(-3, 4, (N, C, H, W)).astype(np.float64)
    if nan:
        x_host[0, 0, 1, 1] = np.nan
    x, Wt, b = (
        backend.asarray(a, dtype)
        for a in (x_host, rng.integers(-2, 3, (FN, C, FH, FW)), rng.integers(-2, 3, FN))
    )
    out, cache = conv2d_relu_max_pool2d_forward(x, Wt, b, stride, pad, P, P, P)
    dout = backend.asarray(rng.integers(-3, 4, tuple(out.shape)), dtype)
    pre, conv = conv2d_forward(x, Wt, b, stride, pad)
    y, relu = relu_forward(pre)
    pooled, pool = max_pool2d_forward(y, P, P, P)
    d = relu.backward(pool.backward(dout))
    to_np = backend.to_numpy
    assert (to_np(y) == 0).any() and (to_np(y) > 0).any()
    for need_dx in (True, False):
        fused = [out, *cache.backward(dout, need_dx=need_dx)]
        apart = [pooled, *conv.backward(d, need_dx=need_dx)]
        for name, f, a in zip(("out", "dx", "dW", "db"), fused, apart, strict=True):
            if a is None:
                assert f is None, name
            else:
                assert not np.isnan(to_np(a)).all(), name
                np.testing.assert_array_equal(to_np(f), to_np(a), err_msg=f"{name} {need_dx=}")


def test_relu_backward_does_not_write_into_dout_the_book_bug(backend, rng):
    """The book's ``Relu.backward`` zeroes ``dout`` in place; here it must stay intact."""
    x = backend.asarray(np.array([[-1.0, 2.0], [3.0, -4.0]]), "float64")
    dout_host = np.array([[10.0, 20.0], [30.0, 40.0]])
    dout = backend.asarray(dout_host, "float64")
    _, cache = relu_forward(x)
    dx = cache.backward(dout)
    np.testing.assert_array_equal(backend.to_numpy(dx), [[0.0, 20.0], [30.0, 0.0]])
    np.testing.assert_array_equal(backend.to_numpy(dout), dout_host)


# --------------------------------------------------------------------------------------------
# Dense ops: small exact facts
# --------------------------------------------------------------------------------------------


def test_softmax_is_stable_and_normalised(backend, dtype):
    x = backend.asarray(np.array([[1010.0, 1000.0, 990.0], [0.3, 2.9, 4.0]]), dtype)
    y = backend.to_numpy(softmax(x)).astype(np.float64)
    z = np.array([[20.0, 10.0, 0.0], [0.3, 2.9, 4.0]])
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    assert_close_scaled(y, expected, **_tol(dtype))
    # The book's example values for [0.3, 2.9, 4.0].
    np.testing.assert_allclose(y[1], [0.01821127, 0.24519181, 0.73659691], rtol=1e-6)


@pytest.mark.parametrize(
    ("y", "expected"),
    [
        pytest.param(
            [0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0], 0.510825457, id="book-right"
        ),
        pytest.param(
            [0.1, 0.05, 0.1, 0.0, 0.05, 0.1, 0.0, 0.6, 0.0, 0.0], 2.302584093, id="book-wrong"
        ),
    ],
)
def test_cross_entropy_error_book_examples(backend, dtype, y, expected):
    t_onehot = np.zeros(10)
    t_onehot[2] = 1.0
    y_arr = backend.asarray(np.array(y), dtype)
    loss_1d = cross_entropy_error(y_arr, backend.asarray(t_onehot, dtype))
    loss_label = cross_entropy_error(
        backend.asarray(np.array([y]), dtype), backend.asarray(np.array([2]), "int64")
    )
    np.testing.assert_allclose(float(backend.to_numpy(loss_1d)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(backend.to_numpy(loss_label)), expected, rtol=1e-6)


def test_softmax_cross_entropy_equals_cross_entropy_of_softmax(backend, dtype, rng):
    x_host = rng.standard_normal((6, 5))
    labels = rng.integers(0, 5, size=6)
    x = backend.asarray(x_host, dtype)
    t = backend.asarray(labels, "int64")
    loss, _ = softmax_cross_entropy_forward(x, t)
    loss_oh, _ = softmax_cross_entropy_forward(x, backend.asarray(np.eye(5)[labels], dtype))
    composed = cross_entropy_error(softmax(x), t)
    z = x_host - x_host.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    expected = -logp[np.arange(6), labels].mean()
    for value in (loss, loss_oh, composed):
        assert tuple(value.shape) == ()
        np.testing.assert_allclose(float(backend.to_numpy(value)), expected, rtol=1e-5)


def test_affine_forward_flattens_like_the_book(backend, dtype, rng):
    x_host, w_host, b_host = (
        rng.standard_normal((3, 2, 2, 2)),
        rng.standard_normal((8, 4)),
        rng.standard_normal(4),
    )
    out, _ = affine_forward(*(backend.asarray(a, dtype) for a in (x_host, w_host, b_host)))
    expected = x_host.astype(dtype).reshape(3, 8) @ w_host.astype(dtype) + b_host.astype(dtype)
    assert_close_scaled(backend.to_numpy(out), expected, **_tol(dtype))


# --------------------------------------------------------------------------------------------
# 10. Property: conv2d_forward equals a naive loop on random shapes (NumPy)
# --------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    N=st.integers(1, 2),
    C=st.integers(1, 3),
    FN=st.integers(1, 3),
    H=st.integers(1, 8),
    W=st.integers(1, 8),
    FH=st.integers(1, 4),
    FW=st.integers(1, 4),
    stride=st.integers(1, 3),
    pad=st.integers(0, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_conv2d_forward_equals_naive_loop_property(N, C, FN, H, W, FH, FW, stride, pad, seed):
    assume(conv_output_size(H, FH, stride, pad) >= 1 and conv_output_size(W, FW, stride, pad) >= 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((FN, C, FH, FW))
    b = rng.standard_normal(FN)
    out, _ = conv2d_forward(x, w, b, stride=stride, pad=pad)
    assert_close_scaled(np.asarray(out), naive_conv2d(x, w, b, stride, pad), rtol=1e-12, atol=1e-12)
