"""Network inputs as a user gives them (issue 13): raw uint8 pixels, flat rows, host
arrays; the shape check at the network's entry; reproducible training by default.

The reference for every method is the same call on pixels scaled on the host in
NumPy (``x / 255`` in float64, then cast), independent of :func:`xpcnn.inputs.as_input`.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import backend_device

from xpcnn import Trainer
from xpcnn.backend import to_numpy
from xpcnn.data import load_dataset
from xpcnn.inputs import as_input
from xpcnn.models import AlexNet, LeNet, NetBuilder, SimpleConvNet

TINY = {
    "input_dim": (1, 8, 8),
    "conv_param": {"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1},
    "hidden_size": 4,
    "output_size": 3,
    "weight_init_std": 0.5,
}


@pytest.fixture(scope="module")
def pixels():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, size=(6, 1, 8, 8), dtype=np.uint8)
    t = rng.integers(0, 3, size=6)
    return x, t


def _scaled(x: np.ndarray, dtype: str) -> np.ndarray:
    return (x.astype(np.float64) / 255.0).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_as_input_scales_integers_and_casts_floats(dtype):
    x = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    y = as_input(x, np.dtype(dtype))
    assert y.dtype == dtype and y.min() == 0 and y.max() == 1
    np.testing.assert_allclose(y, _scaled(x, dtype), rtol=np.finfo(dtype).eps, atol=0)
    f = _scaled(x, dtype)
    assert as_input(f, f.dtype) is f  # already the network's dtype: untouched
    other = "float64" if dtype == "float32" else "float32"
    assert as_input(f, np.dtype(other)).dtype == other


def test_every_entry_method_scales_uint8_pixels_like_the_trainer(backend, dtype, pixels):
    x8, t = pixels
    net = SimpleConvNet(**TINY, dtype=dtype, device=backend_device(backend), seed=0)
    xf = backend.asarray(_scaled(x8, dtype))
    tb = backend.asarray(t)
    tol = {"rtol": 1e-5 if dtype == "float32" else 1e-12, "atol": 1e-7}
    for x in (backend.asarray(x8), x8):  # on the device or on the host
        np.testing.assert_allclose(to_numpy(net.predict(x)), to_numpy(net.predict(xf)), **tol)
        assert float(to_numpy(net.loss(x, tb))) == pytest.approx(
            float(to_numpy(net.loss(xf, tb))), rel=tol["rtol"]
        )
        assert net.accuracy(x, t, batch_size=4) == net.accuracy(xf, tb, batch_size=4)
        g8, gf = net.gradient(x, tb), net.gradient(xf, tb)
        for k in gf:
            np.testing.assert_allclose(to_numpy(g8[k]), to_numpy(gf[k]), **tol, err_msg=k)


def test_numerical_gradient_scales_uint8_pixels(pixels):
    x8, t = pixels
    net = SimpleConvNet(**TINY, dtype="float64", seed=0)
    n8 = net.numerical_gradient(x8[:2], t[:2], h=1e-6)
    nf = net.numerical_gradient(_scaled(x8[:2], "float64"), t[:2], h=1e-6)
    for k in nf:
        np.testing.assert_array_equal(n8[k], nf[k], err_msg=k)
    g = net.gradient(x8[:2], t[:2])
    for k in g:  # and it is the gradient of the same loss
        np.testing.assert_allclose(n8[k], g[k], rtol=1e-6, atol=1e-8, err_msg=k)


def test_flat_rows_are_reshaped_to_input_dim(backend, pixels):
    x8, t = pixels
    net = SimpleConvNet(**TINY, dtype="float64", device=backend_device(backend), seed=0)
    flat = x8.reshape(len(x8), -1)
    np.testing.assert_array_equal(to_numpy(net.predict(flat)), to_numpy(net.predict(x8)))
    assert net.accuracy(flat, t) == net.accuracy(x8, t)


def test_an_affine_first_network_flattens_any_shape_as_before(pixels):
    x8, _ = pixels
    net = NetBuilder((64,), seed=0, dtype="float64").affine(3).build()
    np.testing.assert_array_equal(net.predict(x8), net.predict(x8.reshape(6, 64)))


@pytest.mark.parametrize(
    ("make", "shape", "match"),
    [
        (
            lambda: LeNet(seed=0),
            (2, 1, 28, 28),
            r"^LeNet expects inputs \(N, 1, 32, 32\) or flat \(N, 1024\), got \(2, 1, 28, 28\); "
            r"build the network for it: LeNet\(input_dim=\(1, 28, 28\)\)$",
        ),
        (
            lambda: AlexNet(conv_channels=(4, 4, 4, 4, 4), hidden_size=4, seed=0),
            (1, 1, 28, 28),
            r"AlexNet\.small\(input_dim=\(1, 28, 28\)\)$",
        ),
        (
            lambda: NetBuilder((1, 8, 8), seed=0).conv(2, 3).affine(3).build(),
            (2, 3, 8, 8),
            r"^Sequential expects inputs \(N, 1, 8, 8\) or flat \(N, 64\), got \(2, 3, 8, 8\); "
            r"build the network for it: NetBuilder\(\(3, 8, 8\)",
        ),
        (lambda: SimpleConvNet(**TINY, seed=0), (1, 8, 8), r"add the batch axis \(x\[None\]\)"),
        (lambda: SimpleConvNet(**TINY, seed=0), (2, 65), r"got \(2, 65\)"),
    ],
    ids=["lenet-28x28", "alexnet-small-hint", "builder", "no-batch-axis", "flat-wrong-size"],
)
def test_wrong_input_shape_is_refused_at_the_entry_with_the_fix(make, shape, match):
    net = make()
    x = np.zeros(shape, dtype=np.uint8)
    for call in (net.predict, lambda a: net.loss(a, np.zeros(shape[0], np.int64))):
        with pytest.raises(ValueError, match=match):
            call(x)


def test_the_suggested_network_takes_the_input():
    x = np.zeros((2, 1, 28, 28), dtype=np.uint8)
    assert LeNet(input_dim=(1, 28, 28), seed=0).predict(x).shape == (2, 10)
    assert AlexNet.small(input_dim=(1, 28, 28), seed=0).predict(x).shape == (2, 10)


# -- reproducible by default ---------------------------------------------------------------


def _readme_example(epochs: int = 1, n: int = 300) -> tuple[float, list[float]]:
    """README's "Whole networks and training" snippet on a slice of the sample."""
    data = load_dataset("mnist-sample")
    net = SimpleConvNet(seed=0, device="cpu")
    trainer = Trainer(
        net,
        data.x_train[:n],
        data.t_train[:n],
        data.x_test[:n],
        data.t_test[:n],
        epochs=epochs,
        verbose=False,
    )
    trainer.train()
    return trainer.test_accuracy(), trainer.train_loss_list


def test_readme_training_example_prints_the_same_numbers_twice():
    acc1, loss1 = _readme_example()
    acc2, loss2 = _readme_example()
    assert acc1 == acc2
    assert loss1 == loss2


def test_the_default_shuffle_seed_follows_the_networks_seed():
    x, t = np.zeros((50, 1, 8, 8), np.uint8), np.zeros(50, np.int64)

    def first_shuffle(net_seed: int, **kw) -> np.ndarray:
        net = SimpleConvNet(**TINY, seed=net_seed)
        return Trainer(net, x, t, x, t, verbose=False, **kw).rng.permutation(50)

    np.testing.assert_array_equal(first_shuffle(0), first_shuffle(0))
    assert not np.array_equal(first_shuffle(0), first_shuffle(1))
    # An explicit seed still wins.
    np.testing.assert_array_equal(first_shuffle(0, seed=5), first_shuffle(1, seed=5))
