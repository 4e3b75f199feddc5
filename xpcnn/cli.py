"""The ``xpcnn`` command line: ``train``, ``evaluate``, ``visualize``, ``info``.

Every expected failure (bad option, no CuPy/GPU, missing or damaged data, a
checkpoint that does not fit, an unwritable output folder) ends as one line on
stderr and a non-zero exit status; anything else is a bug and keeps its traceback.

Under ``mpiexec -n N`` (N > 1) ``train`` runs data-parallel (``xpcnn.distributed``):
rank 0 alone prints and writes; an error on one rank ends the whole job.

One ``cmd_*`` function per subcommand, one ``_add_*`` function per subcommand's
parser and per shared option group.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import array_api_compat
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from . import __version__
from ._atomic import atomic_write
from .backend import (
    BACKENDS,
    Device,
    DeviceError,
    backend_devices,
    blas_summary,
    cpu_threads,
    gpu_names,
    resolve_device,
    to_numpy,
)
from .checkpoint import load_checkpoint
from .data import CLASS_NAMES, DATASET_NAMES, Dataset, DatasetError, IDXError, load_dataset
from .distributed import (
    MPICommunicator,
    abort_on_exception,
    array_digest,
    check_same_config,
    cores_per_rank,
    get_communicator,
    mpi_summary,
    rank_device,
)
from .errors import XpcnnError
from .metrics import predict_labels
from .models import MODELS, Sequential
from .optim import OPTIMIZERS
from .train import (
    Checkpoint,
    Communicator,
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    load_network,
)

__all__ = ["main"]

EXIT_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130

# Defaults of `xpcnn train`, kept apart from argparse so that `--resume` can
# tell an option the user gave from one left at its default.
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
}
# What a resumed run takes from its checkpoint unless given again.
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
)
VISUALS = ("filters", "responses", "features", "curves", "errors", "confusion")


class CLIError(XpcnnError):
    """An error to report as one line, with an exit status. ``collective``: raised
    on every rank of a data-parallel run at once (rank 0 alone reports it)."""

    def __init__(self, message: str, status: int = EXIT_ERROR, collective: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.collective = collective


# Reported as one line. DeviceError, DatasetError and IDXError predate XpcnnError;
# OSError is the environment's (permissions, a full disk), not a bug.
USER_ERRORS = (XpcnnError, DeviceError, DatasetError, IDXError, OSError)


def _int_at_least(low: int, what: str) -> Any:
    """An argparse type: an integer >= ``low`` (argparse names the option in its error)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "a non-negative integer")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def _int_list(text: str) -> list[int]:
    try:
        return [int(i) for i in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


# -- the parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xpcnn",
        description="Convolutional networks from 'Deep Learning from Scratch' ch. 7 on NumPy, "
        "CuPy or any array-API library (--backend).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_parser(sub)
    _add_evaluate_parser(sub)
    _add_visualize_parser(sub)
    _add_predict_parser(sub)
    _add_export_parser(sub)
    sub.add_parser("info", help="versions, backends and whether a GPU is visible")
    return parser


def _add_device_option(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--backend``: the array library that holds the network, and where."""
    p.add_argument(
        "--device",
        help="cpu, cuda or cuda:N, within --backend (default: cpu; CuPy: cuda:0; "
        "JAX: its default device)",
    )
    p.add_argument(
        "--backend",
        type=str.lower,
        choices=BACKENDS,
        help="array library (default: numpy for --device cpu, cupy for cuda)",
    )


def _device(args: argparse.Namespace) -> Device:
    """The :class:`~xpcnn.backend.Device` that ``--device`` and ``--backend`` name."""
    return resolve_device(args.device, args.backend)


def _add_data_options(p: argparse.ArgumentParser, default: str = "the checkpoint's") -> None:
    p.add_argument(
        "--dataset",
        choices=DATASET_NAMES,
        help=f"mnist-sample (bundled, offline), mnist or fashion-mnist (default {default})",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the IDX files (else $XPCNN_DATA, the cache, a download)",
    )


def _add_train_option(p: argparse.ArgumentParser, flag: str, help: str, **kw: Any) -> None:
    """An option of `xpcnn train` whose default (shown in the help) is in TRAIN_DEFAULTS."""
    default = TRAIN_DEFAULTS[flag[2:].replace("-", "_")]
    shown = "all" if default is None else default
    p.add_argument(flag, help=f"{help} (default {shown})", **kw)


def _add_train_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="train a network and report its test accuracy")
    _add_train_option(t, "--model", "network", choices=sorted(MODELS))
    _add_data_options(t, f"{TRAIN_DEFAULTS['dataset']}, or the resumed run's")
    _add_train_option(t, "--epochs", "epochs in all", type=_positive_int)
    _add_train_option(t, "--batch-size", "mini-batch size", type=_positive_int)
    _add_train_option(t, "--optimizer", "update rule", type=str.lower, choices=sorted(OPTIMIZERS))
    _add_train_option(t, "--lr", "learning rate", type=_positive_float)
    _add_device_option(t)
    _add_train_option(t, "--dtype", "float type", choices=("float32", "float64"))
    _add_train_option(
        t, "--seed", "seed of the initial weights and the shuffles", type=_non_negative_int
    )
    _add_train_option(
        t, "--train-size", "train on the first N images only (quick runs)", type=_positive_int
    )
    _add_train_option(t, "--eval-samples", "examples evaluated per epoch", type=_positive_int)
    t.add_argument("--out", type=Path, help="output folder (default runs/MODEL-DATASET)")
    t.add_argument(
        "--resume", type=Path, metavar="CHECKPOINT", help="continue a run from its checkpoint"
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (else refused, to keep it)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="threads per process: on NumPy xpcnn's convolutions, pooling and ReLU split "
        "their work among N threads (BLAS one each); elsewhere BLAS's and PyTorch's threads "
        "(default: the CPUs this process may use, shared among the ranks on a node)",
    )


def _add_evaluate_parser(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="accuracy (overall and per class) of a checkpoint")
    e.add_argument("checkpoint", type=Path)
    _add_data_options(e)
    _add_device_option(e)
    e.add_argument("--batch-size", type=_positive_int, default=500)


def _add_visualize_parser(sub: Any) -> None:
    v = sub.add_parser(
        "visualize", help="filters, feature maps, curves, errors of a checkpoint, as PNG"
    )
    v.add_argument("checkpoint", type=Path)
    v.add_argument("--out", type=Path, required=True, help="output folder for the PNG files")
    v.add_argument(
        "--what",
        default=",".join(VISUALS),
        help=f"comma-separated subset of: {','.join(VISUALS)}",
    )
    v.add_argument("--image-index", type=int, default=0, help="test image for responses/features")
    v.add_argument(
        "--filters",
        type=_int_list,
        default=None,
        help="first-layer filters whose responses to show, e.g. 0,3,7 (default: the first four)",
    )
    _add_data_options(v)
    _add_device_option(v)


def _add_predict_parser(sub: Any) -> None:
    pr = sub.add_parser(
        "predict", help="classify your own images (PNG, JPEG, ...) with a checkpoint"
    )
    pr.add_argument("checkpoint", type=Path)
    pr.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    pr.add_argument(
        "--top", type=_positive_int, default=1, help="the K likeliest classes (default 1)"
    )
    pr.add_argument("--json", action="store_true", help="print one JSON list instead of lines")
    pr.add_argument(
        "--style",
        choices=("mnist", "fashion", "resize"),
        help="preparation: mnist (fit 20x20, centre of mass), fashion (fit the field), "
        "resize (whole picture); default: from the checkpoint's dataset",
    )
    _add_device_option(pr)


def _add_export_parser(sub: Any) -> None:
    ex = sub.add_parser("export", help="write a checkpoint's network as an ONNX model")
    ex.add_argument("checkpoint", type=Path)
    ex.add_argument("output", type=Path, help="the .onnx file to write")


# -- helpers -----------------------------------------------------------------------------


def _check_writable(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".xpcnn-write-test-"):
            pass
    except OSError as exc:
        raise CLIError(
            f"cannot write to output folder {folder}: {exc.strerror or exc}; choose another --out"
        ) from None
    return folder


def _write_json(path: Path, obj: Any) -> None:
    with atomic_write(path) as f:
        f.write((json.dumps(obj, indent=2) + "\n").encode())


def _say(*lines: str, file: Any = None) -> None:
    """Print and flush at once, so a redirected log (``xpcnn train > log``) sees it live."""
    stream = file or sys.stdout
    for line in lines:
        print(line, file=stream, flush=True)


def _plural(n: int, word: str) -> str:
    """``"1 epoch"``, ``"2 epochs"``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _build_network(cfg: dict[str, Any], dataset: Dataset, device: Device) -> Sequential:
    cls = MODELS[cfg["model"]]
    input_dim = tuple(dataset.x_train.shape[1:])
    # AlexNet's full configuration wants 227x227 images: small inputs get its reduced form.
    factory = cls.small if hasattr(cls, "small") and min(input_dim[1:]) < 64 else cls
    return factory(
        input_dim=input_dim,
        output_size=dataset.num_classes,
        dtype=cfg["dtype"],
        device=device,
        seed=cfg["seed"],
    )


# -- threads ------------------------------------------------------------------------------


def _uses_torch(device: Device) -> bool:
    return bool(array_api_compat.is_torch_namespace(device.xp))


def _uses_numpy(device: Device) -> bool:
    return bool(array_api_compat.is_numpy_namespace(device.xp))


@contextlib.contextmanager
def _thread_limits(n: int | None, device: Device) -> Iterator[None]:
    """``n`` threads inside the block: on NumPy xpcnn's own (:func:`xpcnn.cpu_threads`,
    BLAS at one), elsewhere BLAS's (and PyTorch's intra-op); None: as they are."""
    if n is not None and _uses_numpy(device):
        with cpu_threads(n):
            yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        if n is None or not _uses_torch(device):
            yield
            return
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def _threads_line(device: Device, threads: int | None) -> str:
    """The thread counts in use: xpcnn's on NumPy (``threads``), BLAS's as threadpoolctl
    reports them, and PyTorch's."""
    blas = [
        f"{i['internal_api']} {i['num_threads']}"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]
    line = "threads: BLAS " + (", ".join(blas) or "none loaded")
    if _uses_numpy(device):
        line = f"threads: xpcnn {threads or 1}; " + line.removeprefix("threads: ")
    if _uses_torch(device):
        import torch

        line += f"; torch {torch.get_num_threads()}"
    return line


# -- train --------------------------------------------------------------------------------


def _train_config(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """The run's configuration (defaults, then the resumed run's, then the options
    given) and the epochs the resumed run has completed (0 for a new run)."""
    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
    if args.resume is None:
        return {**TRAIN_DEFAULTS, **given}, 0
    _, meta = load_checkpoint(args.resume)
    stored = meta.get("run")
    if not stored:
        raise CLIError(
            f"{args.resume} has no run configuration: it was not written by `xpcnn train`"
        )
    for k in RESUMED_FROM_CHECKPOINT:
        if k in given and given[k] != stored.get(k):
            raise CLIError(
                f"--{k.replace('_', '-')} {given[k]} differs from the resumed run's {stored.get(k)}; "
                "drop the option to resume, or start a new run without --resume"
            )
    trained = meta.get("trainer", {}).get("epoch", 0)
    return {**TRAIN_DEFAULTS, **stored, **given}, trained if isinstance(trained, int) else 0


def _check_run_folder(args: argparse.Namespace, epochs: int, trained: int, out: Path) -> None:
    """Refuse, before anything is written, a run with nothing to train or one
    that would replace another run's files without ``--overwrite``."""
    if args.resume is not None and trained >= epochs:
        raise CLIError(
            f"{args.resume} has already trained {_plural(trained, 'epoch')}; "
            f"pass --epochs M with M > {trained} to continue (nothing written)"
        )
    ckpt = out / "checkpoint.npz"
    resumed_here = args.resume is not None and ckpt.exists() and ckpt.samefile(args.resume)
    if ckpt.exists() and not resumed_here and not args.overwrite:
        raise CLIError(
            f"{out} already holds a run ({ckpt.name}); continue it with --resume {ckpt}, "
            "replace it with --overwrite, or choose another --out"
        )
    _check_writable(out)


@contextlib.contextmanager
def _removed_if_empty(folder: Path) -> Iterator[None]:
    """Remove ``folder`` (and the parents created with it) on the way out if the
    block left them empty: a run that fails before its first checkpoint leaves
    no empty --out behind."""
    new = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield
    finally:
        for p in new:  # deepest first; a folder that holds anything stays
            try:
                p.rmdir()
            except OSError:
                break


def _make_trainer(
    cfg: dict[str, Any],
    dataset: Dataset,
    device: Device,
    progress: bool,
    checkpoint: Checkpoint,
    comm: Communicator,
) -> Trainer:
    n = cfg["train_size"]
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
        verbose=True,
        progress=progress,
        seed=cfg["seed"],
        extensions=[checkpoint],
        comm=comm,
    )


def _fit(trainer: Trainer, checkpoint: Checkpoint) -> int | None:
    """Train; None when done, else the exit status (Ctrl-C saves a checkpoint first)."""
    comm = trainer.comm
    start_epoch = trainer.epoch
    try:
        trainer.train()
    except TrainingInterrupted:  # on every rank after the same step
        if comm.rank == 0:
            checkpoint.on_epoch_end(trainer)
        comm.barrier()  # no rank exits before rank 0's checkpoint is written
        if comm.rank == 0:
            launch = f"mpiexec -n {comm.size} " if comm.size > 1 else ""
            _say(
                f"\ninterrupted: checkpoint saved to {checkpoint.path}; "
                f"continue with: {launch}xpcnn train --resume {checkpoint.path}",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED
    except TrainingDiverged as exc:  # on every rank: the loss is the global batch's
        if trainer.epoch > start_epoch:
            last = f"the last good checkpoint (epoch {trainer.epoch}) is {checkpoint.path}"
        elif start_epoch:
            last = f"no epoch finished after the resumed epoch {start_epoch}; nothing was written"
        else:
            last = "no checkpoint was written"
        raise CLIError(f"{exc}; {last}", EXIT_DIVERGED, collective=True) from None
    return None


def _poor_result(
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


def _finish(trainer: Trainer, checkpoint: Checkpoint, out: Path, seconds: float) -> None:
    """Final test accuracy, checkpoint, history.json and curves (rank 0 writes); a
    warning line when the run learnt nothing."""
    n_test, per_epoch = trainer.x_test.shape[0], trainer.evaluate_sample_num_per_epoch
    if trainer.test_acc_list and (per_epoch is None or per_epoch >= n_test):
        test_acc = trainer.test_acc_list[-1]  # the last epoch already evaluated every image
    else:
        test_acc = trainer.test_accuracy()
    if trainer.comm.rank != 0:
        return
    from .viz import plot_history  # matplotlib: loaded only when plotting

    checkpoint.on_epoch_end(trainer)
    history = trainer.history()
    config = dict(checkpoint.extra or {}).get("run", {})
    _write_json(
        out / "history.json",
        {"config": config, "final_test_accuracy": test_acc, "seconds": seconds, **history},
    )
    if history["test_acc"]:
        plot_history(history, out / "curves.png")
    _say(
        f"test accuracy {test_acc:.4f} ({trainer.x_test.shape[0]} images); "
        f"wrote {checkpoint.path}, {out / 'history.json'}"
    )
    num_classes = int(trainer.network.output_shapes()[-1][0])
    poor = _poor_result(test_acc, num_classes, history["train_loss"], trainer.steps_per_epoch)
    if poor is not None:
        _say(
            f"xpcnn train: warning: {poor}; try a lower --lr (now {trainer.optimizer.lr:g})",
            file=sys.stderr,
        )


def _load_data_once(cfg: dict[str, Any], args: argparse.Namespace, comm: Communicator) -> Dataset:
    """The dataset, loaded (downloaded if missing) by rank 0 before the other ranks read
    it; then every rank checks that all started with the same options and data."""
    lead = comm.rank == 0
    if not lead:
        comm.barrier()
    dataset = load_dataset(cfg["dataset"], args.data_dir, progress=lead and not args.no_progress)
    if lead:
        comm.barrier()
    n = cfg["train_size"]
    data = array_digest(dataset.x_train[:n], dataset.t_train[:n], dataset.x_test, dataset.t_test)
    options = {"device": args.device, "threads": args.threads, "resume": args.resume is not None}
    check_same_config({**cfg, **options, "data": data}, comm)
    return dataset


def _announce(
    args: argparse.Namespace,
    cfg: dict[str, Any],
    trainer: Trainer,
    dataset: Dataset,
    threads: int | None,
) -> None:
    """The lines on stderr before training: threads, resume point, sizes, settings."""
    comm, device = trainer.comm, trainer.network.device
    _say(_threads_line(device, threads) + (" per rank" if comm.size > 1 else ""), file=sys.stderr)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    if comm.size > 1 and "cuda" not in device.name and cpus > (threads or 1):
        _say(
            f"note: each rank may run on any of {cpus} CPUs; ranks bound to cores "
            "(`mpiexec -bind-to core`, Open MPI: `--bind-to core`) trained faster here",
            file=sys.stderr,
        )
    if args.resume is not None:
        _say(
            f"resuming {args.resume} at epoch {trainer.epoch}, step {trainer.step_in_epoch}",
            file=sys.stderr,
        )
    n = dataset.x_train.shape[0]
    if cfg["train_size"] is not None and cfg["train_size"] > n:
        _say(
            f"--train-size {cfg['train_size']} is more than the {n:,} training images of "
            f"{dataset.name}; using all {n:,}",
            file=sys.stderr,
        )
    ranks = f" x {comm.size} ranks (MPI)" if comm.size > 1 else ""
    _say(
        f"training {cfg['model']} on {cfg['dataset']} ({trainer.x_train.shape[0]} train / "
        f"{trainer.x_test.shape[0]} test) on {device.name}{ranks}, {cfg['dtype']}, "
        f"{_plural(cfg['epochs'], 'epoch')}, batch {cfg['batch_size']}, "
        f"{cfg['optimizer']} lr {cfg['lr']:g}",
        file=sys.stderr,
    )


def cmd_train(args: argparse.Namespace) -> int:
    comm = get_communicator()  # data-parallel under `mpiexec -n N`, N > 1
    lead = comm.rank == 0  # prints and writes files
    cfg, trained = _train_config(args)
    out = args.out or (
        args.resume.parent if args.resume else Path("runs") / f"{cfg['model']}-{cfg['dataset']}"
    )
    with _removed_if_empty(out) if lead else contextlib.nullcontext():
        # Rank 0 decides (it alone writes to --out); every rank then ends the same way.
        problem = None
        if lead:
            try:
                _check_run_folder(args, cfg["epochs"], trained, out)
            except CLIError as exc:
                problem = str(exc)
        problem = comm.bcast_object(problem)
        if problem is not None:
            raise CLIError(problem, collective=True)
        device = resolve_device(rank_device(args.device, comm), args.backend)
        threads = args.threads if args.threads is not None else cores_per_rank(comm)
        with _thread_limits(threads, device):
            dataset = _load_data_once(cfg, args, comm)
            run = {**cfg, "device": device.name, "world_size": comm.size}
            checkpoint = Checkpoint(out / "checkpoint.npz", extra={"run": run})
            progress = not args.no_progress and lead
            trainer = _make_trainer(cfg, dataset, device, progress, checkpoint, comm)
            if args.resume is not None:
                trainer.load_checkpoint(args.resume)
            if lead:
                _announce(args, cfg, trainer, dataset, threads)
            start = time.perf_counter()
            # Overflow is reported once, as divergence (or a warning), not by NumPy.
            with np.errstate(all="ignore"):
                status = _fit(trainer, checkpoint)
                if status is not None:
                    return status
                _finish(trainer, checkpoint, out, time.perf_counter() - start)
    return 0


# -- evaluate -----------------------------------------------------------------------------


def _network_and_data(args: argparse.Namespace) -> tuple[Sequential, dict[str, Any], Dataset]:
    device = _device(args)
    network, meta = load_network(args.checkpoint, device)
    name = args.dataset or meta.get("run", {}).get("dataset") or "mnist-sample"
    dataset = load_dataset(name, args.data_dir)
    if tuple(dataset.x_test.shape[1:]) != network.input_dim:
        raise CLIError(
            f"{name} images are {tuple(dataset.x_test.shape[1:])} but the network expects {network.input_dim}"
        )
    return network, meta, dataset


def cmd_evaluate(args: argparse.Namespace) -> int:
    network, _, dataset = _network_and_data(args)
    pred = to_numpy(predict_labels(network, dataset.x_test, args.batch_size))
    t = dataset.t_test
    print(f"{dataset.name} test accuracy {float((pred == t).mean()):.4f} ({t.shape[0]} images)")
    for k, name in enumerate(dataset.class_names):
        sel = t == k
        print(f"  {name:>12}: {float((pred[sel] == k).mean()):.4f} ({int(sel.sum())})")
    return 0


# -- visualize ----------------------------------------------------------------------------


def _parse_what(text: str) -> list[str]:
    what = [w.strip() for w in text.split(",") if w.strip()]
    unknown = sorted(set(what) - set(VISUALS))
    if unknown or not what:
        raise CLIError(f"--what: unknown {unknown or 'empty'}; choose from {','.join(VISUALS)}")
    return what


def cmd_visualize(args: argparse.Namespace) -> int:
    from . import viz  # matplotlib: loaded only when plotting

    what = _parse_what(args.what)
    network, meta, dataset = _network_and_data(args)
    out = _check_writable(args.out)
    if not 0 <= args.image_index < dataset.x_test.shape[0]:
        raise CLIError(
            f"--image-index {args.image_index} is outside 0..{dataset.x_test.shape[0] - 1}"
        )
    conv = viz.first_conv(network)
    n = 0 if conv is None else conv.W.shape[0]
    bad = [i for i in args.filters or [] if not 0 <= i < n]
    if bad and conv is not None and "responses" in what:
        raise CLIError(f"--filters {bad}: the first layer has filters 0..{n - 1}")
    figures = viz.network_figures(
        network, dataset, meta, what=what, image_index=args.image_index, filters=args.filters
    )
    for name, fig in figures.items():
        print(viz.save_figure(fig, out / f"{name}.png"))
    return 0


# -- info ---------------------------------------------------------------------------------

_INFO_PACKAGES = (
    "numpy",
    "array-api-compat",
    "array-api-extra",
    "matplotlib",
    "tqdm",
    "threadpoolctl",
    "cupy-cuda12x",
    "cupy-cuda13x",
    "cupy",
    "torch",
    "jax",
    "array-api-strict",
)


def cmd_info(args: argparse.Namespace) -> int:
    print(
        f"xpcnn {__version__}  (Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs)"
    )
    for pkg in _INFO_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            print(f"  {pkg:<17} {metadata.version(pkg)}")
    print(f"numpy BLAS: {blas_summary()}")
    print(f"MPI: {mpi_summary()}")
    print("backends (--backend: --device ...):")
    for name in BACKENDS:
        try:
            devices = ", ".join(backend_devices(name)) or "no GPU visible"
        except DeviceError as exc:
            devices = f"not available ({exc})"
        print(f"  {name:<17} {devices}")
    print("default: cpu (NumPy)", end="")
    try:
        resolve_device("cuda")
    except DeviceError as exc:
        print(f"\nGPU: not available ({exc})")
    else:
        names = gpu_names()
        print(
            f", cuda (CuPy): {len(names)} GPU(s): "
            + ", ".join(f"cuda:{i} {n}" for i, n in enumerate(names))
        )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .images import load_image  # Pillow: loaded only for this command

    network, meta = load_network(args.checkpoint, _device(args))
    if len(network.input_dim) != 3:
        raise CLIError(f"{args.checkpoint} takes inputs {network.input_dim}, not images (C, H, W)")
    dataset = meta.get("run", {}).get("dataset", "mnist")
    style = args.style or ("fashion" if dataset == "fashion-mnist" else "mnist")
    paths, images, failed = [], [], 0
    for path in args.images:
        try:
            images.append(load_image(path, network.input_dim, style=style))
            paths.append(path)
        except Exception as exc:  # any unreadable file: report it, classify the others
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if type(exc).__name__ == "UnidentifiedImageError":
                why = "not an image file Pillow can read (PNG, JPEG, ...)"
            print(f"xpcnn predict: error: {path}: {why}", file=sys.stderr)
            failed += 1
    results = []
    for i in range(0, len(images), 500):
        scores = to_numpy(network.predict(np.stack(images[i : i + 500]), keep_cache=False))
        z = np.exp(scores - scores.max(axis=1, keepdims=True))
        results.extend(z / z.sum(axis=1, keepdims=True))
    names = CLASS_NAMES.get(dataset, ())
    out: list[dict[str, Any]] = []
    for path, p in zip(paths, results, strict=True):
        top = [int(k) for k in np.argsort(-p, kind="stable")[: args.top]]
        out.append(
            {
                "path": str(path),
                "top": [
                    {"label": k, "class": names[k] if k < len(names) else str(k), "p": float(p[k])}
                    for k in top
                ],
            }
        )
    if args.json:
        print(json.dumps(out, indent=2))
    for r in [] if args.json else out:
        print(f"{r['path']}: " + ", ".join(f"{t['class']} (p={t['p']:.2f})" for t in r["top"]))
    return EXIT_ERROR if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx  # onnx: an optional extra

    network, _ = load_network(args.checkpoint)
    try:
        path = export_onnx(network, args.output)
    except ImportError as exc:  # no onnx package
        raise CLIError(str(exc)) from None
    dims = ", ".join(map(str, network.input_dim))
    print(
        f"wrote {path}: ONNX opset {OPSET}, input {INPUT_NAME!r} float32 (N, {dims}) in [0, 1], "
        f"output {OUTPUT_NAME!r} float32 (N, {network.output_shapes()[-1][0]})"
    )
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "visualize": cmd_visualize,
    "info": cmd_info,
    "predict": cmd_predict,
    "export": cmd_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xpcnn`` console script; returns the exit status.

    Under ``mpiexec -n N`` (N > 1), an error on one rank alone ends the whole job
    (``MPI_Abort``, also for a bug's traceback) so that no rank waits forever; errors
    raised on every rank at once (different options, divergence) are reported by rank 0
    and end each rank normally.
    """
    args = build_parser().parse_args(argv)
    try:
        comm = get_communicator()
    except XpcnnError as exc:  # launched by mpiexec without mpi4py
        print(f"xpcnn {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    with abort_on_exception(comm):
        status, everywhere = _run(args, comm.rank, comm.size)
        if status != 0 and isinstance(comm, MPICommunicator) and comm.size > 1 and not everywhere:
            comm.abort(status)
    return status


def _run(args: argparse.Namespace, rank: int, size: int) -> tuple[int, bool]:
    """Run a command: ``(exit status, whether every rank ends with it)``; only
    ``train`` runs on every rank of an MPI job, the other commands on rank 0."""
    where = f" (rank {rank} of {size})" if size > 1 else ""
    if rank != 0 and args.command != "train":  # one report, not one per rank
        return 0, True
    try:
        return COMMANDS[args.command](args), True
    except USER_ERRORS as exc:
        collective = getattr(exc, "collective", False)
        if rank == 0 or not collective:
            print(
                f"xpcnn {args.command}: error{'' if collective else where}: {exc}", file=sys.stderr
            )
        return getattr(exc, "status", EXIT_ERROR), collective
    except KeyboardInterrupt:
        print(f"xpcnn {args.command}: interrupted{where}", file=sys.stderr)
        return EXIT_INTERRUPTED, False


if __name__ == "__main__":
    sys.exit(main())
