"""Half precision for inference: ``Sequential.to_dtype("float16")`` (and bfloat16 on
PyTorch and JAX) keeps a trained network's accuracy within a point of float32 on the
bundled MNIST sample; every layer accepts float16; NumPy's fast paths give float16 the
generic path's results; a library without the dtype says so in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xpcnn import _fast
from xpcnn.backend import DeviceError, float_dtype, resolve_device, to_numpy
from xpcnn.data import load_dataset
from xpcnn.metrics import predict_labels
from xpcnn.models import MODELS, NetBuilder, SimpleConvNet
from xpcnn.testing import assert_close_scaled
from xpcnn.train import Trainer


@pytest.fixture(scope="module")
def sample():
    return load_dataset("mnist-sample")


@pytest.fixture(scope="module")
def trained(sample):
    """SimpleConvNet trained two epochs in float32: its weights and test predictions."""
    net = SimpleConvNet(weight_init_std="he", seed=0)
    Trainer(net, sample.x_train, sample.t_train, sample.x_test[:100], sample.t_test[:100],
            epochs=2, evaluate_sample_num_per_epoch=100, verbose=False, seed=0).train()  # fmt: skip
    pred = to_numpy(predict_labels(net, sample.x_test))
    acc = float((pred == sample.t_test).mean())
    assert acc > 0.9, acc  # a trained network, or the comparison proves nothing
    return net.state_dict(), pred, acc


def _converted(weights, backend, dtype):
    pytest.importorskip(backend)
    net = SimpleConvNet(weight_init_std="he", seed=1, device=resolve_device(None, backend))
    net.load_state_dict(weights)
    assert net.to_dtype(dtype) is net
    assert all(str(p.dtype).endswith(dtype) for p in net.params.values())
    return net


@pytest.mark.parametrize(
    ("backend", "dtype"), [("numpy", "float16"), ("torch", "float16"), ("torch", "bfloat16")]
)
def test_accuracy_within_a_point_of_float32(trained, sample, backend, dtype):
    weights, pred32, acc32 = trained
    net = _converted(weights, backend, dtype)
    scores = net.predict(sample.x_test[:5])
    assert str(scores.dtype).endswith(dtype)  # computed in dtype, not promoted back
    pred = to_numpy(predict_labels(net, sample.x_test))
    acc = float((pred == sample.t_test).mean())
    assert abs(acc - acc32) <= 0.01, (acc, acc32)
    assert (pred == pred32).mean() >= 0.98  # the same decisions, not only the same count


def test_jax_bfloat16_decides_as_float32(trained, sample):
    """JAX's eager bfloat16 on the CPU is slow: 200 images."""
    weights, pred32, _ = trained
    net = _converted(weights, "jax", "bfloat16")
    pred = to_numpy(predict_labels(net, sample.x_test[:200]))
    assert (pred == pred32[:200]).mean() >= 0.97


