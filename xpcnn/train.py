"""Training loop: the book's ``Trainer``, without its sampling with replacement,
with checkpoints, resume, clean Ctrl-C and divergence detection.

The training set is moved to the network's device once (as uint8 when it is
stored so); each step takes a batch there with ``take`` and converts it to the
network's dtype on the device. The loss is copied to the host only every
``log_every`` steps, never per step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .backend import Device, host_rng, to_numpy
from .checkpoint import check_compatible, load_checkpoint, save_checkpoint
from .inputs import as_input
from .models import Sequential, build_model
from .optim import Optimizer, make_optimizer

__all__ = [
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "as_input",
    "load_network",
    "predict_labels",
]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: raised after the current step completed, so
    the trainer's state is consistent and can be checkpointed."""


def predict_labels(network: Sequential, x: Any, batch_size: int = 500) -> Any:
    """Predicted class labels (N,) on the network's device for inputs ``x``
    (host or device, integer pixels or floats, (N, *input_dim) or flat)."""
    dev = network.device
    x = dev.asarray(x)
    xp, N = dev.xp, x.shape[0]
    shape = (-1, *network.input_dim)
    with dev.activate():  # CuPy allocates on the current GPU, whatever device= says
        out = [
            xp.argmax(
                network.predict(
                    as_input(xp.reshape(x[i : min(i + batch_size, N), ...], shape), network.dtype),
                    keep_cache=False,
                ),
                axis=1,
            )
            for i in range(0, N, batch_size)
        ]
        return xp.concat(out)


