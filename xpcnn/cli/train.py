"""``xpcnn train``: the options of a training run; the run itself is
:func:`xpcnn.run.run_training`. It runs on every rank of an MPI job."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._fast._heap import keep_freed_memory
from ..backend import resolve_device
from ..models import MODELS
from ..optim import OPTIMIZERS
from ..run import TRAIN_DEFAULTS, RunConfig, run_training
from ..train import SCHEDULES
from ..train.compiled import check_backend
from ..train.monitor import MONITORS
from ._options import (
    add_data_options,
    add_device_options,
    augmentations,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

#: Every rank of an MPI job runs it (data-parallel training); other commands run on rank 0.
EVERY_RANK = True


def _option(p: Any, flag: str, help: str, **kw: Any) -> None:
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
    _option(
        t,
        "--dtype",
        "float type; float16 and bfloat16 are for evaluate and predict only",
        choices=("float32", "float64", "float16", "bfloat16"),
    )
    _option(t, "--seed", "seed of the initial weights and the shuffles", type=non_negative_int)
    _option(t, "--train-size", "train on the first N images only (quick runs)", type=positive_int)
    _option(t, "--eval-samples", "examples evaluated per epoch", type=positive_int)
    t.add_argument(
        "--augment",
        type=augmentations,
        metavar="crop,flip",
        help="augment each training batch: crop (a window of the image's size at a random "
        "place in the image padded by 4 zeros), flip (left-right, half the images; refused "
        "for digits), or both (default none)",
    )
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
        "--compile",
        action="store_true",
        help="trace each training step (forward, backward, update) into one compiled "
        "jax.jit function, and evaluation too (--backend jax only; dropout masks then come "
        "from keys of the seed and the step)",
    )
    t.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="threads per process: on NumPy xpcnn's convolutions, pooling and ReLU split "
        "their work among N threads (BLAS one each); elsewhere BLAS's and PyTorch's threads "
        "(default: the CPUs this process may use, shared among the ranks on a node)",
    )
    _add_extension_options(t)
    return t


def _add_extension_options(t: argparse.ArgumentParser) -> None:
    """Validation, early stopping, learning-rate schedules, logs (xpcnn.run_extensions)."""
    g = t.add_argument_group("validation, early stopping, learning-rate schedules, logs")
    g.add_argument(
        "--val-split",
        type=fraction,
        metavar="F",
        help="hold out this fraction of the training set (drawn with --seed) for a validation "
        "loss and accuracy after each epoch; the test set is then measured at the end only",
    )
    g.add_argument(
        "--test-each-epoch",
        action="store_true",
        default=None,
        help="with --val-split, measure test accuracy after each epoch too (to watch, not to choose)",
    )
    g.add_argument(
        "--early-stopping",
        type=positive_int,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs in a row without improvement of --monitor; the best "
        "epoch is kept in best.npz and its test accuracy reported (needs --val-split)",
    )
    _option(g, "--monitor", "metric of --early-stopping, --lr-schedule plateau", choices=MONITORS)
    _option(
        g,
        "--min-delta",
        "smallest change of --monitor that is an improvement",
        type=non_negative_float,
        metavar="D",
    )
    g.add_argument(
        "--lr-schedule",
        choices=sorted(SCHEDULES),
        help="step: --lr times --lr-gamma every --lr-step-size epochs; cosine: from --lr down "
        "to --lr-min over --lr-decay-epochs; plateau: times --lr-gamma after --lr-patience "
        "epochs without improvement of --monitor (needs --val-split) (default: constant --lr)",
    )
    _option(g, "--lr-step-size", "step: epochs between decays", type=positive_int, metavar="N")
    _option(g, "--lr-gamma", "step, plateau: factor of each decay", type=fraction, metavar="G")
    _option(
        g,
        "--lr-min",
        "cosine: final rate; plateau: lowest rate",
        type=non_negative_float,
        metavar="LR",
    )
    _option(
        g, "--lr-patience", "plateau: epochs without improvement", type=positive_int, metavar="N"
    )
    g.add_argument(
        "--lr-decay-epochs",
        type=positive_int,
        metavar="N",
        help="cosine: epochs from --lr down to --lr-min (default: --epochs of the first run)",
    )
    g.add_argument(
        "--tensorboard",
        action="store_true",
        default=None,
        help="also write TensorBoard event files to OUT/tensorboard (needs tensorboardX)",
    )


def run(args: argparse.Namespace) -> int:
    if args.compile:  # before a folder is made or data loaded (a resume: its Trainer checks)
        check_backend(resolve_device(args.device, args.backend))
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
        compile=args.compile,
    )
    keep_freed_memory()  # the steps reuse the heap's pages instead of faulting fresh ones in
    return run_training(config).status
