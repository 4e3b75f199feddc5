"""The optimizers (``xpcnn.optim``) against a NumPy transcription of the book's
``common/optimizer.py``, on every backend of the ``backend`` fixture.

The references below update host float64 arrays in place, exactly as the book does;
xpcnn's optimizers write each new parameter back by key on the device. Also checked:
updates land in the layers through a network's parameter view, state lives on the
parameters' device and dtype, construction by name, hyperparameter validation, and
that saving and restoring the state continues exactly like an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from array_api_compat import device as device_of
from helpers import CODE_PATHS, assert_close_scaled, backend_device, code_path_context

from xpcnn.models import NetBuilder
from xpcnn.optim import (
    OPTIMIZERS,
    SGD,
    AdaGrad,
    Adam,
    Momentum,
    Nesterov,
    Optimizer,
    RMSprop,
    make_optimizer,
)

# --------------------------------------------------------------------------------------------
# The book's optimizers, transcribed (common/optimizer.py): host NumPy, updated in place
# --------------------------------------------------------------------------------------------


class BookSGD:
    def __init__(self, lr=0.01):
        self.lr = lr

    def update(self, params, grads):
        for key in params:
            params[key] -= self.lr * grads[key]


class BookMomentum:
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr, self.momentum, self.v = lr, momentum, None

    def update(self, params, grads):
        if self.v is None:
            self.v = {key: np.zeros_like(val) for key, val in params.items()}
        for key in params:
            self.v[key] = self.momentum * self.v[key] - self.lr * grads[key]
            params[key] += self.v[key]


class BookNesterov:
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr, self.momentum, self.v = lr, momentum, None

    def update(self, params, grads):
        if self.v is None:
            self.v = {key: np.zeros_like(val) for key, val in params.items()}
        for key in params:
            self.v[key] *= self.momentum
            self.v[key] -= self.lr * grads[key]
            params[key] += self.momentum * self.momentum * self.v[key]
            params[key] -= (1 + self.momentum) * self.lr * grads[key]


class BookAdaGrad:
    def __init__(self, lr=0.01):
        self.lr, self.h = lr, None

    def update(self, params, grads):
        if self.h is None:
            self.h = {key: np.zeros_like(val) for key, val in params.items()}
        for key in params:
            self.h[key] += grads[key] * grads[key]
            params[key] -= self.lr * grads[key] / (np.sqrt(self.h[key]) + 1e-7)


class BookRMSprop:
    def __init__(self, lr=0.01, decay_rate=0.99):
        self.lr, self.decay_rate, self.h = lr, decay_rate, None

    def update(self, params, grads):
        if self.h is None:
            self.h = {key: np.zeros_like(val) for key, val in params.items()}
        for key in params:
            self.h[key] *= self.decay_rate
            self.h[key] += (1 - self.decay_rate) * grads[key] * grads[key]
            params[key] -= self.lr * grads[key] / (np.sqrt(self.h[key]) + 1e-7)


class BookAdam:
    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        self.lr, self.beta1, self.beta2 = lr, beta1, beta2
        self.iter, self.m, self.v = 0, None, None

    def update(self, params, grads):
        if self.m is None:
            self.m = {key: np.zeros_like(val) for key, val in params.items()}
            self.v = {key: np.zeros_like(val) for key, val in params.items()}
        self.iter += 1
        lr_t = self.lr * math.sqrt(1.0 - self.beta2**self.iter) / (1.0 - self.beta1**self.iter)
        for key in params:
            self.m[key] += (1 - self.beta1) * (grads[key] - self.m[key])
            self.v[key] += (1 - self.beta2) * (grads[key] ** 2 - self.v[key])
            params[key] -= lr_t * self.m[key] / (np.sqrt(self.v[key]) + 1e-7)


@pytest.fixture(params=CODE_PATHS)
def code_path(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fast paths on (a fused in-place Adam on writeable arrays), then off (generic code)."""
    with code_path_context(request.param):
        yield


