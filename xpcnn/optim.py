"""The book's optimizers (chapter 6), on any array-API backend.

``update(params, grads)`` writes each new parameter back by key
(``params[key] = ...``) rather than mutating arrays in place, so it works on
immutable backends and through a network's parameter view. State (velocities,
moments) is created lazily with the parameters' dtype and device.

What changes from step to step is split off as host numbers,
:meth:`Optimizer.step_scalars` (the learning rate; Adam's bias-corrected rate),
and :meth:`Optimizer.apply` takes them as an argument: a compiled step
(:mod:`xpcnn.train.compiled`) passes them in as inputs, so that neither the
iteration count nor a learning-rate schedule becomes a constant of the compiled
function, and takes the state out as values (the generic updates replace the
arrays of ``state``, never write into them).

:class:`Adam` asks the fast-path seam (:mod:`xpcnn._fast`) for a fused update
(NumPy: ufuncs into two temporaries; CuPy: one kernel): the same operations in
the same order, so the same bits. It updates only the optimizer's own moment
arrays in place and returns each new parameter as a new array, like the
generic update, so the switch changes speed only, never results or aliasing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from typing import Any

from array_api_compat import array_namespace

from . import _fast

__all__ = [
    "OPTIMIZERS",
    "SGD",
    "AdaGrad",
    "Adam",
    "Momentum",
    "Nesterov",
    "Optimizer",
    "RMSprop",
    "make_optimizer",
]


class Optimizer:
    """Base class. Subclasses define ``_slots`` (names of per-parameter state),
    ``_step(key, p, g, s) -> new p`` (``s``: :meth:`step_scalars`) and, when a
    scalar other than ``lr`` changes between steps, :meth:`step_scalars`."""

    _slots: tuple[str, ...] = ()

    def __init__(self, lr: float) -> None:
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"{type(self).__name__}: lr must be a positive number, got {lr!r}")
        self.lr = float(lr)
        self.iter = 0
        self.state: dict[str, dict[str, Any]] = {slot: {} for slot in self._slots}

    def update(self, params: MutableMapping[str, Any], grads: Mapping[str, Any]) -> None:
        """Update every ``params[key]`` from ``grads[key]``."""
        self.iter += 1
        self.apply(params, grads, self.step_scalars(self.iter))

    def apply(
        self, params: MutableMapping[str, Any], grads: Mapping[str, Any], s: Mapping[str, Any]
    ) -> None:
        """:meth:`update` with the step already counted and its scalars ``s`` given
        (:meth:`step_scalars`; host floats, or 0-d arrays in a traced step)."""
        self.init_state(params, grads)
        for key, g in grads.items():
            params[key] = self._step(key, params[key], g, s)

    def step_scalars(self, iteration: int) -> dict[str, float]:
        """The numbers of update number ``iteration`` (from 1) that may change during
        a run, as host floats: ``{"lr": lr}`` (Adam adds its bias-corrected ``lr_t``)."""
        return {"lr": self.lr}

    def init_state(self, params: Mapping[str, Any], keys: Any = None) -> None:
        """Create the zero state of ``keys`` (default every key of ``params``) that
        has none yet, with each parameter's dtype and device."""
        for key in params if keys is None else keys:
            for slot in self._slots:
                if key not in self.state[slot]:
                    p = params[key]
                    self.state[slot][key] = array_namespace(p).zeros_like(p)

    def _step(self, key: str, p: Any, g: Any, s: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def state_arrays(self) -> dict[str, Any]:
        """Copies of the per-parameter state keyed ``"slot/param"`` (``"m/W1"``), on
        the device (copies: a fast update may write the optimizer's own arrays)."""
        return {
            f"{slot}/{key}": array_namespace(a).asarray(a, copy=True)
            for slot, d in self.state.items()
            for key, a in d.items()
        }

    def load_state_arrays(self, arrays: Mapping[str, Any], iteration: int) -> None:
        """Restore :meth:`state_arrays` (arrays already on the parameters' device) and ``iter``."""
        self.state = {slot: {} for slot in self._slots}
        for name, a in arrays.items():
            slot, key = name.split("/", 1)
            if slot not in self.state:
                raise ValueError(f"{type(self).__name__} has no state {slot!r} (from {name!r})")
            # a copy: a fast update writes the optimizer's own arrays in place
            self.state[slot][key] = array_namespace(a).asarray(a, copy=True)
        self.iter = int(iteration)

    def hyperparameters(self) -> dict[str, float]:
        return {"lr": self.lr}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent: ``W -= lr * dW``."""

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__(lr)

    def _step(self, key: str, p: Any, g: Any, s: Mapping[str, Any]) -> Any:
        return p - s["lr"] * g


class Momentum(Optimizer):
    """``v = momentum * v - lr * dW; W += v``."""

    _slots = ("v",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__(lr)
        self.momentum = _check_unit("momentum", momentum)

    def _step(self, key: str, p: Any, g: Any, s: Mapping[str, Any]) -> Any:
        v = self.momentum * self.state["v"][key] - s["lr"] * g
        self.state["v"][key] = v
        return p + v

    def hyperparameters(self) -> dict[str, float]:
        return {"lr": self.lr, "momentum": self.momentum}


class Nesterov(Momentum):
    """Nesterov's accelerated gradient, in the book's form."""

    def _step(self, key: str, p: Any, g: Any, s: Mapping[str, Any]) -> Any:
        m = self.momentum
        v = m * self.state["v"][key] - s["lr"] * g
        self.state["v"][key] = v
        return p + (m * m) * v - ((1 + m) * s["lr"]) * g


class AdaGrad(Optimizer):
    """``h += dW**2; W -= lr * dW / (sqrt(h) + 1e-7)``."""

    _slots = ("h",)

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__(lr)

    def _step(self, key: str, p: Any, g: Any, s: Mapping[str, Any]) -> Any:
        xp = array_namespace(p)
        h = self.state["h"][key] + g * g
        self.state["h"][key] = h
        return p - s["lr"] * g / (xp.sqrt(h) + 1e-7)


class RMSprop(Optimizer):
    """``h = decay_rate * h + (1 - decay_rate) * dW**2; W -= lr * dW / (sqrt(h) + 1e-7)``."""

    _slots = ("h",)

    def __init__(self, lr: float = 0.01, decay_rate: float = 0.99) -> None:
        super().__init__(lr)
        self.decay_rate = _check_unit("decay_rate", decay_rate)

    def _step(self, key: str, p: Any, g: Any, s: Mapping[str, Any]) -> Any:
        xp = array_namespace(p)
        h = self.decay_rate * self.state["h"][key] + (1 - self.decay_rate) * g * g
        self.state["h"][key] = h
        return p - s["lr"] * g / (xp.sqrt(h) + 1e-7)

    def hyperparameters(self) -> dict[str, float]:
        return {"lr": self.lr, "decay_rate": self.decay_rate}


class Adam(Optimizer):
    """Adam (Kingma & Ba) in the book's form, with the bias correction folded into ``lr_t``."""

    _slots = ("m", "v")

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999) -> None:
        super().__init__(lr)
        self.beta1 = _check_unit("beta1", beta1)
        self.beta2 = _check_unit("beta2", beta2)

    def step_scalars(self, iteration: int) -> dict[str, float]:
        b1, b2 = self.beta1, self.beta2
        lr_t = self.lr * math.sqrt(1.0 - b2**iteration) / (1.0 - b1**iteration)
        return {"lr": self.lr, "lr_t": lr_t}

    def _step(self, key: str, p: Any, g: Any, s: Mapping[str, Any]) -> Any:
        xp = array_namespace(p)
        b1, b2, lr_t = self.beta1, self.beta2, s["lr_t"]
        m = self.state["m"][key]
        v = self.state["v"][key]
        fused = _fast.lookup("adam_update", p)
        if fused is not None:  # m and v in place (ours), a new p: the same bits
            return fused(p, g, m, v, lr_t, 1 - b1, 1 - b2, 1e-7)
        m = m + (1 - b1) * (g - m)
        v = v + (1 - b2) * (g * g - v)
        self.state["m"][key], self.state["v"][key] = m, v
        return p - lr_t * m / (xp.sqrt(v) + 1e-7)

    def hyperparameters(self) -> dict[str, float]:
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2}


def _check_unit(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and 0 <= value < 1):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


#: Names accepted by :func:`make_optimizer` and ``--optimizer`` (case-insensitive).
OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adagrad": AdaGrad,
    "rmsprop": RMSprop,
    "adam": Adam,
}


def make_optimizer(name: str | Optimizer, **optimizer_param: float) -> Optimizer:
    """An optimizer by name (``"Adam"``, ``"sgd"``, ...) with its hyperparameters."""
    if isinstance(name, Optimizer):
        return name
    cls = OPTIMIZERS.get(str(name).lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    try:
        return cls(**optimizer_param)
    except TypeError as exc:
        raise ValueError(f"{cls.__name__}: bad hyperparameters {optimizer_param}: {exc}") from None
