"""A training run as ``xpcnn train`` makes it, callable from a script.

:func:`run_training` takes a :class:`RunConfig` and does what the command does:
it resolves the configuration (defaults, then the resumed run's, then the options
given), checks the output folder, picks the device and the threads, loads the data
(once per job), builds the network, the optimizer and the :class:`~xpcnn.train.Trainer`,
resumes, trains, and writes ``checkpoint.npz``, ``history.json`` and ``curves.png``
with a final report; with the options of :mod:`xpcnn.run_extensions`, also a
validation split, early stopping (``best.npz``), a learning-rate schedule and
TensorBoard logs; ``history.csv`` always. It prints what the command prints (progress on stderr,
epoch lines and the result on stdout).

Under ``mpiexec -n N`` (N > 1) it runs data-parallel (:mod:`xpcnn.distributed`):
rank 0 alone prints and writes, every rank ends the same way.

Expected failures raise :class:`~xpcnn.errors.XpcnnError` (a :class:`RunError` for
the run's own checks, with the command's exit status); SIGINT and SIGTERM end the
current step, save a checkpoint and return a status of 130 or 143.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from ._atomic import atomic_write
from ._folders import check_writable, removed_if_empty
from .backend import Device, resolve_device, thread_limits, thread_summary
from .checkpoint import load_checkpoint
from .data import Dataset, load_dataset
from .distributed import (
    array_digest,
    check_same_config,
    cores_per_rank,
    get_communicator,
    rank_device,
)
from .errors import ConfigError, RunError
from .models import MODELS, Sequential
from .run_extensions import (
    EXTENSION_DEFAULTS,
    RESUMED_EXTENSION_OPTIONS,
    describe_extensions,
    make_extensions,
    resolve_extension_options,
    restore_best,
)
from .train import (
    Augment,
    Checkpoint,
    Communicator,
    EpochLog,
    Extension,
    ProgressBar,
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
)

__all__ = [
    "RESUMED_FROM_CHECKPOINT",
    "TRAIN_DEFAULTS",
    "RunConfig",
    "RunResult",
    "check_writable",
    "run_training",
]

#: The defaults of a run's options, apart from :class:`RunConfig` so that a resumed
#: run can tell an option given from one left at its default (None there).
TRAIN_DEFAULTS: dict[str, Any] = {
    "model": "simple",
    "dataset": "mnist-sample",
    "epochs": 20,
    "batch_size": 100,
    "optimizer": "adam",
    "lr": 0.001,
    "dtype": "float32",
    "seed": 0,
    "eval_samples": 10000,
    "train_size": None,
    **EXTENSION_DEFAULTS,
}
#: What a resumed run takes from its checkpoint unless given again.
RESUMED_FROM_CHECKPOINT = (
    "train_size",
    "model",
    "dataset",
    "batch_size",
    "optimizer",
    "lr",
    "dtype",
    "seed",
    "eval_samples",
    *RESUMED_EXTENSION_OPTIONS,
)


@dataclass(frozen=True)
class RunConfig:
    """What to train, and where (the options of ``xpcnn train``).

    The options of :data:`TRAIN_DEFAULTS` (``model`` ... ``train_size``) are None
    when not given: the default, or with ``resume`` the resumed run's (giving one that
    differs from the resumed run's is refused). ``out`` defaults to ``runs/MODEL-DATASET``
    (with ``resume``, the checkpoint's folder); a folder that holds a run is refused
    unless it is the one resumed or ``overwrite`` is set. ``threads`` defaults to the
    CPUs this process may use, shared among the ranks on a node. ``flush_subnormals``,
    ``compile``: see :class:`~xpcnn.train.Trainer`. ``val_split`` ... ``tensorboard``:
    see :mod:`xpcnn.run_extensions` and ``xpcnn train --help``.
    """

    model: str | None = None
    dataset: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    dtype: str | None = None
    seed: int | None = None
    eval_samples: int | None = None
    train_size: int | None = None
    data_dir: Path | None = None
    device: str | None = None
    backend: str | None = None
    out: Path | None = None
    resume: Path | None = None
    overwrite: bool = False
    progress: bool = True
    threads: int | None = None
    flush_subnormals: bool = True
    compile: bool = False
    # Validation, early stopping, schedules, logs, augmentation (run_extensions); None: not given.
    val_split: float | None = None
    test_each_epoch: bool | None = None
    early_stopping: int | None = None
    monitor: str | None = None
    min_delta: float | None = None
    lr_schedule: str | None = None
    lr_step_size: int | None = None
    lr_gamma: float | None = None
    lr_min: float | None = None
    lr_patience: int | None = None
    lr_decay_epochs: int | None = None
    tensorboard: bool | None = None
    augment: str | None = None

    def given(self) -> dict[str, Any]:
        """The options of :data:`TRAIN_DEFAULTS` that were given (not None)."""
        return {k: getattr(self, k) for k in TRAIN_DEFAULTS if getattr(self, k) is not None}


@dataclass(frozen=True)
class RunResult:
    """How a run ended: ``status`` 0 (trained), 130 / 143 (SIGINT / SIGTERM: a
    checkpoint was saved, resume with it); the output folder; and, when it trained to
    the end, the test accuracy on the whole test set (of the best epoch's weights with
    early stopping: ``best_epoch``), the history and why it stopped early (None: it
    ran every epoch)."""

    status: int
    out: Path
    test_accuracy: float | None = None
    history: Mapping[str, Any] | None = field(default=None, repr=False)
    stop_reason: str | None = None
    best_epoch: int | None = None


def run_training(config: RunConfig, comm: Communicator | None = None) -> RunResult:
    """Train as ``xpcnn train`` does (see the module docstring).

    Raises :class:`~xpcnn.errors.XpcnnError` for what the user can fix: a
    :class:`RunError` (with ``status`` 2, or 3 when the loss diverged), a missing
    library or device, damaged data or checkpoint. ``comm``: the job's communicator
    (default :func:`xpcnn.distributed.get_communicator`).
    """
    comm = get_communicator() if comm is None else comm
    lead = comm.rank == 0  # prints and writes files
    resumed = load_checkpoint(config.resume) if config.resume is not None else None
    cfg, trained = _resolve(config, resumed[1] if resumed else None)
    resolve_extension_options(cfg, config.given())
    out = config.out or (
        config.resume.parent
        if config.resume is not None
        else Path("runs") / f"{cfg['model']}-{cfg['dataset']}"
    )
    with removed_if_empty(out) if lead else contextlib.nullcontext():
        # Rank 0 decides (it alone writes to out); every rank then ends the same way.
        problem = None
        if lead:
            try:
                _check_run_folder(config, cfg["epochs"], trained, out)
            except RunError as exc:
                problem = str(exc)
        problem = comm.bcast_object(problem)
        if problem is not None:
            raise RunError(problem, collective=True)
        device = resolve_device(rank_device(config.device, comm), config.backend)
        threads = config.threads if config.threads is not None else cores_per_rank(comm)
        with thread_limits(threads, device):
            dataset = _load_data_once(cfg, config, comm)
            run = {**cfg, "device": device.name, "world_size": comm.size}
            checkpoint = Checkpoint(out / "checkpoint.npz", extra={"run": run})
            extras = make_extensions(cfg, out, checkpoint.extra or {})
            try:  # e.g. a split that leaves no image on one side: the same on every rank
                trainer = _make_trainer(cfg, dataset, device, config, [*extras, checkpoint], comm)
            except ConfigError as exc:
                raise RunError(str(exc), collective=True) from None
            trainer.flush_subnormals = config.flush_subnormals  # not part of the run's identity
            if resumed is not None:
                trainer.load_state(*resumed, source=config.resume)
            if lead:
                _announce(config, cfg, trainer, dataset, threads)
                if summary := describe_extensions(cfg, out):
                    _say(summary, file=sys.stderr)
            start = time.perf_counter()
            # Overflow is reported once, as divergence (or a warning), not by NumPy.
            with np.errstate(all="ignore"):
                status = _fit(trainer, checkpoint)
                if status is not None:
                    return RunResult(status, out, history=trainer.history())
                return _finish(trainer, checkpoint, out, time.perf_counter() - start, extras)


# -- the configuration and the output folder -------------------------------------------------


def _resolve(
    config: RunConfig, stored_meta: Mapping[str, Any] | None
) -> tuple[dict[str, Any], int]:
    """The run's options (defaults, then the resumed run's, then those given) and the
    epochs the resumed run has completed (0 for a new run)."""
    given = config.given()
    if stored_meta is None:
        return {**TRAIN_DEFAULTS, **given}, 0
    stored = stored_meta.get("run")
    if not stored:
        raise RunError(
            f"{config.resume} has no run configuration: it was not written by `xpcnn train`"
        )
    for k in RESUMED_FROM_CHECKPOINT:
        if k in given and given[k] != stored.get(k):
            raise RunError(
                f"--{k.replace('_', '-')} {given[k]} differs from the resumed run's {stored.get(k)}; "
                "drop the option to resume, or start a new run without --resume"
            )
    trained = stored_meta.get("trainer", {}).get("epoch", 0)
    return {**TRAIN_DEFAULTS, **stored, **given}, trained if isinstance(trained, int) else 0


def _check_run_folder(config: RunConfig, epochs: int, trained: int, out: Path) -> None:
    """Refuse, before anything is written, a run with nothing to train or one
    that would replace another run's files without ``overwrite``."""
    if config.resume is not None and trained >= epochs:
        raise RunError(
            f"{config.resume} has already trained {_plural(trained, 'epoch')}; "
            f"pass --epochs M with M > {trained} to continue (nothing written)"
        )
    ckpt = out / "checkpoint.npz"
    resumed_here = config.resume is not None and ckpt.exists() and ckpt.samefile(config.resume)
    if ckpt.exists() and not resumed_here and not config.overwrite:
        raise RunError(
            f"{out} already holds a run ({ckpt.name}); continue it with --resume {ckpt}, "
            "replace it with --overwrite, or choose another --out"
        )
    check_writable(out)