# (xpcnn class, book class, non-default hyperparameters)
CASES = {
    "sgd": (SGD, BookSGD, {"lr": 0.1}),
    "momentum": (Momentum, BookMomentum, {"lr": 0.05, "momentum": 0.8}),
    "nesterov": (Nesterov, BookNesterov, {"lr": 0.05, "momentum": 0.8}),
    "adagrad": (AdaGrad, BookAdaGrad, {"lr": 0.1}),
    "rmsprop": (RMSprop, BookRMSprop, {"lr": 0.01, "decay_rate": 0.9}),
    "adam": (Adam, BookAdam, {"lr": 0.01, "beta1": 0.8, "beta2": 0.95}),
}
NAMES = list(CASES)
STATE_SLOTS = {
    "sgd": set(),
    "momentum": {"v"},
    "nesterov": {"v"},
    "adagrad": {"h"},
    "rmsprop": {"h"},
    "adam": {"m", "v"},
}

SHAPES = {"W1": (3, 4), "b1": (4,), "W2": (2, 3, 2, 2)}
STEPS = 6


def _random_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: rng.standard_normal(s) for k, s in SHAPES.items()}


def _random_grads(rng: np.random.Generator, steps: int) -> list[dict[str, np.ndarray]]:
    # scales from tiny to large, and an exact zero, so the 1e-7 guards and the moments matter
    grads = []
    for _ in range(steps):
        g = {
            k: rng.standard_normal(s) * 10.0 ** rng.integers(-4, 2, size=s)
            for k, s in SHAPES.items()
        }
        g["b1"][0] = 0.0
        grads.append(g)
    return grads


def _to_backend(backend: Any, arrays: dict[str, np.ndarray], dtype: str) -> dict[str, Any]:
    # a copy: on NumPy, asarray would share the host array that the book's update mutates
    return {k: backend.asarray(np.array(v, copy=True), dtype) for k, v in arrays.items()}


# --------------------------------------------------------------------------------------------
# 1. Each optimizer equals the book's update, several steps, every backend
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hyper", ["defaults", "custom"])
@pytest.mark.parametrize("name", NAMES)
def test_update_matches_book(backend, dtype, rng, code_path, name, hyper):
    cls, book_cls, custom = CASES[name]
    kwargs = custom if hyper == "custom" else {}
    # the reference starts from the very values the backend holds (rounded to dtype)
    params_host = {k: v.astype(dtype).astype(np.float64) for k, v in _random_params(rng).items()}
    grads_host = [
        {k: v.astype(dtype).astype(np.float64) for k, v in g.items()}
        for g in _random_grads(rng, STEPS)
    ]
    params = _to_backend(backend, params_host, dtype)
    optimizer, book = cls(**kwargs), book_cls(**kwargs)
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == "float64" else {"rtol": 1e-6, "atol": 1e-6}

    for step, grads in enumerate(grads_host, start=1):
        optimizer.update(params, _to_backend(backend, grads, dtype))
        book.update(params_host, grads)
        assert optimizer.iter == step
        for key, value in params.items():
            assert value.dtype == getattr(backend.xp, dtype), key
            assert_close_scaled(
                backend.to_numpy(value), params_host[key], **tol, err_msg=f"step {step} {key}"
            )


@pytest.mark.parametrize("name", NAMES)
def test_update_only_touches_keys_with_gradients(backend, rng, name):
    cls, _, _ = CASES[name]
    params = _to_backend(backend, _random_params(rng), "float64")
    grads = {k: v for k, v in _random_grads(rng, 1)[0].items() if k != "W2"}
    before = {k: backend.to_numpy(v).copy() for k, v in params.items()}
    cls().update(params, _to_backend(backend, grads, "float64"))
    np.testing.assert_array_equal(backend.to_numpy(params["W2"]), before["W2"])
    assert not np.array_equal(backend.to_numpy(params["W1"]), before["W1"])


# --------------------------------------------------------------------------------------------
# 2. Write-back by key through a network's parameter view
# --------------------------------------------------------------------------------------------


