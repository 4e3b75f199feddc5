"""Dropout, BatchNormalization, LRN and Tanh (layers and ops) on every backend.

References: float64 central differences (``helpers.numerical_gradient``), NumPy
formulas written from the book / the papers, and ``torch.nn.functional`` with
autograd when torch is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from array_api_compat import device as device_of
from helpers import assert_close_scaled, numerical_gradient, weighted_sum

from xpcnn.backend import random_uniform
from xpcnn.layers import LRN, BatchNormalization, Dropout, Layer, Tanh
from xpcnn.ops import lrn_forward


def _device(backend: Any) -> Any:
    return device_of(backend.asarray(np.zeros(1), "float32"))


def _bn(backend: Any, C: int, rng: np.random.Generator, dtype: str = "float64", **kw: Any):
    """A BatchNormalization with random gamma/beta (so their gradients are not trivial)."""
    gamma = backend.asarray(1.0 + 0.5 * rng.standard_normal(C), dtype)
    beta = backend.asarray(0.5 * rng.standard_normal(C), dtype)
    return BatchNormalization(gamma, beta, **kw)


def check_layer_gradients(
    backend: Any,
    make_layer: Callable[[], Layer],
    x_host: np.ndarray,
    rng: np.random.Generator,
    *,
    train_flg: bool = True,
    rtol: float = 1e-6,
    atol: float = 1e-8,
) -> None:
    """Float64 check of ``backward``'s dx and every ``grads[name]`` against central
    differences of ``sum(forward(x) * w)``; a fresh layer per evaluation."""
    layer = make_layer()
    x = backend.asarray(x_host, "float64")
    out = layer.forward(x, train_flg)
    w = rng.standard_normal(tuple(out.shape))
    dx = layer.backward(backend.asarray(w, "float64"))
    assert tuple(dx.shape) == x_host.shape

    def f_x(v: np.ndarray) -> float:
        return weighted_sum(
            backend.to_numpy(make_layer().forward(backend.asarray(v), train_flg)), w
        )

    assert_close_scaled(
        backend.to_numpy(dx), numerical_gradient(f_x, x_host), rtol, atol, err_msg="dx"
    )
    for name in layer.params:

        def f_p(v: np.ndarray, name: str = name) -> float:
            fresh = make_layer()
            fresh.params[name] = backend.asarray(v, "float64")
            return weighted_sum(backend.to_numpy(fresh.forward(x, train_flg)), w)

        num = numerical_gradient(f_p, backend.to_numpy(layer.params[name]))
        assert_close_scaled(backend.to_numpy(layer.grads[name]), num, rtol, atol, err_msg=name)


# --------------------------------------------------------------------------------------------
# Dropout and its random seam
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.5, 0.2])
def test_dropout_mask_statistics_and_expectation(backend, dtype, ratio):
    x = backend.asarray(np.ones((200, 500)), dtype)
    layer = Dropout(ratio, seed=0)
    out = layer.forward(x, train_flg=True)
    assert out.dtype == x.dtype and device_of(out) == _device(backend)
    host = backend.to_numpy(out).astype(np.float64)
    kept = host != 0
    np.testing.assert_array_equal(kept, backend.to_numpy(layer.mask))
    # 1e5 Bernoulli draws: the fraction's std is < 0.0016, the mean's < 0.0032.
    assert abs(kept.mean() - (1.0 - ratio)) < 0.01
    np.testing.assert_allclose(host[kept], 1.0 / (1.0 - ratio), rtol=1e-6)
    assert abs(host.mean() - 1.0) < 0.02  # inverted dropout preserves the expectation


def test_dropout_inference_is_identity(backend, dtype, rng):
    x = backend.asarray(rng.standard_normal((4, 3, 5)), dtype)
    layer = Dropout(0.5, seed=0)
    layer.forward(x, train_flg=True)
    out = layer.forward(x, train_flg=False)
    np.testing.assert_array_equal(backend.to_numpy(out), backend.to_numpy(x))  # no rescaling
    assert layer.mask is None
    dout = backend.asarray(rng.standard_normal((4, 3, 5)), dtype)
    np.testing.assert_array_equal(backend.to_numpy(layer.backward(dout)), backend.to_numpy(dout))


def test_dropout_ratio_zero_is_identity_in_training(backend, rng):
    x = backend.asarray(rng.standard_normal((3, 4)), "float64")
    np.testing.assert_array_equal(
        backend.to_numpy(Dropout(0.0).forward(x, True)), backend.to_numpy(x)
    )


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_dropout_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match="dropout_ratio"):
        Dropout(ratio)


def test_dropout_backward_uses_the_forward_mask(backend, dtype, rng):
    ratio = 0.4
    x = backend.asarray(rng.uniform(0.5, 1.5, size=(6, 3, 4, 4)), dtype)
    dout_host = rng.standard_normal((6, 3, 4, 4))
    layer = Dropout(ratio, seed=1)
    out = layer.forward(x, train_flg=True)
    dx = backend.to_numpy(layer.backward(backend.asarray(dout_host, dtype)))
    mask = backend.to_numpy(out) != 0  # x > 0, so a zero output is a dropped unit
    expected = np.where(mask, dout_host.astype(dtype) / (1.0 - ratio), 0.0)
    np.testing.assert_allclose(dx, expected, rtol=1e-6)
    assert 0 < mask.sum() < mask.size


def test_dropout_same_seed_same_masks(backend, rng):
    x = backend.asarray(np.ones((8, 50)), "float32")
    a, b, c = Dropout(0.5, seed=7), Dropout(0.5, seed=7), Dropout(0.5, seed=8)
    first_a, first_b = backend.to_numpy(a.forward(x)), backend.to_numpy(b.forward(x))
    np.testing.assert_array_equal(first_a, first_b)
    # The masks are a sequence: each step draws a new one, the same for the same seed.
    np.testing.assert_array_equal(backend.to_numpy(a.forward(x)), backend.to_numpy(b.forward(x)))
    assert not np.array_equal(backend.to_numpy(a.forward(x)), first_a)
    assert not np.array_equal(backend.to_numpy(c.forward(x)), first_a)


def test_random_state_hooks_default_to_nothing_and_round_trip_on_dropout(backend):
    """``Layer.rng_state`` is None for a layer that draws nothing (its other hooks do
    nothing); Dropout's snapshot restores its sequence of masks, and ``reseed``
    derives the new seed from the layer's own."""
    tanh = Tanh()
    assert tanh.rng_state() is None
    tanh.set_rng_state({})
    tanh.reseed(lambda seed: 1)
    x = backend.asarray(np.ones((8, 50)), "float32")
    drop = Dropout(0.5, seed=7)
    assert drop.rng_state() == {}  # no generator before the first draw
    drop.forward(x)
    state = drop.rng_state()
    assert all(isinstance(a, np.ndarray) for a in state.values())
    if backend.name != "cupy":  # CuPy generators expose no state to restore
        assert state
        following = backend.to_numpy(drop.forward(x))
        drop.set_rng_state(state)
        np.testing.assert_array_equal(backend.to_numpy(drop.forward(x)), following)
    seen: list[int | None] = []
    drop.reseed(lambda seed: seen.append(seed) or 11)
    assert seen == [7]
    np.testing.assert_array_equal(
        backend.to_numpy(drop.forward(x)), backend.to_numpy(Dropout(0.5, seed=11).forward(x))
    )


