"""SimpleConvNet, Sequential and NetBuilder on every backend of the ``backend`` fixture.

- backpropagation against the book's gradient check (``numerical_gradient``), float64;
- the host-seeded initial weights are the same on every backend, so five Adam steps on
  real MNIST images give the same losses on NumPy, array-api-strict (both devices) and
  torch;
- the default SimpleConvNet learns (overfits 100 images, NumPy only);
- placement (``to``), state dicts, ``accuracy``, the builder's shape inference and
  summary, rebuilding from ``config``, and weight initialisation.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import numpy as np
import pytest
from array_api_compat import device as device_of
from helpers import CODE_PATHS, assert_close_scaled, backend_device, code_path_context

from xpcnn.backend import Device, resolve_device, to_numpy
from xpcnn.data import load_dataset
from xpcnn.layers import Affine, Convolution, Pooling, Relu
from xpcnn.models import NetBuilder, Sequential, SimpleConvNet, build_model, init_std
from xpcnn.optim import Adam

BOOK_PARAM_SHAPES = {
    "W1": (30, 1, 5, 5),
    "b1": (30,),
    "W2": (4320, 100),
    "b2": (100,),
    "W3": (100, 10),
    "b3": (10,),
}

# A tiny SimpleConvNet: non-square 2-channel input, padded 3x3 convolution.
TINY_INPUT = (2, 7, 6)
TINY_CONV = {"filter_num": 3, "filter_size": 3, "pad": 1, "stride": 1}
TINY_HIDDEN, TINY_CLASSES = 5, 4


def _tiny_net(backend: Any, *, seed: int = 0, dtype: str = "float64", **kw: Any) -> SimpleConvNet:
    kw.setdefault("weight_init_std", 0.3)
    return SimpleConvNet(
        TINY_INPUT,
        TINY_CONV,
        hidden_size=TINY_HIDDEN,
        output_size=TINY_CLASSES,
        dtype=dtype,
        device=backend_device(backend),
        seed=seed,
        **kw,
    )


def _host_params(net: Sequential) -> dict[str, np.ndarray]:
    """Host copies (``to_numpy`` of a NumPy array is the array itself)."""
    return {k: to_numpy(v).copy() for k, v in net.params.items()}


def _expected_device(backend: Any) -> Any:
    return device_of(backend.asarray(np.zeros(1), "float32"))


@functools.cache
def _mnist_batch(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images of the bundled sample, float32 in [0, 1], and int64 labels."""
    ds = load_dataset("mnist-sample")
    return ds.x_train[:n].astype(np.float32) / 255.0, ds.t_train[:n].astype(np.int64)


# --------------------------------------------------------------------------------------------
# 1. Backpropagation equals the book's numerical gradient (float64, every backend)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code_path", CODE_PATHS)
def test_simple_convnet_gradient_matches_numerical_gradient(backend, rng, code_path):
    with code_path_context(code_path):
        _check_simple_convnet_gradient(backend, rng)


def _check_simple_convnet_gradient(backend: Any, rng: np.random.Generator) -> None:
    net = _tiny_net(backend)
    # Non-zero biases, so no ReLU input sits exactly on the kink at 0 and b's gradients matter.
    # (With the book's std 0.01 the convolution outputs of a window differ by less than the
    # step h=1e-4 moves them, and max pooling switches winners: use std 0.3.)
    for key in ("b1", "b2", "b3"):
        net.params[key] = backend.asarray(
            0.1 * rng.standard_normal(net.params[key].shape), "float64"
        )
    x = backend.asarray(rng.standard_normal((3, *TINY_INPUT)), "float64")
    t = backend.asarray([0, 3, 1], "int64")

    backprop = net.gradient(x, t)
    numerical = net.numerical_gradient(x, t)

    assert list(backprop) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert list(numerical) == list(backprop)
    for key, g in backprop.items():
        assert tuple(g.shape) == tuple(net.params[key].shape), key
        assert g.dtype == backend.xp.float64, key
        assert device_of(g) == _expected_device(backend), key
        assert np.any(backend.to_numpy(g) != 0), f"{key}: gradient is all zero"
        assert_close_scaled(
            backend.to_numpy(g), backend.to_numpy(numerical[key]), rtol=1e-6, atol=1e-8, err_msg=key
        )