def _small_net(backend: Any, dtype: str = "float64") -> Any:
    builder = NetBuilder((2, 5, 4), seed=0, dtype=dtype, device=backend_device(backend))
    return builder.conv(3, 2, pad=1).relu().pool(2).affine(4).build()


@pytest.mark.parametrize("name", NAMES)
def test_update_through_network_params_changes_the_layers(backend, rng, code_path, name):
    """The book keeps ``params`` as aliases of the layers' arrays and mutates them in place;
    on immutable backends that silently never learns. Here the new arrays must land in
    the layers themselves."""
    cls, book_cls, kwargs = CASES[name]
    net = _small_net(backend)
    x = backend.asarray(rng.standard_normal((3, 2, 5, 4)), "float64")
    t = backend.asarray([0, 3, 1], "int64")
    params_host = {k: backend.to_numpy(v).copy() for k, v in net.params.items()}
    initial_conv_W = params_host["W1"].copy()
    optimizer, book = cls(**kwargs), book_cls(**kwargs)

    for _ in range(3):
        grads = net.gradient(x, t)
        book.update(params_host, {k: backend.to_numpy(g) for k, g in grads.items()})
        optimizer.update(net.params, grads)

    owners = [(layer, k) for layer in net.layers if layer.params for k in layer.params]
    assert len(owners) == len(params_host)
    for (layer, k), key in zip(owners, params_host, strict=True):
        arr = layer.params[k]  # read from the layer itself, not through the view
        assert arr is net.params[key]
        assert device_of(arr) == device_of(backend.asarray(np.zeros(1), "float64"))
        assert_close_scaled(
            backend.to_numpy(arr), params_host[key], rtol=1e-12, atol=1e-14, err_msg=key
        )
    changed = backend.to_numpy(net.layers[0].params["W"])
    assert not np.array_equal(changed, initial_conv_W), "the first layer's weights did not change"


@pytest.mark.parametrize("name", NAMES)
def test_update_through_view_with_immutable_arrays(rng, code_path, name):
    """Read-only NumPy arrays stand in for an immutable backend (JAX): the book's in-place
    ``params[key] -= ...`` on an alias would raise here (or, on JAX, silently not learn).
    The optimizer must write new arrays back by key, and never write into the grads."""
    cls, book_cls, kwargs = CASES[name]
    net = NetBuilder((2, 5, 4), seed=0, dtype="float64").conv(3, 2, pad=1).relu().affine(4).build()
    for key in net.params:
        frozen = np.array(net.params[key], copy=True)
        frozen.flags.writeable = False
        net.params[key] = frozen
    x = rng.standard_normal((3, 2, 5, 4))
    t = np.array([0, 3, 1])
    params_host = {k: np.array(v, copy=True) for k, v in net.params.items()}
    initial_conv_W = params_host["W1"].copy()
    optimizer, book = cls(**kwargs), book_cls(**kwargs)

    for _ in range(3):
        grads = net.gradient(x, t)
        for g in grads.values():
            g.flags.writeable = False
        book.update(params_host, grads)
        optimizer.update(net.params, grads)

    layers = [layer for layer in net.layers if layer.params]
    for n, layer in enumerate(layers, start=1):
        for k, arr in layer.params.items():
            np.testing.assert_allclose(arr, params_host[f"{k}{n}"], rtol=1e-12, atol=1e-14)
    assert not np.array_equal(layers[0].params["W"], initial_conv_W), "no update landed"


def test_training_through_the_view_lowers_the_loss(backend, rng):
    net = _small_net(backend)
    x = backend.asarray(rng.standard_normal((6, 2, 5, 4)), "float64")
    t = backend.asarray([0, 1, 2, 3, 0, 1], "int64")
    optimizer = SGD(lr=0.5)
    initial = float(backend.to_numpy(net.loss(x, t)))
    for _ in range(10):
        optimizer.update(net.params, net.gradient(x, t))
    assert float(backend.to_numpy(net.loss(x, t))) < initial - 0.1