def test_dropout_gradient_numerical(backend, rng):
    # A fresh layer with the same seed draws the same first mask: forward is a fixed linear map.
    check_layer_gradients(
        backend, lambda: Dropout(0.3, seed=3), rng.standard_normal((2, 3, 4, 4)), rng
    )


def test_random_uniform_follows_like_and_seed(backend, dtype):
    like = backend.asarray(np.zeros((2, 2)), dtype)
    state: dict[str, Any] = {"seed": 5}
    u = random_uniform(like, (300, 40), seed_state=state)
    assert u.dtype == like.dtype and device_of(u) == _device(backend)
    host = backend.to_numpy(u)
    assert host.shape == (300, 40) and host.min() >= 0.0 and host.max() < 1.0
    assert abs(host.mean() - 0.5) < 0.01
    again = random_uniform(like, (300, 40), seed_state={"seed": 5})
    np.testing.assert_array_equal(backend.to_numpy(again), host)
    # The generator lives in the state: the next draw continues the sequence.
    assert not np.array_equal(
        backend.to_numpy(random_uniform(like, (300, 40), seed_state=state)), host
    )
    if backend.name == "torch":
        import torch

        # torch tensors use a torch.Generator on their device, not the host generator.
        assert isinstance(state["torch:cpu"], torch.Generator) and "host" not in state