def test_gradient_fills_each_layer_grads(backend, rng):
    net = _tiny_net(backend)
    x = backend.asarray(rng.standard_normal((2, *TINY_INPUT)), "float64")
    grads = net.gradient(x, backend.asarray([1, 2], "int64"))
    layers_with_params = [layer for layer in net.layers if layer.params]
    assert [type(layer) for layer in layers_with_params] == [Convolution, Affine, Affine]
    for n, layer in enumerate(layers_with_params, start=1):
        for k in ("W", "b"):
            assert grads[f"{k}{n}"] is layer.grads[k]


# --------------------------------------------------------------------------------------------
# 2. Initial weights: the book's names and shapes, same seed -> same weights everywhere
# --------------------------------------------------------------------------------------------


def test_simple_convnet_has_the_books_parameter_names_and_shapes(backend):
    net = SimpleConvNet(device=backend_device(backend), seed=0)
    assert {k: tuple(v.shape) for k, v in net.params.items()} == BOOK_PARAM_SHAPES
    assert list(net.params) == list(BOOK_PARAM_SHAPES)
    assert [type(layer) for layer in net.layers] == [
        Convolution,
        Relu,
        Pooling,
        Affine,
        Relu,
        Affine,
    ]
    assert net.dtype == backend.xp.float32
    for key, v in net.params.items():
        assert device_of(v) == _expected_device(backend), key


def test_same_seed_gives_same_initial_weights_on_every_backend(backend, dtype):
    reference = _host_params(SimpleConvNet(dtype=dtype, device="cpu", seed=0))
    net = SimpleConvNet(dtype=dtype, device=backend_device(backend), seed=0)
    params = _host_params(net)
    assert list(params) == list(reference)
    for key, value in params.items():
        assert value.dtype == np.dtype(dtype), key
        np.testing.assert_array_equal(value, reference[key], err_msg=key)
    for key in ("b1", "b2", "b3"):
        assert not np.any(params[key]), f"{key} is not zeros"
    for key in ("W1", "W2"):  # the book's weight_init_std = 0.01
        assert abs(float(np.std(params[key])) - 0.01) < 0.001, key


def test_different_seeds_give_different_weights(backend):
    a = _host_params(_tiny_net(backend, seed=0))
    b = _host_params(_tiny_net(backend, seed=1))
    again = _host_params(_tiny_net(backend, seed=0))
    for key in ("W1", "W2", "W3"):
        assert not np.array_equal(a[key], b[key]), key
        np.testing.assert_array_equal(a[key], again[key], err_msg=key)


# --------------------------------------------------------------------------------------------
# 3. Cross-backend agreement: 5 Adam steps on 20 real images, float32
# --------------------------------------------------------------------------------------------


def _adam_losses(device: Device, steps: int = 5) -> np.ndarray:
    """Loss before each of ``steps`` Adam steps and after the last one."""
    x_host, t_host = _mnist_batch(20)
    net = SimpleConvNet(device=device, seed=0)
    x, t = device.asarray(x_host), device.asarray(t_host)
    optimizer = Adam()
    losses = []
    for _ in range(steps):
        grads = net.gradient(x, t)
        losses.append(float(to_numpy(net.last_layer.loss)))
        optimizer.update(net.params, grads)
    losses.append(float(to_numpy(net.loss(x, t))))
    return np.array(losses)


@functools.cache
def _numpy_adam_losses() -> np.ndarray:
    return _adam_losses(resolve_device("cpu"))


def test_adam_steps_give_same_losses_on_every_backend(backend):
    losses = _adam_losses(backend_device(backend))
    reference = _numpy_adam_losses()
    np.testing.assert_allclose(losses, reference, rtol=1e-4)
    assert np.all(np.diff(losses) < 0), f"loss did not decrease at every step: {losses}"
    assert losses[-1] < losses[0] - 0.02, losses


