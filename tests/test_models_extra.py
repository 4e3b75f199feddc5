"""DeepConvNet, LeNet, AlexNet, the new NetBuilder blocks and weight initialisation.

Gradient checks use tiny float64 instances (small inputs and channel counts,
dropout off) against ``Sequential.numerical_gradient``; the full-size
architectures are checked by shape inference (AlexNet's 62M parameters with
``shape_only=True``, never allocated).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from array_api_compat import device as device_of
from helpers import assert_close_scaled, network_loss

from xpcnn.backend import Device
from xpcnn.layers import LRN, Convolution, Dropout, Pooling
from xpcnn.models import (
    MODELS,
    AlexNet,
    DeepConvNet,
    LeNet,
    NetBuilder,
    Sequential,
    SimpleConvNet,
    build_model,
    init_std,
)
from xpcnn.optim import Adam


def _dev(backend: Any) -> Device:
    return Device(backend.name, backend.xp, backend.device)


def _randomize_biases(net: Sequential, seed: int) -> None:
    """Give every bias (b, beta) random non-zero values.

    Zero biases put units whose inputs are all exactly zero (dead ReLUs, padding)
    exactly on the ReLU kink, where the central difference sees slope 1/2 and
    backpropagation 0: a false alarm, not a bug.
    """
    rng = np.random.default_rng(seed)
    for key in net.params:
        if key.startswith(("b", "beta")):
            shape = tuple(net.params[key].shape)
            net.params[key] = net.device.asarray(rng.uniform(-0.3, 0.3, shape), net.dtype)


def _batch(backend: Any, net: Sequential, n: int, classes: int, dtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = backend.asarray(rng.standard_normal((n, *net.input_dim)), dtype)
    t = backend.asarray(np.arange(n) % classes, "int64")
    return x, t


# Tiny float64 instances, one per named net (dropout off so the loss is a function).
TINY = {
    "deep": lambda **kw: DeepConvNet(
        (1, 8, 8),
        *[{"filter_num": 2}] * 6,
        hidden_size=3,
        output_size=4,
        dropout_ratio=0.0,
        **kw,
    ),
    "lenet": lambda **kw: LeNet(
        (1, 10, 10), conv_channels=(2, 3), filter_size=3, hidden_sizes=(4, 3), output_size=3, **kw
    ),
    "alexnet": lambda **kw: AlexNet.small(
        (1, 15, 15),
        output_size=3,
        conv_channels=(2, 2, 2, 2, 2),
        conv1_param={"filter_size": 3, "stride": 1, "pad": 1},
        hidden_size=4,
        dropout_ratio=0.0,
        lrn_param={"alpha": 1.0},  # large enough for LRN to shape the gradient
        **kw,
    ),
}


# --------------------------------------------------------------------------------------------
# Weight initialisation by name
# --------------------------------------------------------------------------------------------


def test_init_std_by_name():
    assert init_std("std", 1234) == 0.01
    assert init_std(0.05, 10) == 0.05
    assert init_std("he", 50) == pytest.approx(math.sqrt(2 / 50))
    assert init_std("xavier", 50) == pytest.approx(math.sqrt(1 / 50))
    with pytest.raises(ValueError, match="weight_init"):
        init_std("glorot-ish", 3)


@pytest.mark.parametrize(
    ("weight_init", "expected"),
    [("he", lambda n: math.sqrt(2 / n)), ("xavier", lambda n: math.sqrt(1 / n)), ("std", None)],
)
def test_builder_weight_std_uses_fan_in_from_layer_shapes(weight_init, expected):
    b = NetBuilder((32, 12, 12), weight_init=weight_init, seed=0, dtype="float64")
    b.conv(64, 3).affine(40)
    conv, affine = b.layers
    # fan_in: C*FH*FW = 32*3*3 for the convolution, D = 64*10*10 for the affine layer
    for layer, fan_in in ((conv, 32 * 3 * 3), (affine, 64 * 10 * 10)):
        want = 0.01 if expected is None else expected(fan_in)
        W = np.asarray(layer.params["W"])
        assert W.size >= 18_000
        assert abs(W.std() / want - 1.0) < 0.03  # >= 18k samples: sampling error < 1%
        assert abs(W.mean()) < 0.03 * want
        assert not np.any(np.asarray(layer.params["b"]))


# --------------------------------------------------------------------------------------------
# Shapes of the full-size architectures
# --------------------------------------------------------------------------------------------


def test_deep_convnet_book_layout():
    net = DeepConvNet(seed=0, shape_only=True)
    convs = [layer for layer in net.layers if isinstance(layer, Convolution)]
    assert [c.pad for c in convs] == [1, 1, 1, 2, 1, 1]
    assert [c.W.shape[0] for c in convs] == [16, 16, 32, 32, 64, 64]
    pools = [i for i, layer in enumerate(net.layers) if isinstance(layer, Pooling)]
    assert net.output_shapes()[pools[-1]] == (64, 4, 4)
    assert tuple(net.params["W7"].shape) == (64 * 4 * 4, 50)
    assert tuple(net.params["W8"].shape) == (50, 10)
    assert sorted(net.params) == sorted(f"{p}{i}" for p in "Wb" for i in range(1, 9))
    drops = [layer for layer in net.layers if isinstance(layer, Dropout)]
    assert [d.dropout_ratio for d in drops] == [0.5, 0.5]
    assert isinstance(net.layers[-1], Dropout)  # the book's last dropout follows the last affine


def test_alexnet_full_configuration_shapes_without_allocating():
    net = AlexNet(seed=0, shape_only=True)
    # zero-stride weights: nothing of the 62M parameters is allocated
    assert all(np.asarray(p).strides == (0,) * len(p.shape) for p in net.params.values())
    shapes = net.output_shapes()
    convs = [
        s for layer, s in zip(net.layers, shapes, strict=True) if isinstance(layer, Convolution)
    ]
    pools = [s for layer, s in zip(net.layers, shapes, strict=True) if isinstance(layer, Pooling)]
    assert convs == [(96, 55, 55), (256, 27, 27), (384, 13, 13), (384, 13, 13), (256, 13, 13)]
    assert pools == [(96, 27, 27), (256, 13, 13), (256, 6, 6)]
    assert shapes[-1] == (1000,)
    assert sum(isinstance(layer, LRN) for layer in net.layers) == 2
    assert sum(isinstance(layer, Dropout) for layer in net.layers) == 2
    assert sum(math.prod(p.shape) for p in net.params.values()) == 62_378_344
    summary = net.summary()
    assert "LRN(size=5, alpha=0.0001, beta=0.75, k=2.0)" in summary
    assert "Affine(9216->4096)" in summary and "62,378,344" in summary
    # The config rebuilds the same architecture (shape-only here, to stay light).
    cfg = json.loads(json.dumps(net.config))
    assert cfg.pop("model") == "alexnet"
    assert AlexNet(**cfg, shape_only=True).summary() == summary


@pytest.mark.parametrize(
    ("input_dim", "pad"), [((1, 32, 32), 0), ((1, 28, 28), 2), ((3, 32, 32), 0)]
)
def test_lenet_layout(input_dim, pad):
    net = LeNet(input_dim, seed=0, shape_only=True)
    convs = [layer for layer in net.layers if isinstance(layer, Convolution)]
    assert [c.pad for c in convs] == [pad, 0]
    assert net.output_shapes()[0] == (6, 28, 28)
    assert all(layer.mode == "avg" for layer in net.layers if isinstance(layer, Pooling))
    assert [tuple(net.params[f"W{i}"].shape) for i in (3, 4, 5)] == [
        (400, 120),
        (120, 84),
        (84, 10),
    ]
    assert sum(math.prod(p.shape) for p in net.params.values()) == 61_706 + 150 * (input_dim[0] - 1)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_lenet_activation_choice(activation):
    net = LeNet(activation=activation, seed=0, shape_only=True)
    names = [type(layer).__name__.lower() for layer in net.layers]
    assert names.count(activation) == 4
    assert net.config["weight_init_std"] == ("he" if activation == "relu" else "xavier")
    with pytest.raises(ValueError, match="activation"):
        LeNet(activation="swish")


# --------------------------------------------------------------------------------------------
# Every backend: forward shapes, gradients, one step
# --------------------------------------------------------------------------------------------

FORWARD_CASES = {
    "deep": lambda **kw: DeepConvNet(**kw),
    "lenet-32": lambda **kw: LeNet(**kw),
    "lenet-28-tanh": lambda **kw: LeNet((1, 28, 28), activation="tanh", **kw),
    "alexnet-small-28": lambda **kw: AlexNet.small(**kw),
    "alexnet-small-32": lambda **kw: AlexNet.small((3, 32, 32), **kw),
}


@pytest.mark.parametrize("name", list(FORWARD_CASES))
def test_forward_shape_dtype_device(backend, name):
    net = FORWARD_CASES[name](seed=0, device=_dev(backend))
    x, _ = _batch(backend, net, 2, 10, "float32")
    for train_flg in (True, False):
        y = net.predict(x, train_flg=train_flg)
        assert tuple(y.shape) == (2, 10)
        assert y.dtype == backend.xp.float32 and device_of(y) == device_of(x)
        assert np.all(np.isfinite(backend.to_numpy(y)))


def assert_backprop_matches_numerical(
    backend: Any, net: Sequential, x: Any, t: Any, *, per_param: int | None = None
) -> None:
    """``net.gradient`` against float64 central differences (h = 1e-6) of ``net.loss``.

    ``per_param=None`` checks every element (``Sequential.numerical_gradient``);
    otherwise ``per_param`` random elements of every parameter, which keeps the
    slower backends (one ``array_namespace`` per op) cheap.
    """
    grads = {k: backend.to_numpy(g) for k, g in net.gradient(x, t).items()}
    assert set(grads) == set(net.params)
    if per_param is None:
        num = {k: backend.to_numpy(g) for k, g in net.numerical_gradient(x, t, h=1e-6).items()}
        for key in grads:
            assert_close_scaled(grads[key], num[key], 1e-5, 1e-7, err_msg=key)
        return
    rng = np.random.default_rng(0)
    h = 1e-6
    loss = network_loss(backend, net, x, t)
    for key in list(net.params):
        original = net.params[key]
        p = backend.to_numpy(original).astype(np.float64)
        flat = p.reshape(-1)
        picks = rng.choice(flat.size, size=min(per_param, flat.size), replace=False)
        num = np.empty(len(picks))
        for j, i in enumerate(picks):
            f = []
            for step in (h, -h):
                q = p.copy()
                q.reshape(-1)[i] += step
                net.params[key] = net.device.asarray(q, "float64")
                f.append(loss())
            num[j] = (f[0] - f[1]) / (2 * h)
        net.params[key] = original
        assert_close_scaled(grads[key].reshape(-1)[picks], num, 1e-5, 1e-7, err_msg=key)


@pytest.mark.parametrize("name", list(TINY))
def test_backprop_matches_numerical_gradient(backend, name):
    net = TINY[name](seed=1, dtype="float64", device=_dev(backend))
    _randomize_biases(net, seed=1)
    x, t = _batch(backend, net, 3, net.output_shapes()[-1][0], "float64")
    assert all(g.dtype == backend.xp.float64 for g in net.gradient(x, t).values())
    # every element on NumPy; 4 random elements of each parameter elsewhere
    per_param = None if backend.name == "numpy" else 4
    assert_backprop_matches_numerical(backend, net, x, t, per_param=per_param)


@pytest.mark.parametrize("name", list(TINY))
def test_one_gradient_step_reduces_the_loss(backend, name):
    net = TINY[name](seed=2, dtype="float64", device=_dev(backend))
    x, t = _batch(backend, net, 6, net.output_shapes()[-1][0], "float64")
    before = float(backend.to_numpy(net.loss(x, t)))
    grads = net.gradient(x, t)
    for key, g in grads.items():
        net.params[key] = net.params[key] - 0.1 * g
    after = float(backend.to_numpy(net.loss(x, t)))
    assert after < before


def test_builder_blocks_batchnorm_tanh_dropout_gradients(backend):
    """A net using every new builder block: BN after a convolution (per channel) and
    after an affine layer (per feature), tanh, LRN and an inactive dropout."""
    b = NetBuilder((2, 6, 6), weight_init="he", seed=3, dtype="float64", device=_dev(backend))
    b.conv(3, 3).batchnorm().relu().lrn(3, alpha=1.0, k=1.0).pool(2)
    b.affine(5).batchnorm().tanh().dropout(0.0).affine(3)
    net = b.build()
    _randomize_biases(net, seed=3)
    assert sorted(net.params) == sorted(
        ["W1", "b1", "W3", "b3", "W5", "b5"]
        + [f"{p}{i}" for p in ("gamma", "beta") for i in (2, 4)]
    )
    assert sorted(net.buffers) == ["running_mean2", "running_mean4", "running_var2", "running_var4"]
    assert {k.split("/")[0] for k in net.state_dict()} == {"params", "buffers"}
    x, t = _batch(backend, net, 4, 3, "float64")
    per_param = None if backend.name == "numpy" else 6
    assert_backprop_matches_numerical(backend, net, x, t, per_param=per_param)
    # training updated the running statistics; inference is deterministic and uses them
    assert not np.allclose(backend.to_numpy(net.buffers["running_mean2"]), 0.0)
    y1, y2 = net.predict(x), net.predict(x)
    np.testing.assert_array_equal(backend.to_numpy(y1), backend.to_numpy(y2))


def test_builder_rejects_batchnorm_on_wrong_shape():
    b = NetBuilder((4, 3), seed=0)
    with pytest.raises(ValueError, match="batchnorm"):
        b.batchnorm()
    with pytest.raises(ValueError, match="activation"):
        b.activation("gelu")


# --------------------------------------------------------------------------------------------
# Configs, registry, seeds, and real training steps with dropout on (NumPy)
# --------------------------------------------------------------------------------------------


def test_models_registered():
    assert {"simple", "deep", "lenet", "alexnet"} <= set(MODELS)
    assert MODELS["deep"] is DeepConvNet and MODELS["lenet"] is LeNet
    assert MODELS["alexnet"] is AlexNet


# The named nets' dict options (conv_param, lrn_param, ...) go through one merge.
@pytest.mark.parametrize(
    ("make", "option"),
    [
        (lambda **kw: SimpleConvNet(conv_param=kw), "conv_param"),
        (lambda **kw: DeepConvNet(conv_param_4=kw, shape_only=True), "conv_param_4"),
        (lambda **kw: AlexNet.small(conv1_param=kw, shape_only=True), "conv1_param"),
        (lambda **kw: AlexNet.small(lrn_param=kw, shape_only=True), "lrn_param"),
    ],
)
def test_dict_options_refuse_unknown_keys(make, option):
    with pytest.raises(ValueError, match=rf"^{option}: unknown keys \['padding'\]; use only \["):
        make(padding=1)


def test_dict_options_override_defaults_and_cast():
    simple = SimpleConvNet(conv_param={"filter_num": 8.0}, seed=0)
    assert simple.config["conv_param"] == {"filter_num": 8, "filter_size": 5, "pad": 0, "stride": 1}
    assert type(simple.config["conv_param"]["filter_num"]) is int
    assert tuple(simple.params["W1"].shape) == (8, 1, 5, 5)
    deep = DeepConvNet(conv_param_4={"pad": 1}, shape_only=True)
    assert [c.pad for c in deep.layers if isinstance(c, Convolution)] == [1] * 6
    assert deep.config["conv_param_4"] == {
        "filter_num": 32,
        "filter_size": 3,
        "pad": 1,
        "stride": 1,
    }
    alex = AlexNet.small(lrn_param={"size": 3}, shape_only=True)
    assert alex.config["lrn_param"] == {"size": 3, "alpha": 1e-4, "beta": 0.75, "k": 2.0}
    assert type(alex.config["lrn_param"]["size"]) is int
    assert "LRN(size=3, alpha=0.0001, beta=0.75, k=2.0)" in alex.summary()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: DeepConvNet(seed=4), id="deep"),
        pytest.param(lambda: LeNet((1, 28, 28), activation="relu", seed=4), id="lenet"),
        pytest.param(lambda: AlexNet.small((3, 32, 32), seed=4), id="alexnet-small"),
        pytest.param(lambda: TINY["deep"](seed=4, dtype="float64"), id="deep-tiny-float64"),
    ],
)
def test_build_model_rebuilds_from_json_config(make):
    net = make()
    cfg = json.loads(json.dumps(net.config))
    again = build_model(cfg, seed=4)
    assert type(again) is type(net)
    assert again.config == net.config
    assert again.summary() == net.summary()
    assert again.dtype == net.dtype
    for key in net.params:
        np.testing.assert_array_equal(np.asarray(again.params[key]), np.asarray(net.params[key]))


def test_same_seed_same_dropout_masks():
    nets = [DeepConvNet(seed=5) for _ in range(2)]
    rng = np.random.default_rng(0)
    x = np.asarray(rng.standard_normal((4, 1, 28, 28)), dtype=np.float32)
    t = np.arange(4)
    losses = [[float(n.loss(x, t)) for _ in range(3)] for n in nets]
    assert losses[0] == losses[1]
    assert len(set(losses[0])) == 3  # a new mask each step
    assert float(nets[0].loss(x, t, train_flg=False)) == float(nets[1].loss(x, t, train_flg=False))


def test_random_state_round_trips_and_refuses_a_layer_without_a_generator():
    net = DeepConvNet(seed=5)
    x = np.asarray(np.random.default_rng(0).standard_normal((2, 1, 28, 28)), dtype=np.float32)
    net.loss(x, np.arange(2))  # the dropout generators exist after a training pass
    state = net.random_state()
    assert state and all(isinstance(layer, Dropout) for layer in _layers_named(net, state))
    net.set_random_state(state)  # its own state is accepted
    (name, a) = next(iter(state.items()))
    bad = {"0/" + name.split("/", 1)[1]: a}  # layer 0 is a Convolution
    with pytest.raises(ValueError, match=r"layer 0, a Convolution, which draws no random numbers"):
        net.set_random_state(bad)


def _layers_named(net: Any, state: dict[str, Any]) -> list[Any]:
    return [net.layers[int(k.split("/", 1)[0])] for k in state]


@pytest.mark.parametrize("name", ["deep", "lenet-28-tanh", "alexnet-small-28"])
def test_default_nets_fit_a_fixed_batch_with_dropout_on(name):
    """A few Adam steps in training mode (dropout active) on 8 fixed examples lower
    the inference-mode loss: the full-size nets learn on NumPy float32."""
    net = FORWARD_CASES[name](seed=6)
    rng = np.random.default_rng(6)
    x = np.asarray(rng.random((8, *net.input_dim)), dtype=np.float32)
    t = np.arange(8) % 10
    before = float(net.loss(x, t, train_flg=False))
    optimizer = Adam(lr=0.003)
    for _ in range(8):
        optimizer.update(net.params, net.gradient(x, t))
    assert float(net.loss(x, t, train_flg=False)) < before - 0.05


def test_shape_only_matches_a_real_build():
    real = AlexNet.small(seed=0)
    meta = AlexNet.small(seed=0, shape_only=True)
    assert meta.summary() == real.summary() and meta.config == real.config
    assert {k: tuple(v.shape) for k, v in meta.params.items()} == {
        k: tuple(v.shape) for k, v in real.params.items()
    }


def test_for_input_applies_each_nets_small_input_rule():
    """The nets own their small-input rule: AlexNet gives its reduced form for images
    under 64x64 and its full one otherwise; the others are built for the shape."""
    kw = {"seed": 0, "shape_only": True}
    small = AlexNet.for_input((1, 28, 28), output_size=5, **kw)
    assert small.config == AlexNet.small((1, 28, 28), output_size=5, **kw).config
    full = AlexNet.for_input((3, 227, 227), **kw)
    assert full.config == AlexNet(**kw).config
    lenet = LeNet.for_input((1, 28, 28), seed=0)
    assert type(lenet) is LeNet and lenet.input_dim == (1, 28, 28)
    with pytest.raises(
        TypeError, match=r"built from its layers: NetBuilder\(\(1, 8, 8\), \.\.\.\)"
    ):
        Sequential.for_input((1, 8, 8))