# -- the pieces -------------------------------------------------------------------------------


def _load_data_once(cfg: dict[str, Any], config: RunConfig, comm: Communicator) -> Dataset:
    """The dataset, loaded (downloaded if missing) by rank 0 before the other ranks read
    it; then every rank checks that all started with the same options and data."""
    lead = comm.rank == 0
    if not lead:
        comm.barrier()
    dataset = load_dataset(cfg["dataset"], config.data_dir, progress=lead and config.progress)
    if lead:
        comm.barrier()
    n = cfg["train_size"]
    data = array_digest(dataset.x_train[:n], dataset.t_train[:n], dataset.x_test, dataset.t_test)
    options = {"device": config.device, "threads": config.threads, "resume": bool(config.resume)}
    check_same_config({**cfg, **options, "data": data}, comm)
    return dataset


def _build_network(cfg: Mapping[str, Any], dataset: Dataset, device: Device) -> Sequential:
    # Each named net knows the form that fits the images (AlexNet: its small one under 64x64).
    cls = cast(type[Sequential], MODELS[cfg["model"]])  # MODELS is typed as factories
    return cls.for_input(
        tuple(dataset.x_train.shape[1:]),
        output_size=dataset.num_classes,
        dtype=cfg["dtype"],
        device=device,
        seed=cfg["seed"],
    )