# --------------------------------------------------------------------------------------------
# 4. Learning: the default SimpleConvNet overfits 100 images
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_simple_convnet_overfits_100_images_with_adam():
    """The default SimpleConvNet (float32, Adam lr 0.001, seed 0) reaches 100% training
    accuracy on a fixed batch of 100 sample images. Measured: after 49 Adam steps (seeds 1
    and 2: 47 and 46); about 10 s on 2 cores."""
    x_host, t_host = _mnist_batch(100)
    assert len(np.unique(t_host)) == 10
    net = SimpleConvNet(seed=0)
    x, t = net.device.asarray(x_host), net.device.asarray(t_host)
    optimizer = Adam()
    losses, train_acc = [], 0.0
    for _ in range(300):
        grads = net.gradient(x, t)
        losses.append(float(net.last_layer.loss))
        # accuracy of this forward pass (before this step's update): no extra forward pass
        train_acc = float(np.mean(np.argmax(to_numpy(net.last_layer.y), axis=1) == t_host))
        if train_acc == 1.0:
            break
        optimizer.update(net.params, grads)
    else:
        pytest.fail(f"training accuracy {train_acc:.2f} after 300 Adam steps")
    steps = len(losses) - 1
    assert steps > 5, "100% before training: the batch is too easy to prove anything"
    assert net.accuracy(x, t) == 1.0
    assert losses[-1] < losses[0] / 5, losses


# --------------------------------------------------------------------------------------------
# 5. Placement, the parameter view, state dicts
# --------------------------------------------------------------------------------------------


def test_to_moves_every_parameter_and_keeps_predictions(backend, rng):
    cpu = resolve_device("cpu")
    net = SimpleConvNet(TINY_INPUT, TINY_CONV, hidden_size=5, dtype="float64", device=cpu, seed=0)
    x_host = rng.standard_normal((4, *TINY_INPUT))
    before = to_numpy(net.predict(cpu.asarray(x_host)))
    original = _host_params(net)

    target = backend_device(backend)
    assert net.to(target) is net
    assert net.device == target
    for key, v in net.params.items():
        assert device_of(v) == _expected_device(backend), key
        assert v.dtype == backend.xp.float64, key
    for layer in net.layers:  # the layers' own arrays moved, not only the view's
        for k, p in layer.params.items():
            assert device_of(p) == _expected_device(backend), f"{layer!r} {k}"
    moved = net.predict(backend.asarray(x_host, "float64"))
    assert device_of(moved) == _expected_device(backend)
    assert_close_scaled(backend.to_numpy(moved), before, rtol=1e-12, atol=1e-14)

    net.to(cpu)
    for key, v in net.params.items():
        assert isinstance(v, np.ndarray), key
        np.testing.assert_array_equal(v, original[key], err_msg=key)
    np.testing.assert_array_equal(to_numpy(net.predict(cpu.asarray(x_host))), before)


def test_to_strict_device1_and_back():
    """The GPU stand-in: host conversion from device1 is refused, so ``to`` must move it."""
    strict = pytest.importorskip("array_api_strict")
    device1 = Device("strict-device1", strict, strict.Device("device1"))
    cpu = resolve_device("cpu")
    net = SimpleConvNet(TINY_INPUT, TINY_CONV, hidden_size=5, dtype="float64", seed=0)
    x_host = np.random.default_rng(0).standard_normal((3, *TINY_INPUT))
    before = to_numpy(net.predict(cpu.asarray(x_host)))

    net.to(device1)
    assert all(device_of(v) == strict.Device("device1") for v in net.params.values())
    for x in (device1.asarray(x_host), strict.asarray(x_host)):  # an input elsewhere is moved
        np.testing.assert_allclose(to_numpy(net.predict(x)), before, rtol=1e-12, atol=1e-14)
    net.to(cpu)
    assert all(isinstance(v, np.ndarray) for v in net.params.values())
    np.testing.assert_array_equal(to_numpy(net.predict(x_host)), before)


def test_params_view_writes_through_to_the_layers(backend):
    net = _tiny_net(backend)
    new = backend.asarray(np.full(3, 0.5), "float64")
    net.params["b1"] = new
    assert net.layers[0].params["b"] is new
    assert net.params["b1"] is new
    assert len(net.params) == 6
    with pytest.raises(TypeError):
        del net.params["W1"]


def test_state_dict_round_trip(backend, rng):
    source = _tiny_net(backend, seed=0)
    target = _tiny_net(backend, seed=1)
    state = source.state_dict()
    assert sorted(state) == sorted(f"params/{k}" for k in ("W1", "b1", "W2", "b2", "W3", "b3"))
    assert all(isinstance(v, np.ndarray) for v in state.values())

    target.load_state_dict(state)
    x = backend.asarray(rng.standard_normal((3, *TINY_INPUT)), "float64")
    for key, v in target.params.items():
        assert device_of(v) == _expected_device(backend), key
        np.testing.assert_array_equal(backend.to_numpy(v), state[f"params/{key}"], err_msg=key)
    np.testing.assert_array_equal(
        backend.to_numpy(target.predict(x)), backend.to_numpy(source.predict(x))
    )