# --------------------------------------------------------------------------------------------
# Batch normalisation
# --------------------------------------------------------------------------------------------

BN_SHAPES = [pytest.param((4, 3, 3, 2), id="NCHW"), pytest.param((5, 4), id="ND")]


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_gradients_numerical_train(backend, rng, shape):
    C = shape[1]
    gamma, beta = 1.0 + 0.5 * rng.standard_normal(C), 0.5 * rng.standard_normal(C)

    def make() -> BatchNormalization:
        return BatchNormalization(
            backend.asarray(gamma, "float64"), backend.asarray(beta, "float64")
        )

    x = 2.0 * rng.standard_normal(shape) + 0.5
    check_layer_gradients(backend, make, x, rng, train_flg=True, rtol=1e-5, atol=1e-7)


def test_batchnorm_gradients_numerical_inference(backend, rng):
    C = 3
    gamma, beta = 1.0 + 0.5 * rng.standard_normal(C), 0.5 * rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)

    def make() -> BatchNormalization:
        a = backend.asarray
        return BatchNormalization(
            a(gamma, "float64"), a(beta, "float64"), 0.9, a(rm, "float64"), a(rv, "float64")
        )

    check_layer_gradients(backend, make, rng.standard_normal((2, C, 3, 3)), rng, train_flg=False)


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_statistics_per_channel_and_running_update(backend, dtype, rng, shape):
    C = shape[1]
    axes = (0, 2, 3) if len(shape) == 4 else (0,)
    layer = _bn(backend, C, rng, dtype, momentum=0.8)
    gamma = backend.to_numpy(layer.params["gamma"]).astype(np.float64)
    beta = backend.to_numpy(layer.params["beta"]).astype(np.float64)
    bshape = (1, C) + (1,) * (len(shape) - 2)
    rm, rv = np.zeros(C), np.ones(C)
    for step in range(2):
        x_host = (3.0 * rng.standard_normal(shape) + step).astype(dtype)
        out = layer.forward(backend.asarray(x_host, dtype), train_flg=True)
        assert out.dtype == getattr(backend.xp, dtype) and device_of(out) == _device(backend)
        x64 = x_host.astype(np.float64)
        mu, var = x64.mean(axis=axes), x64.var(axis=axes)
        xn = (x64 - mu.reshape(bshape)) / np.sqrt(var.reshape(bshape) + 1e-6)
        tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == "float32" else {"rtol": 1e-10, "atol": 1e-10}
        np.testing.assert_allclose(
            backend.to_numpy(out), gamma.reshape(bshape) * xn + beta.reshape(bshape), **tol
        )
        rm, rv = 0.8 * rm + 0.2 * mu, 0.8 * rv + 0.2 * var  # the book's update (biased var)
        np.testing.assert_allclose(backend.to_numpy(layer.buffers["running_mean"]), rm, **tol)
        np.testing.assert_allclose(backend.to_numpy(layer.buffers["running_var"]), rv, **tol)
    # Inference normalises with the running statistics and leaves them alone.
    x_host = rng.standard_normal(shape).astype(dtype)
    out = layer.forward(backend.asarray(x_host, dtype), train_flg=False)
    expected = (x_host - rm.reshape(bshape)) / np.sqrt(rv.reshape(bshape) + 1e-6)
    np.testing.assert_allclose(
        backend.to_numpy(out), gamma.reshape(bshape) * expected + beta.reshape(bshape), **tol
    )
    np.testing.assert_allclose(backend.to_numpy(layer.buffers["running_mean"]), rm, **tol)


