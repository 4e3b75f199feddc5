"""The training loop (Chainer's ``Trainer``): epochs of batches from a
:class:`BatchIterator`, one step each by an updater, and :mod:`extensions` for
everything else (evaluation, divergence, progress, epoch lines, checkpoints).

The parts live beside it: the step in :mod:`.updater`, what a data-parallel run
adds in :mod:`.parallel`, the checkpoint state in :mod:`.state`, and how training
stops early (a request, SIGINT, SIGTERM) in :mod:`.stopping`.

The training set is moved to the network's device once (as uint8 when it is
stored so); each step takes a batch there and converts it to the network's dtype
on the device. The loss is copied to the host only every ``log_every`` steps,
never per step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import flush_subnormals, host_rng, to_numpy
from ..checkpoint import CheckpointError, load_checkpoint
from ..metrics import count_correct_and_loss
from ..models import Sequential
from ..optim import Optimizer, make_optimizer
from .augment import Augment
from .batches import BatchIterator
from .comm import Communicator, SingleProcess
from .compiled import CompiledPredictor, CompiledUpdater
from .extensions import (
    DivergenceCheck,
    EpochLog,
    Evaluate,
    Extension,
    ProgressBar,
    TrainerView,
    TrainingDiverged,
)
from .parallel import (
    DataParallelUpdater,
    agree_on_stop,
    broadcast_state,
    mean_metrics,
    sharded_evaluation,
)
from .schedules import LRSchedule
from .split import split_digest, validation_split
from .state import (
    check_state,
    extension_states,
    load_extension_states,
    load_state,
    save_state,
)
from .stopping import StopRequest, TrainingInterrupted, deferred_signals
from .updater import StandardUpdater, Updater

__all__ = ["HISTORY_FIELDS", "Trainer", "TrainingDiverged", "TrainingInterrupted"]

#: The per-run history, in :meth:`Trainer.history`, checkpoints and history.json:
#: the loss of every step, then one value per epoch (and ``"stop_reason"``): the
#: validation metrics with a validation set, the test accuracy when it is measured
#: every epoch, the learning rate of the epoch.
HISTORY_FIELDS = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_acc",
    "lr",
    "epoch_seconds",
    "images_per_sec",
)


def _history_property(field: str) -> property:
    def get(self: Trainer) -> list[float]:
        return self._history[field]

    def set_(self: Trainer, value: list[float]) -> None:
        self._history[field] = list(value)

    return property(get, set_, doc=f"history[{field!r}]")


class Trainer:
    """Train a network with mini-batches drawn without replacement.

    Parameters
    ----------
    network : Sequential
    x_train, t_train, x_test, t_test : arrays
        Images (N, *input_dim) or flat (N, D); uint8 pixels (scaled to [0, 1]
        on the device) or floats. Labels (N,) integers or (N, K) one-hot. Host
        (NumPy) or already on the network's device.
    epochs, mini_batch_size : int
        ``mini_batch_size`` is the global batch of a data-parallel run.
    optimizer : name (``"Adam"``, ``"SGD"``, ...) or an :class:`~xpcnn.optim.Optimizer`
    optimizer_param : dict, e.g. ``{"lr": 0.001}``
    evaluate_sample_num_per_epoch : int or None
        Evaluate accuracy per epoch on the first this-many examples of each
        set (the book's shortcut; all of a smaller set); None evaluates all of them.
    val_split : float in (0, 1) or None
        Hold out this fraction of the training set (rounded to the nearest image),
        drawn from ``seed``'s own stream (:func:`~xpcnn.train.split.validation_split`):
        ``x_val``, ``t_val``, with per-epoch ``val_loss`` and ``val_acc``; ``x_train``
        and ``t_train`` keep the rest.
    test_each_epoch : bool or None
        Measure test accuracy after every epoch; None: only without a validation
        set (with one, the test set waits for the end: :meth:`test_accuracy`).
    verbose : bool
        One line per epoch (with the learning rate when a schedule is among the
        extensions) and a progress bar (on terminals only). For the lines alone,
        pass ``verbose=False, extensions=[EpochLog()]``.
    seed : int, Generator or None
        Host RNG for the shuffles (saved in checkpoints) and the validation split
        (its own stream of an int seed); None derives it from the
        network's weights (:meth:`~xpcnn.models.Sequential.shuffle_seed`).
    extensions : sequence of :class:`~xpcnn.train.extensions.Extension`
        Run after the built-in ones (divergence check, progress bar, evaluation,
        epoch line), in this order; ``EpochEndCallback(fn)`` calls a plain function.
    comm : :class:`~xpcnn.train.comm.Communicator`, optional
        The process group of a data-parallel run; default one process.
    log_every : int
        Steps between host copies of the loss (also when divergence is detected).
    flush_subnormals : bool
        Compute with subnormal floats flushed to zero during :meth:`train`
        (:func:`xpcnn.flush_subnormals`: late in training they make steps up to about
        twice as slow); the caller's floating-point state is restored afterwards.
        On NumPy, :meth:`train` also keeps BLAS at one thread per call while xpcnn's
        own threads (:func:`xpcnn.cpu_threads`, every CPU by default) split the work,
        as ``xpcnn train`` does; BLAS's setting is restored afterwards.
    augment : :class:`~xpcnn.train.augment.Augment`, optional
        Random crops and/or flips of each training batch on the device (image
        inputs only), drawn from its seed and the epoch: resumed runs repeat them.
    compile : bool
        Trace forward, backward and the update into one ``jax.jit`` function
        (:class:`~xpcnn.train.compiled.CompiledUpdater`; the network must be on JAX,
        else :class:`~xpcnn.train.compiled.CompileError`). Dropout masks then come
        from keys of the layers' seeds and the step number.

    The step is :attr:`updater`'s (a :class:`~xpcnn.train.updater.StandardUpdater`
    or with ``compile`` a :class:`~xpcnn.train.compiled.CompiledUpdater`, wrapped by
    :class:`~xpcnn.train.parallel.DataParallelUpdater` when ``comm.size > 1``). After
    :meth:`train`, ``train_loss_list`` holds the loss of every step, ``train_acc_list``
    / ``test_acc_list`` one accuracy per epoch, and :attr:`stop_reason` why training
    ended early (None when it ran every epoch).
    """

    train_loss_list = _history_property("train_loss")
    train_acc_list = _history_property("train_acc")
    val_loss_list = _history_property("val_loss")
    val_acc_list = _history_property("val_acc")
    test_acc_list = _history_property("test_acc")
    lr_list = _history_property("lr")
    epoch_seconds = _history_property("epoch_seconds")
    images_per_sec = _history_property("images_per_sec")

    def __init__(
        self,
        network: Sequential,
        x_train: Any,
        t_train: Any,
        x_test: Any,
        t_test: Any,
        epochs: int = 20,
        mini_batch_size: int = 100,
        optimizer: str | Optimizer = "Adam",
        optimizer_param: Mapping[str, float] | None = None,
        evaluate_sample_num_per_epoch: int | None = None,
        verbose: bool = True,
        *,
        val_split: float | None = None,
        test_each_epoch: bool | None = None,
        seed: Any = None,
        extensions: Sequence[Extension] = (),
        comm: Communicator | None = None,
        log_every: int = 50,
        flush_subnormals: bool = True,
        augment: Augment | None = None,
        compile: bool = False,
    ) -> None:
        _check_arguments(x_train, t_train, x_test, t_test, epochs, mini_batch_size, log_every)
        if augment is not None and len(network.input_dim) != 3:
            raise ValueError(f"augment needs image inputs (C, H, W), not {network.input_dim}")
        self.network = network
        dev = network.device
        # None: derived from the initial weights, so a seeded network shuffles reproducibly.
        seed = network.shuffle_seed() if seed is None else seed
        self.rng = host_rng(seed)
        self.val_split = val_split
        self._hold_out(dev.asarray(x_train), dev.asarray(t_train), seed)
        self.x_test, self.t_test = dev.asarray(x_test), dev.asarray(t_test)
        self.epochs, self.batch_size, self.log_every = epochs, mini_batch_size, log_every
        self.flush_subnormals = flush_subnormals
        if optimizer_param is None:
            optimizer_param = {} if isinstance(optimizer, Optimizer) else {"lr": 0.001}
        self.optimizer = make_optimizer(optimizer, **dict(optimizer_param))
        self.evaluate_sample_num_per_epoch = evaluate_sample_num_per_epoch
        self.comm: Communicator = comm if comm is not None else SingleProcess()
        self.batches = BatchIterator(
            self.x_train.shape[0],
            mini_batch_size,
            self.rng,
            rank=self.comm.rank,
            size=self.comm.size,
        )
        step = CompiledUpdater if compile else StandardUpdater
        self.updater: Updater = step(network, self.optimizer, self.x_train, self.t_train, augment)
        # what evaluation predicts with: a compiled run's inference is compiled too
        self._predictor: Any = CompiledPredictor(network) if compile else network
        if self.comm.size > 1:
            self.updater = DataParallelUpdater(self.updater, self.comm, lambda: self._requested)
        self.extensions: list[Extension] = [
            DivergenceCheck(),
            *([ProgressBar()] if verbose else []),
            Evaluate(
                evaluate_sample_num_per_epoch,
                test=self.x_val is None if test_each_epoch is None else test_each_epoch,
            ),
            *([EpochLog(lr=any(isinstance(e, LRSchedule) for e in extensions))] if verbose else []),
            *extensions,
        ]
        self._history: dict[str, list[float]] = {f: [] for f in HISTORY_FIELDS}
        self._pending: list[Any] = []  # device losses not yet copied to the host
        self._requested: StopRequest | None = None  # by a signal or request_stop, on this rank
        self.stop_reason: str | None = None

    def _hold_out(self, x: Any, t: Any, seed: Any) -> None:
        """Set ``x_train``, ``t_train`` and the held-out ``x_val``, ``t_val`` (None
        without a split)."""
        self.x_val = self.t_val = None
        self._split_meta: dict[str, Any] | None = None
        if self.val_split is None:
            self.x_train, self.t_train = x, t
            return
        keep, held = validation_split(x.shape[0], self.val_split, seed)
        dev = self.network.device
        i, j = dev.asarray(keep), dev.asarray(held)
        xp = dev.xp
        self.x_train, self.t_train = xp.take(x, i, axis=0), xp.take(t, i, axis=0)
        self.x_val, self.t_val = xp.take(x, j, axis=0), xp.take(t, j, axis=0)
        self._split_meta = {
            "fraction": self.val_split,
            "size": len(held),
            "digest": split_digest(held),
        }

    # -- progress, kept by the batch iterator ---------------------------------------
    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return self.batches.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.batches.epoch = value

    @property
    def step_in_epoch(self) -> int:
        """Completed steps of the current epoch."""
        return self.batches.step

    @step_in_epoch.setter
    def step_in_epoch(self, value: int) -> None:
        self.batches.step = value

    @property
    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch

    def _call(self, hook: str, *args: Any) -> None:
        view: TrainerView = self  # the type checker verifies that the trainer is one
        for ext in self.extensions:
            if not (ext.rank0_only and self.comm.rank != 0):
                getattr(ext, hook)(view, *args)

    # -- the loop -------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run the remaining epochs; returns :meth:`history`.

        Ends early, normally, after :meth:`request_stop` (:attr:`stop_reason` says
        why). Raises TrainingInterrupted after a completed step on SIGINT (Ctrl-C)
        or SIGTERM (the handlers before the call are restored), and
        TrainingDiverged when the loss stops being finite.
        """
        self._requested, self.stop_reason = None, None
        with (
            deferred_signals(self._on_signal),
            self.network.device.activate(),
            self.network.device.adapter.training_threads(),
            flush_subnormals(self.flush_subnormals),
        ):
            self.broadcast_state()
            self._call("on_train_begin")
            try:
                while self.epoch < self.epochs and self.stop_reason is None:
                    self._run_epoch()
            finally:
                self._call("on_train_end")
        return self.history()

    def _run_epoch(self) -> None:
        start = time.perf_counter()
        images = 0  # images trained this epoch (all ranks): the last batch may be partial
        self._call("on_epoch_begin")
        for batch in self.batches.epoch_batches():
            self._pending.append(self.updater.update(batch))
            images += batch.global_size
            self._call("on_step_end")
            if self.step_in_epoch % self.log_every == 0:
                self._flush_losses()
            # Ranks stop on the request they agreed on in the step's allreduce, never on
            # one that reached this rank alone after it (the others would wait forever).
            if isinstance(self.updater, DataParallelUpdater):
                stopped = self._stop(self.updater.agreed_stop)
            else:
                stopped = self._stop(self._requested)
            if stopped:
                return
        self._flush_losses()
        seconds = time.perf_counter() - start
        self.batches.end_epoch()
        self.epoch_seconds.append(seconds)
        self.images_per_sec.append(images / seconds)
        self.lr_list.append(self.optimizer.lr)  # before a schedule sets the next epoch's
        self._call("on_epoch_end")
        self._stop(
            agree_on_stop(self.comm, self._requested) if self.comm.size > 1 else self._requested
        )

    def _stop(self, request: StopRequest | None) -> bool:
        """End training on an agreed request: True for :meth:`request_stop`'s,
        TrainingInterrupted for a signal's; False for none."""
        if request is None:
            return False
        self._flush_losses()
        self.stop_reason = request.reason
        if request.signum is not None:
            raise TrainingInterrupted(
                f"{request.reason} in epoch {self.epoch + 1} after step {self.step_in_epoch}",
                request.signum,
            )
        return True

    def request_stop(self, reason: str = "stop requested") -> None:
        """End training after the current step (or, called at an epoch's end, before
        the next epoch), normally: :meth:`train` returns, :attr:`stop_reason` and the
        history's ``"stop_reason"`` say ``reason``. For extensions (early stopping,
        schedules). In a data-parallel run the ranks agree on it: a request made on
        one rank stops every rank after the same step."""
        if self._requested is None or self._requested.signum is None:  # a signal stays
            self._requested = StopRequest(reason)

    def _on_signal(self, signum: int) -> None:
        self._requested = StopRequest.from_signal(signum)

    def _flush_losses(self) -> None:
        """Copy pending losses to the host (one transfer) and pass them to the extensions."""
        if not self._pending:
            return
        xp = self.network.device.xp
        losses = [float(v) for v in to_numpy(xp.stack(self._pending))]
        self._pending = []
        self.train_loss_list.extend(losses)
        self._call("on_losses", losses)

    # -- evaluation ---------------------------------------------------------------------
    def evaluate(self, *sets: tuple[Any, Any], loss: bool = False) -> list[tuple[float, float]]:
        """``(accuracy, mean loss)`` on each ``(x, t)`` set (NaN for an empty set; the
        loss, a mean cross-entropy in inference mode, NaN unless ``loss``); in a
        data-parallel run, sharded over the ranks
        (:func:`~xpcnn.train.parallel.sharded_evaluation`)."""
        if self.comm.size > 1:
            return sharded_evaluation(self._predictor, sets, self.comm, loss=loss)
        return [
            mean_metrics(
                *count_correct_and_loss(self._predictor, x, t, loss=loss), x.shape[0], loss
            )
            for x, t in sets
        ]

    def accuracies(self, *sets: tuple[Any, Any]) -> list[float]:
        """Accuracy on each ``(x, t)`` set (NaN for an empty one): :meth:`evaluate`."""
        return [acc for acc, _ in self.evaluate(*sets)]

    def test_accuracy(self) -> float:
        """Accuracy on the whole test set."""
        return self.accuracies((self.x_test, self.t_test))[0]

    def history(self) -> dict[str, Any]:
        """Per-step losses and per-epoch metrics keyed by :data:`HISTORY_FIELDS`, and
        ``"stop_reason"`` (JSON-able)."""
        return {
            **{f: list(self._history[f]) for f in HISTORY_FIELDS},
            "stop_reason": self.stop_reason,
        }

    def broadcast_state(self) -> None:
        """Give every rank rank 0's parameters, buffers, optimizer state and progress
        (:func:`~xpcnn.train.parallel.broadcast_state`); nothing with one process."""
        if self.comm.size > 1:
            broadcast_state(self.comm, self.network, self.optimizer, self.batches)

    # -- checkpoints --------------------------------------------------------------------
    def save_checkpoint(
        self, path: str | os.PathLike[str], extra: Mapping[str, Any] | None = None
    ) -> Path:
        """Write parameters, optimizer state, progress, RNG state and history to an
        ``.npz`` (atomic), with ``extra`` metadata (:func:`~xpcnn.train.state.save_state`)."""
        meta = {
            "trainer": {"epochs": self.epochs, "validation": self._split_meta},
            "history": self.history(),
            "extensions": extension_states(self.extensions),
            **dict(extra or {}),
        }
        return save_state(path, self.network, self.optimizer, self.batches, meta)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Restore a checkpoint written by :meth:`save_checkpoint` into this trainer
        (same architecture, optimizer, batch size, training set and validation split;
        extensions in place, which get their state back); returns the metadata.
        Everything is checked before anything changes."""
        arrays, meta = load_checkpoint(path)
        self.load_state(arrays, meta, source=path)
        return meta

    def load_state(
        self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], source: Any = "checkpoint"
    ) -> None:
        """:meth:`load_checkpoint` of a checkpoint already read (``xpcnn.checkpoint.
        load_checkpoint``), so that a caller that needs its metadata reads it once."""
        check_state(source, arrays, meta, self.network, self.optimizer, self.batches)
        held = meta["trainer"].get("validation")
        if held != self._split_meta:
            raise CheckpointError(
                f"checkpoint {source} held out {_describe_split(held)} for validation, this "
                f"trainer {_describe_split(self._split_meta)}: resume with the same val_split and seed"
            )
        load_extension_states(source, meta.get("extensions"), self.extensions)  # or nothing
        load_state(source, arrays, meta, self.network, self.optimizer, self.batches)
        h = meta.get("history", {})
        self._history = {f: list(h.get(f, [])) for f in HISTORY_FIELDS}


def _describe_split(meta: Mapping[str, Any] | None) -> str:
    if not meta:
        return "nothing"
    return f"{meta.get('size')} images ({meta.get('fraction')} of the set, {meta.get('digest')})"


def _check_arguments(x_train: Any, t_train: Any, x_test: Any, t_test: Any, *counts: int) -> None:
    for name, v in zip(("epochs", "mini_batch_size", "log_every"), counts, strict=True):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if x_train.shape[0] != t_train.shape[0] or x_test.shape[0] != t_test.shape[0]:
        raise ValueError(
            f"images and labels differ in length: train {x_train.shape[0]} vs {t_train.shape[0]}, "
            f"test {x_test.shape[0]} vs {t_test.shape[0]}"
        )
    if x_train.shape[0] == 0:
        raise ValueError("the training set is empty")