def test_state_dict_is_a_snapshot_that_restores_after_training(backend, rng):
    """Early stopping: save, train on, restore. ``state_dict`` promises host copies."""
    net = _tiny_net(backend)
    x = backend.asarray(rng.standard_normal((4, *TINY_INPUT)), "float64")
    t = backend.asarray([0, 1, 2, 3], "int64")
    optimizer = Adam(lr=0.01)
    optimizer.update(net.params, net.gradient(x, t))
    saved = net.state_dict()
    expected = {k: v.copy() for k, v in saved.items()}
    predicted = backend.to_numpy(net.predict(x)).copy()

    for _ in range(3):
        optimizer.update(net.params, net.gradient(x, t))
    assert not np.array_equal(to_numpy(net.params["W1"]), expected["params/W1"]), "no training"
    for key, value in saved.items():
        np.testing.assert_array_equal(value, expected[key], err_msg=f"{key} changed after saving")
    net.load_state_dict(saved)
    np.testing.assert_array_equal(backend.to_numpy(net.predict(x)), predicted)


def test_load_state_dict_casts_to_the_networks_dtype(backend):
    net32 = _tiny_net(backend, dtype="float32")
    net32.load_state_dict(_tiny_net(backend, seed=5).state_dict())  # float64 arrays
    assert all(v.dtype == backend.xp.float32 for v in net32.params.values())
    np.testing.assert_array_equal(
        to_numpy(net32.params["W2"]),
        _host_params(_tiny_net(backend, seed=5))["W2"].astype(np.float32),
    )


def test_load_state_dict_wrong_shape_names_the_key(backend):
    net = _tiny_net(backend)
    state = net.state_dict()
    state["params/W2"] = np.zeros((3, 3))
    before = _host_params(net)
    with pytest.raises(ValueError, match=r"params/W2.*\(3, 3\).*\(27, 5\)"):
        net.load_state_dict(state)
    # keys before W2 may have been loaded (same values); W2 itself is untouched
    np.testing.assert_array_equal(to_numpy(net.params["W2"]), before["W2"])


# --------------------------------------------------------------------------------------------
# 6. accuracy(): batched, integer and one-hot labels, against NumPy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels", ["int64", "uint8", "one-hot"])
@pytest.mark.parametrize("batch_size", [7, 1, 100], ids=lambda b: f"batch{b}")
def test_accuracy_matches_numpy(backend, rng, labels, batch_size):
    N = 25  # 7 does not divide 25; 100 is larger than N
    net = _tiny_net(backend)
    x = backend.asarray(rng.standard_normal((N, *TINY_INPUT)), "float64")
    predicted = np.argmax(backend.to_numpy(net.predict(x)), axis=1)
    # every third example (9 of 25) labelled wrong: the expected accuracy is 16/25
    wrong = np.arange(N) % 3 == 0
    t_host = np.where(wrong, (predicted + 1) % TINY_CLASSES, predicted)
    if labels == "one-hot":
        t = backend.asarray(np.eye(TINY_CLASSES)[t_host], "float64")
    else:
        t = backend.asarray(t_host, labels)

    acc = net.accuracy(x, t, batch_size=batch_size)
    assert isinstance(acc, float)
    assert acc == float(np.mean(predicted == t_host))
    assert acc == 16 / 25


# --------------------------------------------------------------------------------------------
# 7. NetBuilder: shape inference, summary, errors, dtype
# --------------------------------------------------------------------------------------------


def _example_builder(backend: Any | None = None, **kw: Any) -> NetBuilder:
    device = backend_device(backend) if backend is not None else "cpu"
    return NetBuilder((1, 12, 10), seed=0, device=device, **kw)