def _make_trainer(
    cfg: Mapping[str, Any],
    dataset: Dataset,
    device: Device,
    config: RunConfig,
    extensions: Sequence[Extension],
    comm: Communicator,
) -> Trainer:
    n = cfg["train_size"]  # NumPy slices stop at the end: `--train-size` above N is all of it
    return Trainer(
        _build_network(cfg, dataset, device),
        dataset.x_train[:n],
        dataset.t_train[:n],
        dataset.x_test,
        dataset.t_test,
        epochs=cfg["epochs"],
        mini_batch_size=cfg["batch_size"],
        optimizer=cfg["optimizer"],
        optimizer_param={"lr": cfg["lr"]},
        evaluate_sample_num_per_epoch=cfg["eval_samples"],
        verbose=False,  # the lines always, the bar only when asked: both built here
        val_split=cfg["val_split"],
        test_each_epoch=cfg["test_each_epoch"] or None,  # None: when there is no split
        seed=cfg["seed"],
        extensions=[
            *([ProgressBar()] if config.progress and comm.rank == 0 else []),
            EpochLog(lr=cfg["lr_schedule"] is not None),
            *extensions,
        ],
        comm=comm,
        augment=Augment(cfg["augment"], seed=cfg["seed"]) if cfg["augment"] else None,
        compile=config.compile,
    )