def _accuracy(network: Sequential, x: Any, t: Any, batch_size: int = 500) -> float:
    xp = network.device.xp
    y = predict_labels(network, x, batch_size)
    if len(t.shape) == 2:
        t = xp.argmax(t, axis=1)
    return float(to_numpy(xp.mean(xp.astype(y == xp.astype(t, y.dtype), network.dtype))))


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
        Called after each epoch's evaluation (the CLI saves checkpoints there).

    After :meth:`train`, ``train_loss_list`` holds the loss of every step,
    ``train_acc_list`` / ``test_acc_list`` one accuracy per epoch.
    """

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
        # None: derived from the initial weights, so a seeded network shuffles reproducibly.
        self.rng = host_rng(network.shuffle_seed() if seed is None else seed)
        self.log_every = log_every
        self.on_epoch_end = on_epoch_end

        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # completed steps of the current epoch
        self._perm: np.ndarray | None = None  # the current epoch's shuffle (kept for resume)
        self._pending: list[Any] = []  # device losses not yet copied to the host
        self.train_loss_list: list[float] = []
        self.train_acc_list: list[float] = []
        self.test_acc_list: list[float] = []
        self.epoch_seconds: list[float] = []
        self.images_per_sec: list[float] = []

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.x_train.shape[0] / self.batch_size)

    # -- one step -----------------------------------------------------------------
    def train_step(self, x_batch: Any, t_batch: Any) -> Any:
        """One optimizer step on a prepared batch; returns the loss (0-d, on the device)."""
        grads = self.network.gradient(x_batch, t_batch)
        self.optimizer.update(self.network.params, grads)
        loss = self.network.last_layer.loss
        self._pending.append(loss)
        return loss

    def _flush_losses(self) -> None:
        """Copy pending losses to the host (one transfer) and stop on NaN/inf."""
        if not self._pending:
            return
        xp = self.network.device.xp
        losses = [float(v) for v in to_numpy(xp.stack(self._pending))]
        self._pending = []
        self.train_loss_list.extend(losses)
        if not all(math.isfinite(v) for v in losses):
            step = len(self.train_loss_list)
            raise TrainingDiverged(
                f"training diverged: the loss became {losses[-1]} by step {step} "
                f"(epoch {self.epoch + 1}); lower the learning rate (now {self.optimizer.lr}) "
                "or use float64"
            )

    # -- the loop -------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run the remaining epochs; returns :meth:`history`.

        Raises TrainingInterrupted (after a completed step) on Ctrl-C and
        TrainingDiverged when the loss stops being finite.
        """
        net, xp = self.network, self.network.device.xp
        N, B = self.x_train.shape[0], self.batch_size
        shape = (-1, *net.input_dim)
        with _deferred_sigint() as interrupted, net.device.activate():
            while self.epoch < self.epochs:
                if self._perm is None or self.step_in_epoch == 0:
                    self._perm = self.rng.permutation(N)
                perm = net.device.asarray(self._perm)
                start = time.perf_counter()
                first_step = self.step_in_epoch
                bar = tqdm(
                    total=self.steps_per_epoch,
                    initial=first_step,
                    desc=f"epoch {self.epoch + 1}/{self.epochs}",
                    disable=not self.progress or None,
                    leave=False,
                    unit="step",
                )
                with bar:
                    for step in range(first_step, self.steps_per_epoch):
                        idx = perm[step * B : min((step + 1) * B, N)]
                        x = as_input(
                            xp.reshape(xp.take(self.x_train, idx, axis=0), shape), net.dtype
                        )
                        t = xp.take(self.t_train, idx, axis=0)
                        self.train_step(x, t)
                        self.step_in_epoch = step + 1
                        bar.update()
                        if self.step_in_epoch % self.log_every == 0:
                            self._flush_losses()
                            bar.set_postfix(loss=f"{self.train_loss_list[-1]:.4f}")
                        if interrupted[0]:
                            self._flush_losses()
                            raise TrainingInterrupted(
                                f"interrupted in epoch {self.epoch + 1} after step {self.step_in_epoch}"
                            )
                    self._flush_losses()
                seconds = time.perf_counter() - start
                self.epoch += 1
                self.step_in_epoch = 0
                self.epoch_seconds.append(seconds)
                self.images_per_sec.append((self.steps_per_epoch - first_step) * B / seconds)
                self._evaluate_epoch()
                if self.on_epoch_end is not None:
                    self.on_epoch_end(self)
        return self.history()

    def _evaluate_epoch(self) -> None:
        n = self.evaluate_sample_num_per_epoch
        sl = slice(None) if n is None else slice(0, n)
        train_acc = _accuracy(self.network, self.x_train[sl, ...], self.t_train[sl, ...])
        test_acc = _accuracy(self.network, self.x_test[sl, ...], self.t_test[sl, ...])
        self.train_acc_list.append(train_acc)
        self.test_acc_list.append(test_acc)
        if self.verbose:
            steps = self.steps_per_epoch
            loss = sum(self.train_loss_list[-steps:]) / min(steps, len(self.train_loss_list))
            tqdm.write(
                f"epoch {self.epoch:>3}/{self.epochs}  loss {loss:.4f}  train acc {train_acc:.4f}  "
                f"test acc {test_acc:.4f}  {self.images_per_sec[-1]:,.0f} img/s"
            )

    def test_accuracy(self) -> float:
        """Accuracy on the whole test set."""
        return _accuracy(self.network, self.x_test, self.t_test)

    def history(self) -> dict[str, Any]:
        """Per-step losses and per-epoch metrics (JSON-able)."""
        return {
            "train_loss": list(self.train_loss_list),
            "train_acc": list(self.train_acc_list),
            "test_acc": list(self.test_acc_list),
            "epoch_seconds": list(self.epoch_seconds),
            "images_per_sec": list(self.images_per_sec),
        }

    # -- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """Write parameters, optimizer state, progress and RNG state to an ``.npz`` (atomic)."""
        arrays = self.network.state_dict()
        arrays.update({f"optim/{k}": to_numpy(v) for k, v in self.optimizer.state_arrays().items()})
        arrays.update({f"rng/{k}": v for k, v in self.network.random_state().items()})
        if self._perm is not None and self.step_in_epoch:
            arrays["trainer/perm"] = self._perm
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
        (its network must have the same architecture); returns the metadata."""
        arrays, meta = load_checkpoint(path)
        check_compatible(self.network.state_shapes(), _prefixed(arrays, ("params/", "buffers/")))
        self.network.load_state_dict(arrays)
        dev = self.network.device
        opt = {
            k[len("optim/") :]: dev.asarray(v) for k, v in arrays.items() if k.startswith("optim/")
        }
        self.optimizer.load_state_arrays(opt, meta["optimizer"]["iter"])
        self.network.set_random_state(
            {k[len("rng/") :]: v for k, v in arrays.items() if k.startswith("rng/")}
        )
        tr = meta["trainer"]
        if tr["mini_batch_size"] != self.batch_size:
            raise ValueError(
                f"checkpoint {path} was trained with mini_batch_size {tr['mini_batch_size']}, "
                f"not {self.batch_size}: resume with the same batch size"
            )
        self.epoch, self.step_in_epoch = tr["epoch"], tr["step_in_epoch"]
        self.rng.bit_generator.state = tr["rng"]
        self._perm = arrays.get("trainer/perm")
        h = meta.get("history", {})
        self.train_loss_list = list(h.get("train_loss", []))
        self.train_acc_list = list(h.get("train_acc", []))
        self.test_acc_list = list(h.get("test_acc", []))
        self.epoch_seconds = list(h.get("epoch_seconds", []))
        self.images_per_sec = list(h.get("images_per_sec", []))
        return meta


def _prefixed(arrays: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
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