def test_builder_infers_shapes_block_by_block(backend, rng):
    b = _example_builder(backend)
    assert b.shape == (1, 12, 10)
    b.conv(4, (3, 2), pad=1)
    assert b.shape == (4, 12, 11)  # H: 12 + 2 - 3 + 1, W: 10 + 2 - 2 + 1
    b.relu()
    assert b.shape == (4, 12, 11)
    b.pool(2)
    assert b.shape == (4, 6, 5)  # (12 - 2) // 2 + 1, (11 - 2) // 2 + 1
    b.affine(70)
    assert b.shape == (70,)
    b.relu().affine(3)
    assert b.shape == (3,)

    net = b.build()
    assert net.output_shapes() == [(4, 12, 11), (4, 12, 11), (4, 6, 5), (70,), (70,), (3,)]
    assert {k: tuple(v.shape) for k, v in net.params.items()} == {
        "W1": (4, 1, 3, 2),
        "b1": (4,),
        "W2": (120, 70),
        "b2": (70,),
        "W3": (70, 3),
        "b3": (3,),
    }
    x = backend.asarray(rng.standard_normal((2, 1, 12, 10)), "float32")
    out = net.predict(x)
    assert tuple(out.shape) == (2, 3)
    assert out.dtype == backend.xp.float32


def test_summary_lists_every_layer_and_the_total_parameter_count():
    net = _example_builder().conv(4, (3, 2), pad=1).relu().pool(2).affine(70).relu().affine(3)
    net = net.build()
    summary = net.summary()
    # counted by hand: conv 4*1*3*2 + 4, affine 120*70 + 70, affine 70*3 + 3
    expected_total = (24 + 4) + (8400 + 70) + (210 + 3)
    assert expected_total == 8711
    lines = summary.splitlines()
    total_line = next(line for line in lines if line.startswith("total"))
    assert total_line.split()[-1] == "8,711"
    # each layer on its own line, in order, with its output shape and parameter count
    rows = [
        line for line in lines if line.split("(")[0] in {"Convolution", "Relu", "Pooling", "Affine"}
    ]
    assert len(rows) == len(net.layers)
    expected = zip(net.layers, net.output_shapes(), ["28", "", "", "8,470", "", "213"], strict=True)
    for row, (layer, shape, count) in zip(rows, expected, strict=True):
        assert row.startswith(repr(layer)), row
        assert str(shape) in row, row
        if count:
            assert row.split()[-1] == count, row
        else:  # no parameters: the row ends with the output shape
            assert row.rstrip().endswith(str(shape)), row
    assert "Convolution(1->4, 3x2, stride=1, pad=1)" in summary
    assert "Affine(120->70)" in summary
    assert "Affine(70->3)" in summary


@pytest.mark.parametrize(
    ("build", "match"),
    [
        pytest.param(
            lambda b: b.conv(3, 7),
            r"layer 0 \(Convolution\(1->3, 7x7.*\(1, 5, 5\)",
            id="conv-bigger-than-input",
        ),
        pytest.param(
            lambda b: b.conv(2, 3).pool(4),
            r"layer 1 \(Pooling\(max, 4x4.*\(2, 3, 3\)",
            id="pool-bigger-than-input",
        ),
        pytest.param(
            lambda b: b.add(Convolution(np.ones((2, 3, 3, 3)), np.zeros(2))),
            r"layer 0 \(Convolution\(3->2, 3x3.*C=3.*\(1, 5, 5\)",
            id="conv-channel-mismatch",
        ),
        pytest.param(
            lambda b: b.relu().add(Affine(np.ones((24, 4)), np.zeros(4))),
            r"layer 1 \(Affine\(24->4\)\).*24.*\(1, 5, 5\).*25",
            id="affine-feature-mismatch",
        ),
        pytest.param(
            lambda b: b.affine(4).conv(2, 3),
            r"conv needs an image-shaped input.*\(4,\)",
            id="conv-after-affine",
        ),
    ],
)
def test_builder_block_that_does_not_fit_raises_naming_the_layer(build, match):
    builder = NetBuilder((1, 5, 5), seed=0)
    with pytest.raises(ValueError, match=match):
        build(builder)


def test_sequential_refuses_layers_that_do_not_chain():
    conv = Convolution(np.ones((2, 1, 3, 3)), np.zeros(2))
    with pytest.raises(ValueError, match=r"layer 1 \(Affine\(10->3\)\)"):
        Sequential([conv, Affine(np.ones((10, 3)), np.zeros(3))], (1, 5, 5))
    with pytest.raises(ValueError, match="at least one layer"):
        Sequential([], (1, 5, 5))


