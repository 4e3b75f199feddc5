"""``xpcnn train``: the options of a training run; the run itself is
:func:`xpcnn.run.run_training`. It runs on every rank of an MPI job."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..models import MODELS
from ..optim import OPTIMIZERS
from ..run import TRAIN_DEFAULTS, RunConfig, run_training
from ._options import (
    add_data_options,
    add_device_options,
    non_negative_int,
    positive_float,
    positive_int,
)

#: Every rank of an MPI job runs it (data-parallel training); other commands run on rank 0.
EVERY_RANK = True


def _option(p: argparse.ArgumentParser, flag: str, help: str, **kw: Any) -> None:
    """An option whose default (shown in the help) is in TRAIN_DEFAULTS; left None
    when not given, so that a resumed run can tell."""
    default = TRAIN_DEFAULTS[flag[2:].replace("-", "_")]
    shown = "all" if default is None else default
    p.add_argument(flag, help=f"{help} (default {shown})", **kw)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    t = subparsers.add_parser("train", help="train a network and report its test accuracy")
    _option(t, "--model", "network", choices=sorted(MODELS))
    add_data_options(t, f"{TRAIN_DEFAULTS['dataset']}, or the resumed run's")
    _option(t, "--epochs", "epochs in all", type=positive_int)
    _option(t, "--batch-size", "mini-batch size", type=positive_int)
    _option(t, "--optimizer", "update rule", type=str.lower, choices=sorted(OPTIMIZERS))
    _option(t, "--lr", "learning rate", type=positive_float)
    add_device_options(t)
    _option(t, "--dtype", "float type", choices=("float32", "float64"))
    _option(t, "--seed", "seed of the initial weights and the shuffles", type=non_negative_int)
    _option(t, "--train-size", "train on the first N images only (quick runs)", type=positive_int)
    _option(t, "--eval-samples", "examples evaluated per epoch", type=positive_int)
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
        "--no-flush-subnormals",
        action="store_true",
        help="compute subnormal floats exactly (slower late in training); by default they "
        "are flushed to zero while training",
    )
    t.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="threads per process: on NumPy xpcnn's convolutions, pooling and ReLU split "
        "their work among N threads (BLAS one each); elsewhere BLAS's and PyTorch's threads "
        "(default: the CPUs this process may use, shared among the ranks on a node)",
    )
    return t


def run(args: argparse.Namespace) -> int:
    options = {k: getattr(args, k) for k in TRAIN_DEFAULTS}
    config = RunConfig(
        **options,
        data_dir=args.data_dir,
        device=args.device,
        backend=args.backend,
        out=args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        threads=args.threads,
        flush_subnormals=not args.no_flush_subnormals,
    )
    return run_training(config).status