# -- training and the report ------------------------------------------------------------------


def _fit(trainer: Trainer, checkpoint: Checkpoint) -> int | None:
    """Train; None when done, else the exit status (a signal saves a checkpoint first)."""
    comm = trainer.comm
    start_epoch = trainer.epoch
    try:
        trainer.train()
    except TrainingInterrupted as exc:  # on every rank after the same step
        if comm.rank == 0:
            checkpoint.on_epoch_end(trainer)
        comm.barrier()  # no rank exits before rank 0's checkpoint is written
        if comm.rank == 0:
            launch = f"mpiexec -n {comm.size} " if comm.size > 1 else ""
            what = "interrupted" if exc.status == 130 else f"terminated ({trainer.stop_reason})"
            _say(
                f"\n{what}: checkpoint saved to {checkpoint.path}; "
                f"continue with: {launch}xpcnn train --resume {checkpoint.path}",
                file=sys.stderr,
            )
        return exc.status
    except TrainingDiverged as exc:  # on every rank: the loss is the global batch's
        if trainer.epoch > start_epoch:
            last = f"the last good checkpoint (epoch {trainer.epoch}) is {checkpoint.path}"
        elif start_epoch:
            last = f"no epoch finished after the resumed epoch {start_epoch}; nothing was written"
        else:
            last = "no checkpoint was written"
        raise RunError(f"{exc}; {last}", exc.status, collective=True) from None
    return None


def _finish(
    trainer: Trainer,
    checkpoint: Checkpoint,
    out: Path,
    seconds: float,
    extensions: Sequence[Extension] = (),
) -> RunResult:
    """The last checkpoint, then the final test accuracy (of the best epoch's weights
    with early stopping), history.json and curves (rank 0 writes); a warning line when
    the run learnt nothing."""
    lead = trainer.comm.rank == 0
    if lead:
        checkpoint.on_epoch_end(trainer)  # the last epoch's, before the best is put back
    best = restore_best(trainer, extensions)
    n_test, per_epoch = trainer.x_test.shape[0], trainer.evaluate_sample_num_per_epoch
    whole = per_epoch is None or per_epoch >= n_test
    last = best in (None, trainer.epoch) and trainer.step_in_epoch == 0
    if trainer.test_acc_list and whole and last:
        test_acc = trainer.test_acc_list[-1]  # the last epoch already evaluated every image
    else:
        test_acc = trainer.test_accuracy()
    history = trainer.history()
    result = RunResult(0, out, test_acc, history, trainer.stop_reason, best)
    if not lead:
        return result
    from .viz import plot_history  # matplotlib: loaded only when plotting

    config = dict(checkpoint.extra or {}).get("run", {})
    extra = {"best_epoch": best} if best else {}
    _write_json(
        out / "history.json",
        {"config": config, "final_test_accuracy": test_acc, **extra, "seconds": seconds, **history},
    )
    if history["train_acc"]:  # an epoch was evaluated
        plot_history(history, out / "curves.png")
    of_best = f", best epoch {best}" if best else ""
    stopped = "" if trainer.stop_reason is None else f"; stopped early: {trainer.stop_reason}"
    wrote = [checkpoint.path, *([out / "best.npz"] if best else [])]
    wrote += [out / "history.json", out / "history.csv"]
    _say(
        f"test accuracy {test_acc:.4f} ({n_test} images{of_best}){stopped}; "
        f"wrote {', '.join(map(str, wrote))}"
    )
    num_classes = int(trainer.network.output_shapes()[-1][0])
    poor = poor_result(test_acc, num_classes, history["train_loss"], trainer.steps_per_epoch)
    if poor is not None:
        lr = config.get("lr", trainer.optimizer.lr)  # the base rate, not a schedule's last
        _say(f"xpcnn train: warning: {poor}; try a lower --lr (now {lr:g})", file=sys.stderr)
    return result