def test_batchnorm_defaults_and_shape_checks(backend):
    gamma = backend.asarray(np.ones(3), "float32")
    layer = BatchNormalization(gamma, backend.asarray(np.zeros(3), "float32"))
    np.testing.assert_array_equal(backend.to_numpy(layer.buffers["running_mean"]), np.zeros(3))
    np.testing.assert_array_equal(backend.to_numpy(layer.buffers["running_var"]), np.ones(3))
    assert layer.output_shape((3, 5, 5)) == (3, 5, 5) and layer.output_shape((3,)) == (3,)
    with pytest.raises(ValueError, match="3 channels"):
        layer.output_shape((4, 5, 5))
    with pytest.raises(ValueError, match="gamma"):
        layer.forward(backend.asarray(np.ones((2, 4, 2, 2)), "float32"))
    with pytest.raises(ValueError, match=r"\(N, D\) or \(N, C, H, W\)"):
        layer.forward(backend.asarray(np.ones((2, 3, 2)), "float32"))


def test_batchnorm_matches_torch_train(backend, dtype, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    shape = (4, 3, 5, 2)
    x_host, dout = rng.standard_normal(shape), rng.standard_normal(shape)
    layer = _bn(backend, 3, rng, dtype)
    out = layer.forward(backend.asarray(x_host, dtype), train_flg=True)
    dx = layer.backward(backend.asarray(dout, dtype))
    td = getattr(torch, dtype)
    tx = torch.tensor(x_host, dtype=td, requires_grad=True)
    tg = torch.tensor(backend.to_numpy(layer.params["gamma"]), dtype=td, requires_grad=True)
    tb = torch.tensor(backend.to_numpy(layer.params["beta"]), dtype=td, requires_grad=True)
    tout = F.batch_norm(tx, None, None, tg, tb, training=True, eps=1e-6)
    tout.backward(torch.tensor(dout, dtype=td))
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == "float32" else {"rtol": 1e-10, "atol": 1e-10}
    np.testing.assert_allclose(backend.to_numpy(out), tout.detach().numpy(), **tol)
    np.testing.assert_allclose(backend.to_numpy(dx), tx.grad.numpy(), **tol)
    np.testing.assert_allclose(backend.to_numpy(layer.grads["gamma"]), tg.grad.numpy(), **tol)
    np.testing.assert_allclose(backend.to_numpy(layer.grads["beta"]), tb.grad.numpy(), **tol)


# --------------------------------------------------------------------------------------------
# Local response normalisation
# --------------------------------------------------------------------------------------------

# (size, alpha, beta, k); large alphas make the cross-channel terms of the gradient matter.
LRN_CASES = [
    pytest.param((5, 1e-4, 0.75, 2.0), id="alexnet"),
    pytest.param((3, 0.5, 0.75, 1.0), id="n3"),
    pytest.param((4, 2.0, 0.6, 1.5), id="n4-even"),
    pytest.param((7, 1.0, 1.0, 1.0), id="n7-wider-than-C"),
    pytest.param((1, 1.0, 0.5, 1.0), id="n1"),
]


def naive_lrn(x: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """AlexNet's formula with PyTorch's window (``c - size//2 .. c + (size-1)//2``)."""
    C = x.shape[1]
    out = np.empty_like(x, dtype=np.float64)
    for c in range(C):
        lo, hi = max(0, c - size // 2), min(C, c + (size - 1) // 2 + 1)
        s = np.sum(x[:, lo:hi].astype(np.float64) ** 2, axis=1)
        out[:, c] = x[:, c] / (k + alpha / size * s) ** beta
    return out


@pytest.mark.parametrize("case", LRN_CASES)
def test_lrn_gradient_numerical(backend, rng, case):
    size, alpha, beta, k = case
    check_layer_gradients(
        backend, lambda: LRN(size, alpha, beta, k), 1.5 * rng.standard_normal((2, 5, 3, 2)), rng
    )


@pytest.mark.parametrize("case", LRN_CASES)
def test_lrn_forward_matches_naive_loop(backend, dtype, rng, case):
    x_host = (1.5 * rng.standard_normal((2, 6, 3, 3))).astype(dtype)
    out = LRN(*case).forward(backend.asarray(x_host, dtype))
    assert out.dtype == getattr(backend.xp, dtype) and device_of(out) == _device(backend)
    tol = {"rtol": 1e-5} if dtype == "float32" else {"rtol": 1e-12}
    np.testing.assert_allclose(backend.to_numpy(out), naive_lrn(x_host, *case), **tol)


@pytest.mark.parametrize("case", LRN_CASES)
def test_lrn_matches_torch_local_response_norm(backend, dtype, rng, case):
    torch = pytest.importorskip("torch")
    size, alpha, beta, k = case
    x_host, dout = 1.5 * rng.standard_normal((3, 7, 4, 5)), rng.standard_normal((3, 7, 4, 5))
    out, cache = lrn_forward(backend.asarray(x_host, dtype), size, alpha, beta, k)
    dx = cache.backward(backend.asarray(dout, dtype))
    td = getattr(torch, dtype)
    tx = torch.tensor(x_host, dtype=td, requires_grad=True)
    tout = torch.nn.functional.local_response_norm(tx, size, alpha=alpha, beta=beta, k=k)
    tout.backward(torch.tensor(dout, dtype=td))
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-11, "atol": 1e-12}
    np.testing.assert_allclose(backend.to_numpy(out), tout.detach().numpy(), **tol)
    np.testing.assert_allclose(backend.to_numpy(dx), tx.grad.numpy(), **tol)


def test_lrn_rejects_bad_input(backend):
    with pytest.raises(ValueError, match="size"):
        LRN(size=0).forward(backend.asarray(np.ones((1, 2, 2, 2)), "float32"))
    with pytest.raises(ValueError, match=r"\(N, C, ...\)"):
        LRN().forward(backend.asarray(np.ones(3), "float32"))


# --------------------------------------------------------------------------------------------
# Tanh, and what every new layer keeps
# --------------------------------------------------------------------------------------------


def test_tanh_gradient_numerical_and_values(backend, rng):
    x = 2.0 * rng.standard_normal((3, 2, 4))
    check_layer_gradients(backend, Tanh, x, rng)
    np.testing.assert_allclose(
        backend.to_numpy(Tanh().forward(backend.asarray(x, "float64"))), np.tanh(x), rtol=1e-12
    )


NEW_LAYERS = {
    "dropout": lambda backend, dtype, rng: Dropout(0.5, seed=0),
    "batchnorm": lambda backend, dtype, rng: _bn(backend, 3, rng, dtype),
    "lrn": lambda backend, dtype, rng: LRN(),
    "tanh": lambda backend, dtype, rng: Tanh(),
}


@pytest.mark.parametrize("name", list(NEW_LAYERS))
@pytest.mark.parametrize("train_flg", [True, False])
def test_new_layers_keep_dtype_device_and_shape(backend, dtype, rng, name, train_flg):
    layer = NEW_LAYERS[name](backend, dtype, rng)
    x_host = rng.standard_normal((2, 3, 4, 4))
    dout_host = rng.standard_normal((2, 3, 4, 4))
    x, dout = backend.asarray(x_host, dtype), backend.asarray(dout_host, dtype)
    out = layer.forward(x, train_flg)
    dx = layer.backward(dout)
    assert layer.output_shape((3, 4, 4)) == (3, 4, 4)
    for a in (out, dx, *layer.grads.values(), *layer.buffers.values()):
        assert a.dtype == getattr(backend.xp, dtype)
        assert device_of(a) == _device(backend)
    assert tuple(out.shape) == tuple(dx.shape) == (2, 3, 4, 4)
    # backward never writes into its input
    np.testing.assert_array_equal(backend.to_numpy(dout), dout_host.astype(dtype))