# --------------------------------------------------------------------------------------------
# 3. State lives on the parameters' device, in their dtype
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_state_on_params_device_and_dtype(backend, dtype, rng, name):
    cls, _, kwargs = CASES[name]
    params = _to_backend(backend, _random_params(rng), dtype)
    optimizer = cls(**kwargs)
    assert optimizer.state_arrays() == {}
    optimizer.update(params, _to_backend(backend, _random_grads(rng, 1)[0], dtype))

    state = optimizer.state_arrays()
    assert set(state) == {f"{slot}/{key}" for slot in STATE_SLOTS[name] for key in SHAPES}
    expected_device = device_of(params["W1"])
    if backend.name.startswith("strict"):
        assert expected_device == backend.device
    for name_, arr in state.items():
        key = name_.split("/", 1)[1]
        assert arr.dtype == getattr(backend.xp, dtype), name_
        assert device_of(arr) == expected_device, name_
        assert tuple(arr.shape) == SHAPES[key], name_


# --------------------------------------------------------------------------------------------
# 4. Saving and restoring the state continues like an uninterrupted run
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_continues_identically(backend, rng, code_path, name):
    cls, _, kwargs = CASES[name]
    start = _random_params(rng)
    grads = [_to_backend(backend, g, "float64") for g in _random_grads(rng, STEPS)]
    half = STEPS // 2

    uninterrupted = _to_backend(backend, start, "float64")
    reference = cls(**kwargs)
    for g in grads:
        reference.update(uninterrupted, g)

    params = _to_backend(backend, start, "float64")
    first = cls(**kwargs)
    for g in grads[:half]:
        first.update(params, g)
    # a checkpoint: host copies of state and parameters, moved back onto the device
    saved_state = {k: backend.to_numpy(v).copy() for k, v in first.state_arrays().items()}
    saved_params = {k: backend.to_numpy(v).copy() for k, v in params.items()}
    saved_iter = first.iter
    del first, params

    resumed = cls(**kwargs)
    resumed.load_state_arrays(_to_backend(backend, saved_state, "float64"), saved_iter)
    assert resumed.iter == half
    params = _to_backend(backend, saved_params, "float64")
    for g in grads[half:]:
        resumed.update(params, g)

    assert resumed.iter == reference.iter == STEPS
    for key in SHAPES:
        np.testing.assert_array_equal(
            backend.to_numpy(params[key]), backend.to_numpy(uninterrupted[key]), err_msg=key
        )
    for key, arr in reference.state_arrays().items():
        np.testing.assert_array_equal(
            backend.to_numpy(resumed.state_arrays()[key]), backend.to_numpy(arr), err_msg=key
        )


def test_adam_resume_needs_the_iteration():
    """The iteration enters Adam's bias correction: restoring it is what makes the resume exact."""
    params_a, params_b = {"w": np.ones(3)}, {"w": np.ones(3)}
    a, b = Adam(), Adam()
    for opt, p in ((a, params_a), (b, params_b)):
        opt.update(p, {"w": np.array([0.5, -1.0, 2.0])})
    b.load_state_arrays(b.state_arrays(), iteration=0)
    a.update(params_a, {"w": np.array([1.0, 1.0, 1.0])})
    b.update(params_b, {"w": np.array([1.0, 1.0, 1.0])})
    assert not np.array_equal(params_a["w"], params_b["w"])


def test_load_state_arrays_rejects_unknown_slot():
    with pytest.raises(ValueError, match=r"Adam has no state 'h' \(from 'h/W1'\)"):
        Adam().load_state_arrays({"h/W1": np.zeros(2)}, 1)


# --------------------------------------------------------------------------------------------
# 5. Construction by name, hyperparameter validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "cls"),
    [
        ("sgd", SGD),
        ("SGD", SGD),
        ("Momentum", Momentum),
        ("NESTEROV", Nesterov),
        ("AdaGrad", AdaGrad),
        ("RMSprop", RMSprop),
        ("rmsProp", RMSprop),
        ("adam", Adam),
        ("Adam", Adam),
    ],
)
def test_make_optimizer_by_name_is_case_insensitive(spelling, cls):
    assert type(make_optimizer(spelling)) is cls