def poor_result(
    test_acc: float, num_classes: int, step_losses: Sequence[float], steps_per_epoch: int
) -> str | None:
    """Why a finished run looks like it learnt nothing, or None: test accuracy at
    chance (at most 1.5 / num_classes), or a last epoch's mean loss above the first's."""
    if test_acc <= 1.5 / num_classes:
        return (
            f"test accuracy {test_acc:.4f} is chance level for {num_classes} classes: "
            "the network learnt nothing"
        )
    n = steps_per_epoch
    if len(step_losses) >= 2 * n:
        first, last = sum(step_losses[:n]) / n, sum(step_losses[-n:]) / n
        if last > first:
            return f"the last epoch's mean loss {last:.4g} is above the first epoch's {first:.4g}"
    return None


def _announce(
    config: RunConfig,
    cfg: Mapping[str, Any],
    trainer: Trainer,
    dataset: Dataset,
    threads: int | None,
) -> None:
    """The lines on stderr before training: threads, resume point, sizes, settings."""
    comm, device = trainer.comm, trainer.network.device
    _say(thread_summary(device, threads) + (" per rank" if comm.size > 1 else ""), file=sys.stderr)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    if comm.size > 1 and "cuda" not in device.name and cpus > (threads or 1):
        _say(
            f"note: each rank may run on any of {cpus} CPUs; ranks bound to cores "
            "(`mpiexec -bind-to core`, Open MPI: `--bind-to core`) trained faster here",
            file=sys.stderr,
        )
    if config.resume is not None:
        _say(
            f"resuming {config.resume} at epoch {trainer.epoch}, step {trainer.step_in_epoch}",
            file=sys.stderr,
        )
    n = dataset.x_train.shape[0]
    if cfg["train_size"] is not None and cfg["train_size"] > n:
        _say(
            f"--train-size {cfg['train_size']} is more than the {n:,} training images of "
            f"{dataset.name}; using all {n:,}",
            file=sys.stderr,
        )
    ranks = (f" x {comm.size} ranks (MPI)" if comm.size > 1 else "") + ", compiled" * config.compile
    val = "" if trainer.x_val is None else f"{trainer.x_val.shape[0]} validation / "
    _say(
        f"training {cfg['model']} on {cfg['dataset']} ({trainer.x_train.shape[0]} train / {val}"
        f"{trainer.x_test.shape[0]} test) on {device.name}{ranks}, {cfg['dtype']}, "
        f"{_plural(cfg['epochs'], 'epoch')}, batch {cfg['batch_size']}, "
        f"{cfg['optimizer']} lr {cfg['lr']:g}",
        file=sys.stderr,
    )


def _say(*lines: str, file: Any = None) -> None:
    """Print and flush at once, so a redirected log (``xpcnn train > log``) sees it live."""
    stream = file or sys.stdout
    for line in lines:
        print(line, file=stream, flush=True)


def _plural(n: int, word: str) -> str:
    """``"1 epoch"``, ``"2 epochs"``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _write_json(path: Path, obj: Any) -> None:
    with atomic_write(path) as f:
        f.write((json.dumps(obj, indent=2) + "\n").encode())
