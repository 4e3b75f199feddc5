"""Extensions: what the training loop does besides stepping (Chainer's
Trainer + extensions).

The :class:`~xpcnn.train.Trainer` calls each extension's hooks in list order:
``on_train_begin``, then per epoch ``on_epoch_begin``, ``on_step_end`` after
every step, ``on_losses`` whenever the per-step losses reach the host (every
``log_every`` steps and at the epoch's end), ``on_epoch_end``, and finally
``on_train_end`` (also when training stops with an exception). Any hook may
call ``trainer.request_stop(reason)`` to end training early and normally (after
the current step; at an epoch's end, before the next epoch).

An extension that keeps state across epochs (early stopping's best value, a
schedule's learning rate) returns it from :meth:`Extension.state_dict` as
JSON-able data: checkpoints save it under the extension's :attr:`~Extension.name`
and a resumed trainer gives it back through :meth:`Extension.load_state_dict`.

An extension whose effects must happen once per job (printing, a progress bar,
writing files) sets ``rank0_only = True``: in a data-parallel run only rank 0
calls it. Extensions that every rank must run (evaluation, which is a
collective; divergence checks, so that every rank stops) leave it False.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from ..errors import XpcnnError
from ..optim import Optimizer

__all__ = [
    "Checkpoint",
    "DivergenceCheck",
    "EpochEndCallback",
    "EpochLog",
    "Evaluate",
    "Extension",
    "ProgressBar",
    "TrainerView",
    "TrainingDiverged",
]


class TrainingDiverged(XpcnnError, RuntimeError):
    """The loss became NaN or infinite (on every rank at once: the loss is the
    global batch's). ``xpcnn train`` ends with status 3."""

    status = 3
    collective = True


class TrainerView(Protocol):
    """What extensions see of :class:`xpcnn.train.Trainer` (a Protocol, so that this
    module does not import the trainer, which imports it)."""

    epochs: int
    optimizer: Optimizer
    x_train: Any
    t_train: Any
    x_val: Any  # None without a validation split
    t_val: Any
    x_test: Any
    t_test: Any

    @property
    def epoch(self) -> int: ...
    @property
    def step_in_epoch(self) -> int: ...
    @property
    def steps_per_epoch(self) -> int: ...
    @property
    def train_loss_list(self) -> list[float]: ...
    @property
    def train_acc_list(self) -> list[float]: ...
    @property
    def val_loss_list(self) -> list[float]: ...
    @property
    def val_acc_list(self) -> list[float]: ...
    @property
    def test_acc_list(self) -> list[float]: ...
    @property
    def lr_list(self) -> list[float]: ...
    @property
    def images_per_sec(self) -> list[float]: ...
    def accuracies(self, *sets: tuple[Any, Any]) -> list[float]: ...
    def evaluate(self, *sets: tuple[Any, Any], loss: bool = False) -> list[tuple[float, float]]: ...
    def history(self) -> dict[str, Any]: ...
    def request_stop(self, reason: str = ...) -> None: ...
    def save_checkpoint(self, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path: ...


class Extension:
    """Base class: every hook does nothing, and there is no state to save."""

    rank0_only: bool = False
    #: The key of its state in checkpoints (default: the class name).
    name: str | None = None

    @property
    def state_key(self) -> str:
        return self.name or type(self).__name__

    def state_dict(self) -> dict[str, Any] | None:
        """JSON-able state for checkpoints, or None (nothing to save)."""
        return None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s ``state``; raise (ValueError, TypeError or
        KeyError) before changing anything when it does not fit."""

    def on_train_begin(self, trainer: TrainerView) -> None: ...
    def on_epoch_begin(self, trainer: TrainerView) -> None: ...
    def on_step_end(self, trainer: TrainerView) -> None: ...
    def on_losses(self, trainer: TrainerView, losses: list[float]) -> None: ...
    def on_epoch_end(self, trainer: TrainerView) -> None: ...
    def on_train_end(self, trainer: TrainerView) -> None: ...


class DivergenceCheck(Extension):
    """Raise :class:`~xpcnn.train.TrainingDiverged` when a loss is NaN or infinite
    (on every rank: the losses are the same global ones everywhere)."""

    def on_losses(self, trainer: TrainerView, losses: list[float]) -> None:
        if all(math.isfinite(v) for v in losses):
            return
        raise TrainingDiverged(
            f"training diverged: the loss became {losses[-1]} by step "
            f"{len(trainer.train_loss_list)} (epoch {trainer.epoch + 1}); lower the learning "
            f"rate (now {trainer.optimizer.lr}) or use float64"
        )


class ProgressBar(Extension):
    """A tqdm bar per epoch (steps, and the last loss copied to the host)."""

    rank0_only = True

    def __init__(self) -> None:
        self.bar: Any = None

    def on_epoch_begin(self, trainer: TrainerView) -> None:
        self.bar = tqdm(
            total=trainer.steps_per_epoch,
            initial=trainer.step_in_epoch,
            desc=f"epoch {trainer.epoch + 1}/{trainer.epochs}",
            disable=None,  # only on terminals
            leave=False,
            unit="step",
        )

    def on_step_end(self, trainer: TrainerView) -> None:
        self.bar.update()

    def on_losses(self, trainer: TrainerView, losses: list[float]) -> None:
        if self.bar is not None and losses:
            self.bar.set_postfix(loss=f"{losses[-1]:.4f}")

    def on_epoch_end(self, trainer: TrainerView) -> None:
        self.on_train_end(trainer)  # before the epoch line, which would otherwise cross the bar

    def on_train_end(self, trainer: TrainerView) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Evaluate(Extension):
    """Metrics after each epoch, on the first ``samples`` examples of each set (all
    of them if None, or of a smaller set): accuracy on the training set; loss and
    accuracy on the validation set when the trainer has one; accuracy on the test
    set when ``test`` is True. Appended to ``train_acc_list``, ``val_loss_list``,
    ``val_acc_list`` and ``test_acc_list``. A collective in a data-parallel run:
    each rank counts its shard."""

    def __init__(self, samples: int | None = None, test: bool = True) -> None:
        self.samples, self.test = samples, test

    def on_epoch_end(self, trainer: TrainerView) -> None:
        val = trainer.x_val is not None
        sets = [self._head(trainer.x_train, trainer.t_train)]
        sets += [self._head(trainer.x_val, trainer.t_val)] if val else []
        sets += [self._head(trainer.x_test, trainer.t_test)] if self.test else []
        metrics = iter(trainer.evaluate(*sets, loss=val))
        trainer.train_acc_list.append(next(metrics)[0])
        if val:
            acc, loss = next(metrics)
            trainer.val_loss_list.append(loss)
            trainer.val_acc_list.append(acc)
        if self.test:
            trainer.test_acc_list.append(next(metrics)[0])

    def _head(self, x: Any, t: Any) -> tuple[Any, Any]:
        # Never slice past the end: the array API leaves it unspecified (strict refuses it).
        n = x.shape[0] if self.samples is None else min(self.samples, x.shape[0])
        return x[:n, ...], t[:n, ...]


class EpochLog(Extension):
    """One line per epoch on stdout, flushed at once (so ``> log`` sees it live): the
    mean training loss, each accuracy and validation loss measured that epoch, the
    learning rate when ``lr`` is True, and the speed."""

    rank0_only = True

    def __init__(self, lr: bool = False) -> None:
        self.lr = lr

    def on_epoch_end(self, trainer: TrainerView) -> None:
        steps = trainer.steps_per_epoch
        losses = trainer.train_loss_list[-steps:]
        parts = [f"epoch {trainer.epoch:>3}/{trainer.epochs}"]
        parts.append(f"loss {sum(losses) / max(len(losses), 1):.4f}")
        for label, values in (
            ("train acc", trainer.train_acc_list),
            ("val loss", trainer.val_loss_list),
            ("val acc", trainer.val_acc_list),
            ("test acc", trainer.test_acc_list),
        ):
            if len(values) == trainer.epoch:  # measured every epoch, so this one too
                parts.append(f"{label} {values[-1]:.4f}")
        if self.lr:
            parts.append(f"lr {trainer.lr_list[-1]:.3g}")
        parts.append(f"{trainer.images_per_sec[-1]:,.0f} img/s")
        tqdm.write("  ".join(parts), file=sys.stdout)
        sys.stdout.flush()


class Checkpoint(Extension):
    """Save the trainer to ``path`` after every epoch (atomic), with ``extra`` metadata."""

    rank0_only = True

    def __init__(self, path: str | Path, extra: Mapping[str, Any] | None = None) -> None:
        self.path, self.extra = Path(path), extra

    def on_epoch_end(self, trainer: TrainerView) -> None:
        trainer.save_checkpoint(self.path, extra=self.extra)


class EpochEndCallback(Extension):
    """A plain ``callback(trainer)`` after each epoch's evaluation; rank 0 only, as
    it usually writes."""

    rank0_only = True

    # Any: a callback annotated with the concrete Trainer must be accepted too.
    def __init__(self, callback: Callable[[Any], None]) -> None:
        self.callback = callback

    def on_epoch_end(self, trainer: TrainerView) -> None:
        self.callback(trainer)
