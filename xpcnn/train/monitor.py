"""Watching a validation metric: :class:`Monitor` (has it improved, and since when)
and :class:`EarlyStopping`, which ends training when it stops improving and keeps
the best epoch's checkpoint (Keras's ``EarlyStopping`` with Chainer's
snapshot-on-improvement). The plateau schedule (:mod:`.schedules`) shares the monitor.

Only validation metrics can be monitored: choosing an epoch on the test set would
make the final test accuracy optimistic.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .extensions import Extension, TrainerView

__all__ = ["MONITORS", "EarlyStopping", "Monitor", "require_validation"]

#: What can be monitored, and whether larger is better.
MONITORS = {"val_acc": True, "val_loss": False}


def require_validation(trainer: TrainerView, what: str) -> None:
    """A :class:`~xpcnn.errors.ConfigError` when ``trainer`` has no validation set."""
    if trainer.x_val is None:
        raise ConfigError(
            f"{what} monitors a validation metric, and this trainer has no validation set: "
            "give it one with Trainer(..., val_split=0.1)"
        )


def checked_int(value: Any, what: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{what} must be an integer >= {low}, got {value!r}")
    return value


class Monitor:
    """Whether ``key`` (``"val_acc"``: higher is better; ``"val_loss"``: lower) improved
    on its best by more than ``min_delta`` (>= 0); the first value always does.

    ``best``, ``best_epoch`` (1-based; 0 before any) and ``wait`` (epochs in a row
    without improvement) are its state.
    """

    def __init__(self, key: str = "val_acc", min_delta: float = 0.0) -> None:
        if key not in MONITORS:
            raise ConfigError(f"monitor must be one of {', '.join(MONITORS)}, got {key!r}")
        if isinstance(min_delta, bool) or not (
            isinstance(min_delta, int | float) and 0 <= min_delta < math.inf
        ):
            raise ConfigError(f"min_delta must be a number >= 0, got {min_delta!r}")
        self.key, self.min_delta, self.higher = key, float(min_delta), MONITORS[key]
        self.best: float | None = None
        self.best_epoch = 0
        self.wait = 0

    def update(self, trainer: TrainerView) -> bool:
        """Read this epoch's value from the trainer's history; True when it improved."""
        value = {"val_acc": trainer.val_acc_list, "val_loss": trainer.val_loss_list}[self.key][-1]
        if self.best is None or (
            value > self.best + self.min_delta
            if self.higher
            else value < self.best - self.min_delta
        ):
            self.best, self.best_epoch, self.wait = value, trainer.epoch, 0
            return True
        self.wait += 1
        return False

    def describe(self) -> str:
        """``"best epoch 3, val_acc 0.9420"``."""
        return f"best epoch {self.best_epoch}, {self.key} {self.best:.4f}"

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        best, epoch, wait = state["best"], state["best_epoch"], state["wait"]
        if best is not None and not isinstance(best, int | float):
            raise TypeError(f"best must be a number, got {best!r}")
        self.best_epoch, self.wait = (
            checked_int(epoch, "best_epoch", 0),
            checked_int(wait, "wait", 0),
        )
        self.best = None if best is None else float(best)


class EarlyStopping(Extension):
    """End training after ``patience`` epochs in a row without improvement of
    ``monitor`` (see :class:`Monitor`), with :meth:`Trainer.request_stop
    <xpcnn.train.Trainer.request_stop>` and a reason that names the epoch, the best
    epoch and its value.

    ``path``: where the best epoch's checkpoint is written (atomically, with
    ``extra`` metadata, as :meth:`Trainer.save_checkpoint
    <xpcnn.train.Trainer.save_checkpoint>`) at each improvement; None keeps none.
    The best value, its epoch and the patience counter are saved in checkpoints, so
    a resumed run continues the count. Runs on rank 0 alone (it writes), whose
    request stops every rank. Needs a validation set.
    """

    rank0_only = True

    def __init__(
        self,
        patience: int,
        monitor: str = "val_acc",
        min_delta: float = 0.0,
        path: str | os.PathLike[str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.patience = checked_int(patience, "patience")
        self.monitor = Monitor(monitor, min_delta)
        self.path = None if path is None else Path(path)
        self.extra = extra

    def on_train_begin(self, trainer: TrainerView) -> None:
        require_validation(trainer, "EarlyStopping")

    def on_epoch_end(self, trainer: TrainerView) -> None:
        if self.monitor.update(trainer):
            if self.path is not None:
                trainer.save_checkpoint(self.path, extra=self.extra)
        elif self.monitor.wait >= self.patience:
            m = self.monitor
            by = f" by more than {m.min_delta:g}" if m.min_delta else ""
            trainer.request_stop(
                f"{m.key} did not improve{by} for {self.patience} epoch"
                f"{'' if self.patience == 1 else 's'} (patience exhausted at epoch "
                f"{trainer.epoch}); {m.describe()}"
            )

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.monitor.load_state_dict(state)
