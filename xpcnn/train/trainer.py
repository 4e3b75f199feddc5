"""The training loop: a :class:`BatchIterator`, one step (gradient, a
reduction hook, the optimizer update) and :mod:`extensions` for everything
else (evaluation, divergence, progress, epoch lines, checkpoints).

The training set is moved to the network's device once (as uint8 when it is
stored so); each step takes a batch there with ``take`` and converts it to the
network's dtype on the device. The loss is copied to the host only every
``log_every`` steps, never per step.

Data-parallel runs pass a :class:`~xpcnn.train.comm.Communicator` with
``size > 1``; with the default :class:`~xpcnn.train.comm.SingleProcess` every
collective below is the identity and the loop is the one-process loop.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import Device, host_rng, to_numpy
from ..checkpoint import CheckpointError, check_compatible, load_checkpoint, save_checkpoint
from ..distributed import rank_seed
from ..inputs import as_input
from ..metrics import count_correct
from ..models import Sequential, build_model
from ..optim import Optimizer, make_optimizer
from .batches import BatchIterator, share
from .comm import Communicator, SingleProcess
from .extensions import (
    DivergenceCheck,
    EpochEndCallback,
    EpochLog,
    Evaluate,
    Extension,
    ProgressBar,
    TrainerView,
    TrainingDiverged,
)

__all__ = [
    "HISTORY_FIELDS",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "load_network",
]

#: The per-run history, in :meth:`Trainer.history`, checkpoints and history.json:
#: the loss of every step, then one value per epoch.
HISTORY_FIELDS = ("train_loss", "train_acc", "test_acc", "epoch_seconds", "images_per_sec")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: raised after the current step completed, so
    the trainer's state is consistent and can be checkpointed."""