def _every_layer(input_dim, device):
    """One network with every kind of layer: conv, ReLU, max and average pooling, LRN,
    batch normalisation, sigmoid, tanh, dropout, affine."""
    b = NetBuilder(input_dim, weight_init="he", seed=3, device=device)
    b.conv(6, 3, pad=1).relu().lrn().pool(2).batchnorm().conv(8, 3).sigmoid()
    b.pool(2, mode="avg").affine(20).tanh().dropout(0.3).affine(10)
    return b.build()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_every_layer_computes_in_float16(backend):
    pytest.importorskip(backend)
    dev = resolve_device("cpu", backend)
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 12, 12), dtype=np.uint8)
    net = _every_layer((3, 12, 12), dev)
    expected = to_numpy(net.predict(x))
    half = net.to_dtype("float16").predict(x)
    assert str(half.dtype).endswith("float16")
    assert_close_scaled(to_numpy(half), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_numpy_fast_paths_give_float16_the_generic_results(model):
    x = np.random.default_rng(1).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    net = MODELS[model].for_input((3, 32, 32), seed=0).to_dtype("float16")
    fast = to_numpy(net.predict(x))
    with _fast.enabled(False):
        generic = to_numpy(net.predict(x))
    assert fast.dtype == generic.dtype == np.float16
    # float16's rounding, in a different summation order: a few units of its last place
    assert_close_scaled(fast, generic, rtol=4e-3, atol=4e-3, err_msg=model)


@pytest.mark.parametrize(
    ("backend", "dtype", "message"),
    [
        ("numpy", "bfloat16", "NumPy has no bfloat16: choose float16, float32, float64; "
         "bfloat16 needs --backend torch or jax"),
        ("array-api-strict", "float16", "array-api-strict has no float16: choose float32, float64"),
        ("numpy", "int8", "NumPy has no int8: choose float16, float32, float64"),
    ],
)  # fmt: skip
def test_a_library_without_the_dtype_says_so_in_one_line(backend, dtype, message):
    net = SimpleConvNet(seed=0, device=resolve_device("cpu", backend))
    with pytest.raises(DeviceError) as e:
        net.to_dtype(dtype)
    assert str(e.value) == message
    assert str(net.dtype).endswith("float32")  # unchanged


def test_float_dtype_and_host_copies_of_bfloat16():
    torch = pytest.importorskip("torch")
    dev = resolve_device("cpu", "torch")
    assert float_dtype(dev, "bfloat16") is torch.bfloat16
    host = to_numpy(torch.tensor([1.5, -2.0], dtype=torch.bfloat16))  # NumPy has no bfloat16
    assert host.dtype == np.float32 and host.tolist() == [1.5, -2.0]


# -- the command line: evaluate / predict --dtype; training refuses half precision --------


def _accuracy(out: str) -> float:
    return float(out.split("test accuracy ")[1].split()[0])


def test_evaluate_and_predict_in_half_precision(trained, sample, tmp_path, capsys):
    pytest.importorskip("torch")  # --backend torch (CI's lowest-versions run has no torch)
    from PIL import Image

    from xpcnn.cli import main

    weights, _, acc32 = trained
    net = SimpleConvNet(weight_init_std="he", seed=1)
    net.load_state_dict(weights)
    ckpt = net.save_params(tmp_path / "net.npz")
    assert main(["evaluate", str(ckpt), "--backend", "torch"]) == 0
    out32 = capsys.readouterr().out
    assert main(["evaluate", str(ckpt), "--backend", "torch", "--dtype", "bfloat16"]) == 0
    out16 = capsys.readouterr().out
    assert "(1000 images, float32)" in out32 and "(1000 images, bfloat16)" in out16
    assert _accuracy(out32) == pytest.approx(acc32, abs=1e-9)
    assert abs(_accuracy(out16) - acc32) <= 0.01

    Image.fromarray(sample.x_test[0, 0]).save(tmp_path / "digit.png")
    argv = ["predict", str(ckpt), str(tmp_path / "digit.png"), "--backend", "torch", "--json"]
    assert main([*argv, "--dtype", "bfloat16"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"][0]
    assert top["class"] == str(sample.t_test[0]) and 0.5 < top["p"] <= 1.0


def test_a_dtype_the_library_lacks_is_one_line(trained, tmp_path, capsys):
    from xpcnn.cli import main

    net = SimpleConvNet(weight_init_std="he", seed=1)
    ckpt = net.save_params(tmp_path / "net.npz")
    assert main(["evaluate", str(ckpt), "--dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "xpcnn evaluate: error: NumPy has no bfloat16: choose float16, float32, float64; "
        "bfloat16 needs --backend torch or jax\n"
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_training_in_half_precision_is_refused_and_nothing_written(dtype, tmp_path, capsys):
    from xpcnn.cli import main

    out = tmp_path / "run"
    assert main(["train", "--dtype", dtype, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"xpcnn train: error: --dtype {dtype}: training runs in float32 or float64; {dtype} "
        f"is for inference: train in float32, then xpcnn evaluate/predict --dtype {dtype}\n"
    )
    assert not out.exists()
