"""The ``xpcnn`` command line: ``train``, ``evaluate``, ``visualize``, ``info``.

Every expected failure (bad option, no CuPy/GPU, missing or damaged data, a
checkpoint that does not fit, an unwritable output folder) ends as one line on
stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


class CLIError(Exception):
    """An error to report as one line, with an exit status. ``collective``: raised
    on every rank of a data-parallel run at once (rank 0 alone reports it)."""

    def __init__(self, message: str, status: int = EXIT_ERROR, collective: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.collective = collective


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASET_NAMES
    from .models import MODELS
    from .optim import OPTIMIZERS

    parser = argparse.ArgumentParser(
        prog="xpcnn",
        description="Convolutional networks from 'Deep Learning from Scratch' ch. 7 on NumPy or CuPy.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_device(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--device", default="cpu", help="cpu (NumPy), cuda or cuda:N (CuPy); default cpu"
        )

    def add_data(p: argparse.ArgumentParser, default: str | None) -> None:
        p.add_argument(
            "--dataset",
            choices=DATASET_NAMES,
            default=default,
            help="mnist-sample (bundled, offline), mnist or fashion-mnist"
            + ("" if default else "; default: the one the checkpoint was trained on"),
        )
        p.add_argument(
            "--data-dir",
            type=Path,
            help="folder with the IDX files (else $XPCNN_DATA, the cache, a download)",
        )

    t = sub.add_parser("train", help="train a network and report its test accuracy")
    t.add_argument(
        "--model", choices=sorted(MODELS), help=f"network (default {TRAIN_DEFAULTS['model']})"
    )
    add_data(t, None)
    t.add_argument(
        "--epochs", type=_positive_int, help=f"epochs in all (default {TRAIN_DEFAULTS['epochs']})"
    )
    t.add_argument("--batch-size", type=_positive_int, help="mini-batch size (default 100)")
    t.add_argument("--optimizer", type=str.lower, choices=sorted(OPTIMIZERS), help="default adam")
    t.add_argument("--lr", type=_positive_float, help="learning rate (default 0.001)")
    add_device(t)
    t.add_argument("--dtype", choices=("float32", "float64"), help="default float32")
    t.add_argument(
        "--seed", type=int, help="seed of the initial weights and the shuffles (default 0)"
    )
    t.add_argument(
        "--train-size", type=_positive_int, help="train on the first N images only (quick runs)"
    )
    t.add_argument(
        "--eval-samples", type=_positive_int, help="examples evaluated per epoch (default 10000)"
    )
    t.add_argument("--out", type=Path, help="output folder (default runs/MODEL-DATASET)")
    t.add_argument(
        "--resume", type=Path, metavar="CHECKPOINT", help="continue a run from its checkpoint"
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="accuracy (overall and per class) of a checkpoint")
    e.add_argument("checkpoint", type=Path)
    add_data(e, None)
    add_device(e)
    e.add_argument("--batch-size", type=_positive_int, default=500)

    v = sub.add_parser(
        "visualize", help="filters, feature maps, curves, errors of a checkpoint, as PNG"
    )
    v.add_argument("checkpoint", type=Path)
    v.add_argument("--out", type=Path, required=True, help="output folder for the PNG files")
    v.add_argument(
        "--what",
        default="filters,responses,features,curves,errors,confusion",
        help="comma-separated subset of: filters,responses,features,curves,errors,confusion",
    )
    v.add_argument("--image-index", type=int, default=0, help="test image for responses/features")
    v.add_argument(
        "--filters",
        type=lambda text: [int(i) for i in text.split(",")],
        default=None,
        help="first-layer filters whose responses to show, e.g. 0,3,7 (default: the first four)",
    )
    add_data(v, None)
    add_device(v)

    sub.add_parser("info", help="versions, backends and whether a GPU is visible")
    return parser


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
    from ._atomic import atomic_write

    with atomic_write(path) as f:
        f.write((json.dumps(obj, indent=2) + "\n").encode())


def _load_data(name: str, data_dir: Path | None, progress: bool = True) -> Any:
    from .data import load_dataset

    return load_dataset(name, data_dir, progress=progress)


def _build_network(cfg: dict[str, Any], dataset: Any, device: Any) -> Any:
    from .models import MODELS

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


# -- commands ----------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from .backend import resolve_device
    from .checkpoint import load_checkpoint
    from .distributed import (
        array_digest,
        check_same_config,
        get_communicator,
        rank_device,
        share_cores,
    )
    from .train import Trainer, TrainingDiverged, TrainingInterrupted
    from .viz import plot_history

    comm = get_communicator()  # data-parallel under `mpiexec -n N`, N > 1
    lead = comm.rank == 0  # prints and writes files
    threads = share_cores(comm)
    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
    meta: dict[str, Any] = {}
    if args.resume is not None:
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
        cfg = {**TRAIN_DEFAULTS, **stored, **given}
    else:
        cfg = {**TRAIN_DEFAULTS, **given}
    out = args.out or (
        args.resume.parent if args.resume else Path("runs") / f"{cfg['model']}-{cfg['dataset']}"
    )
    if lead:
        _check_writable(out)
    device = resolve_device(rank_device(args.device, comm))
    progress = not args.no_progress and lead
    if not lead:  # rank 0 downloads a missing dataset before the others read it
        comm.barrier()
    dataset = _load_data(cfg["dataset"], args.data_dir, progress)
    if lead:
        comm.barrier()
    n = cfg["train_size"]
    check_same_config(
        {
            **cfg,
            "device": args.device,
            "resume": args.resume is not None,
            "data": array_digest(
                dataset.x_train[:n], dataset.t_train[:n], dataset.x_test, dataset.t_test
            ),
        },
        comm,
    )
    network = _build_network(cfg, dataset, device)
    ckpt = out / "checkpoint.npz"
    run_meta = {"run": {**cfg, "device": device.name, "world_size": comm.size}}

    def save(trainer: Trainer) -> None:
        if lead:
            trainer.save_checkpoint(ckpt, extra=run_meta)

    trainer = Trainer(
        network,
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
        on_epoch_end=save,
        comm=comm,
    )
    if args.resume is not None:
        trainer.load_checkpoint(args.resume)
        if lead:
            print(
                f"resuming {args.resume} at epoch {trainer.epoch}, step {trainer.step_in_epoch}",
                file=sys.stderr,
            )
    if lead:
        ranks = f" x {comm.size} ranks (MPI)" if comm.size > 1 else ""
        if threads is not None:
            ranks += f", {threads} BLAS thread{'s' if threads > 1 else ''} each"
        print(
            f"training {cfg['model']} on {cfg['dataset']} ({trainer.x_train.shape[0]} train / "
            f"{dataset.x_test.shape[0]} test) on {device.name}{ranks}, {cfg['dtype']}, "
            f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, {cfg['optimizer']} lr {cfg['lr']}",
            file=sys.stderr,
        )
    start = time.perf_counter()
    try:
        trainer.train()
    except TrainingInterrupted:  # on every rank after the same step
        save(trainer)
        comm.barrier()  # no rank exits before rank 0's checkpoint is written
        if lead:
            launch = f"mpiexec -n {comm.size} " if comm.size > 1 else ""
            print(
                f"\ninterrupted: checkpoint saved to {ckpt}; continue with: "
                f"{launch}xpcnn train --resume {ckpt}",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED
    except TrainingDiverged as exc:  # on every rank: the loss is the global batch's
        last = (
            f"the last good checkpoint (epoch {trainer.epoch}) is {ckpt}"
            if ckpt.exists()
            else "no checkpoint was written"
        )
        raise CLIError(f"{exc}; {last}", EXIT_DIVERGED, collective=True) from None
    seconds = time.perf_counter() - start
    test_acc = trainer.test_accuracy()  # a collective: every rank evaluates its shard
    if not lead:
        return 0
    save(trainer)
    history = trainer.history()
    _write_json(
        out / "history.json",
        {"config": run_meta["run"], "final_test_accuracy": test_acc, "seconds": seconds, **history},
    )
    if history["test_acc"]:
        plot_history(history, out / "curves.png")
    print(
        f"test accuracy {test_acc:.4f} ({dataset.x_test.shape[0]} images); wrote {ckpt}, {out / 'history.json'}"
    )
    return 0


def _network_and_data(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Any]:
    from .backend import resolve_device
    from .train import load_network

    device = resolve_device(args.device)
    network, meta = load_network(args.checkpoint, device)
    name = args.dataset or meta.get("run", {}).get("dataset") or "mnist-sample"
    dataset = _load_data(name, args.data_dir)
    if tuple(dataset.x_test.shape[1:]) != network.input_dim:
        raise CLIError(
            f"{name} images are {tuple(dataset.x_test.shape[1:])} but the network expects {network.input_dim}"
        )
    return network, meta, dataset


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .backend import to_numpy
    from .train import predict_labels

    network, _, dataset = _network_and_data(args)
    pred = to_numpy(predict_labels(network, dataset.x_test, args.batch_size))
    t = dataset.t_test
    print(f"{dataset.name} test accuracy {float((pred == t).mean()):.4f} ({t.shape[0]} images)")
    for k, name in enumerate(dataset.class_names):
        sel = t == k
        print(f"  {name:>12}: {float((pred[sel] == k).mean()):.4f} ({int(sel.sum())})")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from . import viz
    from .backend import to_numpy
    from .models import build_model
    from .train import predict_labels

    allowed = ("filters", "responses", "features", "curves", "errors", "confusion")
    what = [w.strip() for w in args.what.split(",") if w.strip()]
    unknown = sorted(set(what) - set(allowed))
    if unknown or not what:
        raise CLIError(f"--what: unknown {unknown or 'empty'}; choose from {','.join(allowed)}")
    network, meta, dataset = _network_and_data(args)
    out = _check_writable(args.out)
    written = []
    if not 0 <= args.image_index < dataset.x_test.shape[0]:
        raise CLIError(
            f"--image-index {args.image_index} is outside 0..{dataset.x_test.shape[0] - 1}"
        )
    image = dataset.x_test[args.image_index].astype("float32") / 255.0
    convs = [layer for layer in network.layers if type(layer).__name__ == "Convolution"]
    if "filters" in what and convs:
        after = to_numpy(convs[0].W)
        seed = meta.get("run", {}).get("seed")
        if seed is not None:
            initial = build_model(meta["model"], seed=seed)
            W0 = to_numpy(
                next(layer for layer in initial.layers if type(layer).__name__ == "Convolution").W
            )
            written.append(
                viz.plot_filters(
                    W0, out / "filters_before.png", title="first-layer filters before training"
                )
            )
        written.append(
            viz.plot_filters(
                after, out / "filters_after.png", title="first-layer filters after training"
            )
        )
    if "responses" in what and convs:
        W = to_numpy(convs[0].W)
        bad = [i for i in args.filters or [] if not 0 <= i < W.shape[0]]
        if bad:
            raise CLIError(f"--filters {bad}: the first layer has filters 0..{W.shape[0] - 1}")
        written.append(
            viz.plot_filter_responses(
                image[0], W, out / "filter_responses.png", filter_indices=args.filters
            )
        )
    if "features" in what and convs:
        maps, x = [], network.device.asarray(image[None], network.dtype)
        for layer in network.layers:
            x = layer.forward(x, False)
            if type(layer).__name__ == "Convolution":
                maps.append((f"conv{len(maps) + 1}", to_numpy(x)[0]))
        written.append(viz.plot_feature_maps(image[0], maps, out / "feature_maps.png"))
    if "curves" in what and meta.get("history", {}).get("test_acc"):
        written.append(viz.plot_history(meta["history"], out / "curves.png"))
    if "errors" in what or "confusion" in what:
        pred = to_numpy(predict_labels(network, dataset.x_test))
        names = dataset.class_names
        if "errors" in what:
            written.append(
                viz.plot_misclassified(
                    dataset.x_test,
                    dataset.t_test,
                    pred,
                    out / "misclassified.png",
                    class_names=names,
                )
            )
        if "confusion" in what:
            written.append(
                viz.plot_confusion_matrix(
                    dataset.t_test, pred, out / "confusion_matrix.png", class_names=names
                )
            )
    for p in written:
        print(p)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import platform
    from importlib import metadata

    from .backend import DeviceError, blas_summary, gpu_names, resolve_device
    from .distributed import mpi_summary

    print(
        f"xpcnn {_version()}  (Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs)"
    )
    for pkg in (
        "numpy",
        "array-api-compat",
        "array-api-extra",
        "matplotlib",
        "tqdm",
        "cupy-cuda12x",
        "cupy-cuda13x",
        "cupy",
        "torch",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            print(f"  {pkg:<17} {metadata.version(pkg)}")
    print(f"numpy BLAS: {blas_summary()}")
    print(f"MPI: {mpi_summary()}")
    print("backends: cpu (NumPy)", end="")
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


def _version() -> str:
    from . import __version__

    return __version__


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "visualize": cmd_visualize,
    "info": cmd_info,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xpcnn`` console script; returns the exit status.

    Under ``mpiexec -n N`` (N > 1), an error on one rank alone ends the whole job
    (``MPI_Abort``) so that no rank waits forever; errors raised on every rank at once
    (different options, divergence) are reported by rank 0 and end each rank normally.
    """
    from .distributed import abort_on_exception, get_communicator

    args = build_parser().parse_args(argv)
    try:
        comm = get_communicator()
    except RuntimeError as exc:  # launched by mpiexec without mpi4py
        print(f"xpcnn {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    with abort_on_exception(comm):
        status, collective = _run(args, comm.rank, comm.size)
        if status != 0 and comm.size > 1 and not collective:
            comm.abort(status)
    return status


def _run(args: argparse.Namespace, rank: int, size: int) -> tuple[int, bool]:
    """Run a command: ``(exit status, whether every rank ends with it)``; only
    ``train`` runs on every rank of an MPI job, the other commands on rank 0."""
    from .backend import DeviceError
    from .checkpoint import CheckpointError
    from .data import DatasetError, IDXError

    where = f" (rank {rank} of {size})" if size > 1 else ""
    if rank != 0 and args.command != "train":  # one report, not one per rank
        return 0, True
    try:
        return COMMANDS[args.command](args), True
    except (
        CLIError,
        DeviceError,
        DatasetError,
        IDXError,
        CheckpointError,
        ValueError,
        OSError,
    ) as exc:
        collective = getattr(exc, "collective", False)
        if rank == 0 or not collective:
            print(
                f"xpcnn {args.command}: error{'' if collective else where}: {exc}", file=sys.stderr
            )
        return (exc.status if isinstance(exc, CLIError) else EXIT_ERROR), collective
    except KeyboardInterrupt:
        print(f"xpcnn {args.command}: interrupted{where}", file=sys.stderr)
        return EXIT_INTERRUPTED, False


if __name__ == "__main__":
    sys.exit(main())