@pytest.mark.parametrize("bad", ["float16", "int32", "float", "bfloat16"])
def test_dtype_other_than_float32_or_float64_is_refused(bad):
    with pytest.raises(ValueError, match=rf"dtype must be one of .*{bad}"):
        NetBuilder((1, 5, 5), dtype=bad)
    with pytest.raises(ValueError, match=f"got '{bad}'"):
        SimpleConvNet(TINY_INPUT, TINY_CONV, dtype=bad)


@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_builder_dtype_sets_every_parameter(backend, dt):
    net = _example_builder(backend, dtype=dt).conv(2, 3).relu().affine(3).build()
    assert all(v.dtype == getattr(backend.xp, dt) for v in net.params.values())
    assert net.dtype == getattr(backend.xp, dt)


# --------------------------------------------------------------------------------------------
# 8. Rebuilding from config
# --------------------------------------------------------------------------------------------


def test_build_model_from_config_rebuilds_architecture_and_weights(backend):
    kwargs = dict(
        input_dim=(1, 12, 11),
        conv_param={"filter_num": 3, "filter_size": 3, "pad": 1, "stride": 2},
        hidden_size=6,
        output_size=4,
        weight_init_std="he",
        dtype="float64",
    )
    net = SimpleConvNet(**kwargs, device=backend_device(backend), seed=3)
    config = json.loads(json.dumps(net.config))  # JSON-able, as checkpoints store it

    same = build_model(config, device=backend_device(backend), seed=3)
    other = build_model(config, device=backend_device(backend), seed=4)

    assert type(same) is SimpleConvNet
    assert same.config == net.config
    shapes = {k: tuple(v.shape) for k, v in net.params.items()}
    assert shapes["W1"] == (3, 1, 3, 3)
    assert shapes["W2"] == (3 * 3 * 3, 6)  # conv 6x6 (stride 2, pad 1), pooled to 3x3
    assert {k: tuple(v.shape) for k, v in same.params.items()} == shapes
    assert {k: tuple(v.shape) for k, v in other.params.items()} == shapes
    assert same.dtype == backend.xp.float64
    for key, value in _host_params(same).items():
        np.testing.assert_array_equal(value, _host_params(net)[key], err_msg=key)
    assert not np.array_equal(_host_params(other)["W1"], _host_params(net)["W1"])


def test_build_model_refuses_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'sequential'"):
        build_model({"model": "sequential"})


# --------------------------------------------------------------------------------------------
# 9. Weight initialisation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fan_in", [1, 25, 4320])
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("he", lambda n: math.sqrt(2.0 / n), id="he"),
        pytest.param("relu", lambda n: math.sqrt(2.0 / n), id="relu"),
        pytest.param("He", lambda n: math.sqrt(2.0 / n), id="He-case"),
        pytest.param("xavier", lambda n: math.sqrt(1.0 / n), id="xavier"),
        pytest.param("sigmoid", lambda n: math.sqrt(1.0 / n), id="sigmoid"),
        pytest.param("std", lambda n: 0.01, id="std"),
        pytest.param(0.05, lambda n: 0.05, id="number"),
        pytest.param(2, lambda n: 2.0, id="integer"),
    ],
)
def test_init_std(name, expected, fan_in):
    std = init_std(name, fan_in)
    assert isinstance(std, float)
    assert std == pytest.approx(expected(fan_in), rel=1e-15)


@pytest.mark.parametrize("bad", ["kaiming", "", 0, 0.0, -0.01, float("nan")], ids=repr)
def test_init_std_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="weight_init"):
        init_std(bad, 25)


def test_weight_init_is_used_for_the_drawn_weights():
    net = NetBuilder((1, 1, 400), weight_init="he", seed=0).affine(300).build()
    assert float(np.std(to_numpy(net.params["W1"]))) == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    net = NetBuilder((400,), weight_init="xavier", seed=0).affine(300, weight_init=0.5).build()
    assert float(np.std(to_numpy(net.params["W1"]))) == pytest.approx(0.5, rel=0.02)


def test_predict_without_cache_gives_the_same_scores_and_keeps_nothing(backend, rng):
    net = _tiny_net(backend)
    x = backend.asarray(rng.standard_normal((3, *TINY_INPUT)), "float64")
    kept = backend.to_numpy(net.predict(x))
    assert any(getattr(layer, "_cache", None) is not None for layer in net.layers)
    dropped = backend.to_numpy(net.predict(x, keep_cache=False))
    np.testing.assert_array_equal(dropped, kept)
    for layer in net.layers:
        assert layer._cache is None, layer
