"""Learning-rate schedules: extensions that set ``optimizer.lr`` at the start of each
epoch, on any optimizer (they all read ``lr`` at each update).

* :class:`StepLR` — multiplied by ``gamma`` every ``step_size`` epochs;
* :class:`CosineLR` — from the base rate down to ``lr_min`` along half a cosine
  over ``epochs`` epochs, then ``lr_min``;
* :class:`ReduceLROnPlateau` — multiplied by ``gamma`` (down to ``lr_min``) after
  ``patience`` epochs in a row without improvement of a validation metric.

The base rate is the optimizer's when training first begins. Step and cosine are
functions of the epoch; the plateau schedule's rate and counters are its state. All
of it is saved in checkpoints, so a resumed run continues the schedule exactly. The
rate of each epoch is in the trainer's history (``lr``). Every rank of a
data-parallel run runs the schedule (each has its own optimizer) on the same metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .extensions import Extension, TrainerView
from .monitor import Monitor, checked_int, require_validation

__all__ = ["SCHEDULES", "CosineLR", "LRSchedule", "ReduceLROnPlateau", "StepLR"]


def _fraction(value: Any, what: str) -> float:
    if isinstance(value, bool) or not (isinstance(value, int | float) and 0 < value < 1):
        raise ConfigError(f"{what} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def _lr_min(value: Any) -> float:
    if isinstance(value, bool) or not (isinstance(value, int | float) and 0 <= value < math.inf):
        raise ConfigError(f"lr_min must be a number >= 0, got {value!r}")
    return float(value)


class LRSchedule(Extension):
    """Base: :meth:`lr_at` gives each epoch's rate from :attr:`base_lr`."""

    base_lr: float | None = None  # the optimizer's rate when training first began
    lr_min = 0.0

    def lr_at(self, epoch: int) -> float:
        """The rate of epoch ``epoch`` (0-based)."""
        raise NotImplementedError

    def on_train_begin(self, trainer: TrainerView) -> None:
        if self.base_lr is None:
            self.base_lr = trainer.optimizer.lr
        if self.lr_min >= self.base_lr:
            raise ConfigError(
                f"{type(self).__name__}: lr_min {self.lr_min:g} must be below the learning "
                f"rate {self.base_lr:g}"
            )

    def on_epoch_begin(self, trainer: TrainerView) -> None:
        trainer.optimizer.lr = self.lr_at(trainer.epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"base_lr": self.base_lr}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        base = state["base_lr"]
        if base is not None and not (isinstance(base, int | float) and base > 0):
            raise ValueError(f"base_lr must be a positive number, got {base!r}")
        self.base_lr = base


class StepLR(LRSchedule):
    """``lr = base * gamma ** (epoch // step_size)`` (PyTorch's ``StepLR``)."""

    def __init__(self, step_size: int = 10, gamma: float = 0.1) -> None:
        self.step_size = checked_int(step_size, "step_size")
        self.gamma = _fraction(gamma, "gamma")

    def lr_at(self, epoch: int) -> float:
        assert self.base_lr is not None
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineLR(LRSchedule):
    """``lr = lr_min + (base - lr_min) * (1 + cos(pi * min(epoch, epochs) / epochs)) / 2``:
    the base rate at epoch 0, ``lr_min`` from epoch ``epochs`` on (PyTorch's
    ``CosineAnnealingLR`` over one half-period)."""

    def __init__(self, epochs: int, lr_min: float = 0.0) -> None:
        self.epochs = checked_int(epochs, "epochs")
        self.lr_min = _lr_min(lr_min)

    def lr_at(self, epoch: int) -> float:
        assert self.base_lr is not None
        t = min(epoch, self.epochs) / self.epochs
        return self.lr_min + (self.base_lr - self.lr_min) * (1 + math.cos(math.pi * t)) / 2


class ReduceLROnPlateau(LRSchedule):
    """``lr *= gamma`` (not below ``lr_min``) after ``patience`` epochs in a row
    without improvement of ``monitor`` (a validation metric, see :class:`Monitor`);
    the count then starts again. Needs a validation set."""

    def __init__(
        self,
        monitor: str = "val_acc",
        patience: int = 3,
        gamma: float = 0.1,
        lr_min: float = 0.0,
        min_delta: float = 0.0,
    ) -> None:
        self.monitor = Monitor(monitor, min_delta)
        self.patience = checked_int(patience, "patience")
        self.gamma = _fraction(gamma, "gamma")
        self.lr_min = _lr_min(lr_min)
        self.lr: float | None = None  # the current rate; None: the base rate

    def on_train_begin(self, trainer: TrainerView) -> None:
        require_validation(trainer, "ReduceLROnPlateau")
        super().on_train_begin(trainer)

    def lr_at(self, epoch: int) -> float:
        assert self.base_lr is not None
        return self.base_lr if self.lr is None else self.lr

    def on_epoch_end(self, trainer: TrainerView) -> None:
        if not self.monitor.update(trainer) and self.monitor.wait >= self.patience:
            self.lr = max(self.lr_at(trainer.epoch) * self.gamma, self.lr_min)
            self.monitor.wait = 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "lr": self.lr, **self.monitor.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        lr = state["lr"]
        if lr is not None and not (isinstance(lr, int | float) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        monitor = Monitor(self.monitor.key, self.monitor.min_delta)
        monitor.load_state_dict(state)
        super().load_state_dict(state)
        self.lr, self.monitor = lr, monitor


#: The schedules by their ``xpcnn train --lr-schedule`` name.
SCHEDULES: dict[str, type[LRSchedule]] = {
    "step": StepLR,
    "cosine": CosineLR,
    "plateau": ReduceLROnPlateau,
}