@contextlib.contextmanager
def _deferred_sigint() -> Iterator[list[bool]]:
    """Turn the first Ctrl-C into a flag checked between steps; a second one
    interrupts at once. Outside the main thread, signals are left alone."""
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


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
        set (the book's shortcut); None evaluates on all of them.
    verbose : bool
        One line per epoch (and a progress bar unless ``progress=False``).
    progress : bool or None
        Progress bar per epoch; None follows ``verbose`` (shown on terminals only).
    seed : int, Generator or None
        Host RNG for the shuffles (saved in checkpoints); None derives it from the
        network's weights (:meth:`~xpcnn.models.Sequential.shuffle_seed`).
    log_every : int
        Steps between host copies of the loss (also when divergence is detected).
    on_epoch_end : callable(trainer), optional
        Called after each epoch's evaluation, on rank 0 only.
    extensions : sequence of :class:`~xpcnn.train.extensions.Extension`
        Run after the built-in ones (divergence check, progress bar,
        evaluation, epoch line, ``on_epoch_end``), in this order.
    comm : :class:`~xpcnn.train.comm.Communicator`, optional
        The process group of a data-parallel run; default one process.

    After :meth:`train`, ``train_loss_list`` holds the loss of every step,
    ``train_acc_list`` / ``test_acc_list`` one accuracy per epoch.
    """

    train_loss_list = _history_property("train_loss")
    train_acc_list = _history_property("train_acc")
    test_acc_list = _history_property("test_acc")
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
        seed: Any = None,
        progress: bool | None = None,
        log_every: int = 50,
        on_epoch_end: Callable[[Trainer], None] | None = None,
        extensions: Sequence[Extension] = (),
        comm: Communicator | None = None,
    ) -> None:
        for name, v in (
            ("epochs", epochs),
            ("mini_batch_size", mini_batch_size),
            ("log_every", log_every),
        ):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if x_train.shape[0] != t_train.shape[0] or x_test.shape[0] != t_test.shape[0]:
            raise ValueError(
                f"images and labels differ in length: train {x_train.shape[0]} vs {t_train.shape[0]}, "
                f"test {x_test.shape[0]} vs {t_test.shape[0]}"
            )
        if x_train.shape[0] == 0:
            raise ValueError("the training set is empty")
        self.network = network
        dev = network.device
        self.x_train, self.t_train = dev.asarray(x_train), dev.asarray(t_train)
        self.x_test, self.t_test = dev.asarray(x_test), dev.asarray(t_test)
        self.epochs = epochs
        self.batch_size = mini_batch_size
        if optimizer_param is None:
            optimizer_param = {} if isinstance(optimizer, Optimizer) else {"lr": 0.001}
        self.optimizer = make_optimizer(optimizer, **dict(optimizer_param))
        self.evaluate_sample_num_per_epoch = evaluate_sample_num_per_epoch
        self.verbose = verbose
        self.progress = verbose if progress is None else progress
        self.log_every = log_every
        self.comm: Communicator = comm if comm is not None else SingleProcess()
        # None: derived from the initial weights, so a seeded network shuffles reproducibly.
        self.rng = host_rng(network.shuffle_seed() if seed is None else seed)
        self.batches = BatchIterator(
            self.x_train.shape[0],
            mini_batch_size,
            self.rng,
            rank=self.comm.rank,
            size=self.comm.size,
        )
        self.extensions: list[Extension] = [
            DivergenceCheck(),
            *([ProgressBar()] if self.progress else []),
            Evaluate(evaluate_sample_num_per_epoch),
            *([EpochLog()] if verbose else []),
            *([EpochEndCallback(on_epoch_end)] if on_epoch_end is not None else []),
            *extensions,
        ]
        self._history: dict[str, list[float]] = {f: [] for f in HISTORY_FIELDS}
        self._pending: list[Any] = []  # device losses not yet copied to the host
        self._stop = [False]  # Ctrl-C seen here (set by the SIGINT handler during train())
        self._stop_agreed = False  # some rank saw Ctrl-C by this step (data parallel)
        self._share = (0, 0)  # (this rank's images, global images) of the current step

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

    # -- one step -----------------------------------------------------------------
    def train_step(self, x_batch: Any, t_batch: Any) -> Any:
        """One optimizer step on a prepared batch; returns the loss (0-d, on the device)."""
        net = self.network
        if x_batch.shape[0]:
            grads = net.gradient(x_batch, t_batch)
            loss = net.last_layer.loss
        else:  # an empty share of a global batch smaller than the world: contributes nothing
            xp = net.device.xp
            grads = {k: xp.zeros_like(p) for k, p in net.params.items()}
            loss = xp.zeros((), dtype=net.dtype, device=net.device.device)
        grads, loss = self.reduce_gradients(grads, loss)
        self.optimizer.update(net.params, grads)
        self._pending.append(loss)
        return loss

    def reduce_gradients(self, grads: dict[str, Any], loss: Any) -> tuple[dict[str, Any], Any]:
        """The hook between gradient and update: the global batch's mean
        gradients and loss from this rank's share.

        One process: returns its arguments. ``comm.size > 1``: each rank's
        mean over its share, weighted by share / global batch, summed over the
        ranks through one flat buffer and one ``comm.allreduce``; the buffer
        also carries the loss and this rank's Ctrl-C flag, so every rank stops
        after the same step.
        """
        if self.comm.size == 1:
            return grads, loss
        xp, dev = self.network.device.xp, self.network.device
        mine, whole = self._share
        w = mine / whole
        keys = list(grads)
        flag = xp.asarray([float(self._stop[0])], dtype=loss.dtype, device=dev.device)
        flat = xp.concat(
            [xp.reshape(grads[k], (-1,)) * w for k in keys] + [xp.reshape(loss * w, (1,)), flag]
        )
        flat = self.comm.allreduce(flat, in_place=True)  # flat is ours: no second buffer
        out, at = {}, 0
        for k in keys:
            n = grads[k].size
            out[k] = xp.reshape(flat[at : at + n], grads[k].shape)
            at += n
        self._stop_agreed = bool(to_numpy(flat[at + 1]) > 0)
        return out, flat[at]

    def _take(self, idx: np.ndarray) -> tuple[Any, Any]:
        net = self.network
        xp, dev = net.device.xp, net.device
        i = dev.asarray(idx)
        x = xp.reshape(xp.take(self.x_train, i, axis=0), (-1, *net.input_dim))
        return as_input(x, net.dtype), xp.take(self.t_train, i, axis=0)

    def _flush_losses(self) -> None:
        """Copy pending losses to the host (one transfer) and pass them to the extensions."""
        if not self._pending:
            return
        xp = self.network.device.xp
        losses = [float(v) for v in to_numpy(xp.stack(self._pending))]
        self._pending = []
        self.train_loss_list.extend(losses)
        self._call("on_losses", losses)

    # -- the loop -------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run the remaining epochs; returns :meth:`history`.

        Raises TrainingInterrupted (after a completed step) on Ctrl-C and
        TrainingDiverged when the loss stops being finite.
        """
        with _deferred_sigint() as self._stop, self.network.device.activate():
            self._stop_agreed = False
            self.broadcast_state()
            self._call("on_train_begin")
            try:
                while self.epoch < self.epochs:
                    self._run_epoch()
            finally:
                self._call("on_train_end")
        return self.history()

    def _run_epoch(self) -> None:
        start = time.perf_counter()
        images = 0  # images trained this epoch (all ranks): the last batch may be partial
        self._call("on_epoch_begin")
        for batch in self.batches.epoch_batches():
            self._share = (len(batch.indices), batch.global_size)
            self.train_step(*self._take(batch.indices))
            images += batch.global_size
            self._call("on_step_end")
            if self.step_in_epoch % self.log_every == 0:
                self._flush_losses()
            # Ranks stop on the flag they agreed on in the step's allreduce, never on
            # a Ctrl-C that reached this rank alone after it (the others would hang).
            if self._stop_agreed if self.comm.size > 1 else self._stop[0]:
                self._flush_losses()
                raise TrainingInterrupted(
                    f"interrupted in epoch {self.epoch + 1} after step {self.step_in_epoch}"
                )
        self._flush_losses()
        seconds = time.perf_counter() - start
        self.batches.end_epoch()
        self.epoch_seconds.append(seconds)
        self.images_per_sec.append(images / seconds)
        self._call("on_epoch_end")

    # -- evaluation ---------------------------------------------------------------------
    def accuracies(self, *sets: tuple[Any, Any]) -> list[float]:
        """Accuracy on each ``(x, t)`` set; in a data-parallel run each rank
        counts its contiguous shard and the (correct, count) pairs are summed
        in one allreduce. Every rank first takes rank 0's buffers (BatchNorm's
        running statistics, which training keeps per rank), so the network
        evaluated is the one rank 0 saves."""
        if self.comm.size > 1:
            for k in list(self.network.buffers):
                self.network.buffers[k] = self.comm.bcast(self.network.buffers[k])
        counts = []
        for x, t in sets:
            rows = share(np.arange(x.shape[0]), self.comm.rank, self.comm.size)
            lo, hi = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0)
            counts += [count_correct(self.network, x[lo:hi, ...], t[lo:hi, ...]), hi - lo]
        total = self.comm.allreduce(np.asarray(counts, dtype=np.int64))
        return [
            int(c) / int(n) if n else float("nan")
            for c, n in zip(total[::2], total[1::2], strict=True)
        ]

    def test_accuracy(self) -> float:
        """Accuracy on the whole test set."""
        return self.accuracies((self.x_test, self.t_test))[0]

    def history(self) -> dict[str, Any]:
        """Per-step losses and per-epoch metrics (JSON-able), keyed by :data:`HISTORY_FIELDS`."""
        return {f: list(self._history[f]) for f in HISTORY_FIELDS}

    # -- data parallel ----------------------------------------------------------------
    def broadcast_state(self) -> None:
        """Give every rank rank 0's parameters, buffers, optimizer state and
        progress (at the start and after a resume); nothing with one process.

        Dropout masks are the exception: rank r > 0 reseeds each dropout layer
        from (its seed, r, the optimizer step), so the ranks draw different masks
        and a resumed run does not repeat the first steps' masks (rank 0 keeps its
        stream, saved in checkpoints)."""
        comm = self.comm
        if comm.size == 1:
            return
        net = self.network
        for view in (net.params, net.buffers):
            for k in list(view):
                view[k] = comm.bcast(view[k])
        state = self.optimizer.state_arrays()
        names, it = comm.bcast_object((sorted(state), self.optimizer.iter))
        if names != sorted(state):
            raise RuntimeError(f"rank {comm.rank}: optimizer state differs from rank 0's")
        self.optimizer.load_state_arrays({n: comm.bcast(state[n]) for n in names}, it)
        b = self.batches
        progress = (b.epoch, b.step, self.rng.bit_generator.state)
        b.epoch, b.step, self.rng.bit_generator.state = comm.bcast_object(progress)
        perm = comm.bcast_object(None if b.perm is None else b.perm.tolist())
        b.perm = None if perm is None else np.asarray(perm, dtype=np.int64)
        if comm.rank > 0:
            for layer in net.layers:
                if hasattr(layer, "seed_state"):
                    seed = layer.seed_state.get("seed")
                    seed = seed if isinstance(seed, int) else None  # a Generator: fresh entropy
                    layer.seed_state = {"seed": rank_seed(seed, comm.rank, self.optimizer.iter)}

    # -- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """Write parameters, optimizer state, progress and RNG state to an ``.npz`` (atomic)."""
        arrays = self.network.state_dict()
        arrays.update({f"optim/{k}": to_numpy(v) for k, v in self.optimizer.state_arrays().items()})
        arrays.update({f"rng/{k}": v for k, v in self.network.random_state().items()})
        if self.batches.perm is not None and self.step_in_epoch:
            arrays["trainer/perm"] = self.batches.perm
        meta = {
            "model": self.network.config,
            "optimizer": {
                "name": type(self.optimizer).__name__,
                "hyperparameters": self.optimizer.hyperparameters(),
                "iter": self.optimizer.iter,
            },
            "trainer": {
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "epochs": self.epochs,
                "mini_batch_size": self.batch_size,
                "rng": self.rng.bit_generator.state,
            },
            "history": self.history(),
            **dict(extra or {}),
        }
        return save_checkpoint(path, arrays, meta)

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Restore a checkpoint written by :meth:`save_checkpoint` into this trainer
        (same architecture, optimizer, batch size and training-set size); returns
        the metadata. Everything is checked before anything changes."""
        arrays, meta = load_checkpoint(path)
        self._check_checkpoint(path, arrays, meta)
        net, dev = self.network, self.network.device
        net.load_state_dict(arrays)
        self.optimizer.load_state_arrays(
            {
                k.removeprefix("optim/"): dev.asarray(v)
                for k, v in _prefixed(arrays, "optim/").items()
            },
            meta["optimizer"]["iter"],
        )
        net.set_random_state(
            {k.removeprefix("rng/"): v for k, v in _prefixed(arrays, "rng/").items()}
        )
        tr = meta["trainer"]
        self.epoch, self.step_in_epoch = tr["epoch"], tr["step_in_epoch"]
        self.rng.bit_generator.state = tr["rng"]
        self.batches.perm = arrays.get("trainer/perm")
        h = meta.get("history", {})
        self._history = {f: list(h.get(f, [])) for f in HISTORY_FIELDS}
        return meta

    def _check_checkpoint(
        self, path: str | Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None:
        """Raise CheckpointError unless the checkpoint fits this trainer as a whole."""
        net = self.network
        check_compatible(net.state_shapes(), _prefixed(arrays, ("params/", "buffers/")))
        tr, opt = meta.get("trainer"), meta.get("optimizer")
        if not isinstance(tr, dict) or not isinstance(opt, dict):
            raise CheckpointError(
                f"checkpoint {path} has no trainer state: it was not written by Trainer.save_checkpoint"
            )
        if tr.get("mini_batch_size") != self.batch_size:
            raise CheckpointError(
                f"checkpoint {path} was trained with mini_batch_size {tr.get('mini_batch_size')}, "
                f"not {self.batch_size}: resume with the same batch size"
            )
        name = type(self.optimizer).__name__
        if opt.get("name") != name:
            raise CheckpointError(
                f"checkpoint {path} was trained with optimizer {opt.get('name')}, not {name}: "
                "resume with the same optimizer"
            )
        shapes = {k: tuple(v.shape) for k, v in net.params.items()}
        for k, a in _prefixed(arrays, "optim/").items():
            slot, _, key = k.removeprefix("optim/").partition("/")
            if slot not in self.optimizer.state or shapes.get(key) != tuple(a.shape):
                raise CheckpointError(
                    f"checkpoint {path}: optimizer state {k} {tuple(a.shape)} does not fit {name} "
                    "on this network; resume with the checkpoint's model and optimizer"
                )
        seeded = {str(i) for i, layer in enumerate(net.layers) if hasattr(layer, "seed_state")}
        for k in _prefixed(arrays, "rng/"):
            if k.removeprefix("rng/").split("/", 1)[0] not in seeded:
                raise CheckpointError(
                    f"checkpoint {path}: random state {k} has no layer with a generator in this network"
                )
        perm = arrays.get("trainer/perm")
        n = self.x_train.shape[0]
        if perm is not None and perm.shape != (n,):
            raise CheckpointError(
                f"checkpoint {path} stopped mid-epoch on a training set of {perm.shape[0]} "
                f"examples, not {n}: resume on the same training set"
            )
        state = tr.get("rng")
        if (
            not isinstance(state, dict)
            or state.get("bit_generator") != type(self.rng.bit_generator).__name__
        ):
            raise CheckpointError(
                f"checkpoint {path} holds no {type(self.rng.bit_generator).__name__} shuffle state; "
                "re-save it with this xpcnn"
            )


def _prefixed(arrays: Mapping[str, Any], prefixes: str | tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in arrays.items() if k.startswith(prefixes)}


def load_network(
    path: str | Path, device: str | Device = "cpu"
) -> tuple[Sequential, dict[str, Any]]:
    """Rebuild the network stored in a checkpoint, on ``device``; returns ``(network, meta)``."""
    arrays, meta = load_checkpoint(path)
    network = build_model(meta["model"], device=device)
    check_compatible(network.state_shapes(), _prefixed(arrays, ("params/", "buffers/")))
    network.load_state_dict(arrays)
    return network, meta