def test_make_optimizer_knows_every_optimizer():
    assert set(OPTIMIZERS) == set(CASES)
    for name, (cls, _, kwargs) in CASES.items():
        optimizer = make_optimizer(name.upper(), **kwargs)
        assert type(optimizer) is cls
        assert optimizer.hyperparameters() == {k: float(v) for k, v in kwargs.items()}


def test_make_optimizer_passes_an_instance_through():
    adam = Adam(lr=0.1)
    assert make_optimizer(adam) is adam


@pytest.mark.parametrize(
    ("call", "match"),
    [
        pytest.param(lambda: make_optimizer("adadelta"), "unknown optimizer 'adadelta'", id="name"),
        pytest.param(
            lambda: make_optimizer("sgd", momentum=0.9), "SGD: bad hyperparameters", id="kwarg"
        ),
    ],
)
def test_make_optimizer_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


BAD_HYPERPARAMETERS = [
    *[
        pytest.param(cls, {"lr": lr}, "lr must be a positive number", id=f"{cls.__name__}-lr={lr}")
        for cls in (SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam)
        for lr in (0, -0.01)
    ],
    pytest.param(Adam, {"lr": float("nan")}, "lr must be", id="Adam-lr=nan"),
    pytest.param(SGD, {"lr": float("inf")}, "lr must be", id="SGD-lr=inf"),
    pytest.param(SGD, {"lr": "0.1"}, "lr must be", id="SGD-lr-string"),
    pytest.param(Adam, {"beta1": 1.0}, r"beta1 must be in \[0, 1\)", id="Adam-beta1=1"),
    pytest.param(Adam, {"beta1": -0.1}, r"beta1 must be in \[0, 1\)", id="Adam-beta1<0"),
    pytest.param(Adam, {"beta2": 1.0}, r"beta2 must be in \[0, 1\)", id="Adam-beta2=1"),
    pytest.param(Adam, {"beta2": 1.5}, r"beta2 must be in \[0, 1\)", id="Adam-beta2>1"),
    pytest.param(Momentum, {"momentum": 1.0}, r"momentum must be in \[0, 1\)", id="Momentum-1"),
    pytest.param(Nesterov, {"momentum": -0.5}, r"momentum must be in \[0, 1\)", id="Nesterov-neg"),
    pytest.param(RMSprop, {"decay_rate": 1.0}, r"decay_rate must be in \[0, 1\)", id="RMSprop-1"),
]


@pytest.mark.parametrize(("cls", "kwargs", "match"), BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_raise_value_error(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)
    with pytest.raises(ValueError, match=match):
        make_optimizer(cls.__name__, **kwargs)


@pytest.mark.parametrize("cls", [Momentum, Adam, RMSprop])
def test_boundary_hyperparameters_are_accepted(cls):
    """0 is inside [0, 1): beta1 = 0 is RMSprop-like Adam, momentum = 0 is plain SGD."""
    key = {Momentum: "momentum", Adam: "beta1", RMSprop: "decay_rate"}[cls]
    assert getattr(cls(**{key: 0.0}), key) == 0.0


def test_momentum_zero_is_sgd(backend, rng):
    params = _to_backend(backend, _random_params(rng), "float64")
    sgd_params = dict(params)
    grads = _to_backend(backend, _random_grads(rng, 1)[0], "float64")
    Momentum(lr=0.1, momentum=0.0).update(params, grads)
    SGD(lr=0.1).update(sgd_params, grads)
    for key in SHAPES:
        np.testing.assert_array_equal(
            backend.to_numpy(params[key]), backend.to_numpy(sgd_params[key]), err_msg=key
        )


def test_optimizer_base_class_and_repr():
    assert repr(Adam(lr=0.01)) == "Adam(lr=0.01, beta1=0.9, beta2=0.999)"
    with pytest.raises(NotImplementedError):
        Optimizer(0.1).update({"w": np.ones(2)}, {"w": np.ones(2)})
