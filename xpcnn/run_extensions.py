"""The options of ``xpcnn train`` beyond the book's loop, for :mod:`xpcnn.run`: the
validation split, early stopping, learning-rate schedules, per-epoch logs and
augmentation.

Here are their defaults, the checks made before anything is written (an option that
needs a validation split, or that applies to none of the chosen features, a flip of
digits, a half-precision training dtype: each refused in one line), the extensions
built from them, and putting the best epoch's weights back at the end of an
early-stopped run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint
from .errors import RunError, XpcnnError
from .train import (
    CosineLR,
    CSVLog,
    EarlyStopping,
    Extension,
    ReduceLROnPlateau,
    StepLR,
    TensorBoardLog,
    Trainer,
    check_augment,
)

__all__ = [
    "EXTENSION_DEFAULTS",
    "RESUMED_EXTENSION_OPTIONS",
    "describe_extensions",
    "make_extensions",
    "resolve_extension_options",
    "restore_best",
]

#: Defaults of the options (None: off, or for ``lr_decay_epochs`` the run's epochs).
EXTENSION_DEFAULTS: dict[str, Any] = {
    "val_split": None,
    "test_each_epoch": False,
    "early_stopping": None,
    "monitor": "val_acc",
    "min_delta": 0.0,
    "lr_schedule": None,
    "lr_step_size": 10,
    "lr_gamma": 0.1,
    "lr_min": 0.0,
    "lr_patience": 3,
    "lr_decay_epochs": None,
    "tensorboard": False,
    "augment": None,
}
#: What a resumed run keeps (the split, the stopping rule, the schedule, the
#: augmentation): giving another value is refused. The logs and ``test_each_epoch`` may change.
RESUMED_EXTENSION_OPTIONS = tuple(
    k for k in EXTENSION_DEFAULTS if k not in ("test_each_epoch", "tensorboard")
)

# The features an option serves: given for none of the chosen ones, it is refused.
_SERVES = {
    "monitor": ("early_stopping", "plateau"),
    "min_delta": ("early_stopping", "plateau"),
    "lr_step_size": ("step",),
    "lr_gamma": ("step", "plateau"),
    "lr_min": ("cosine", "plateau"),
    "lr_patience": ("plateau",),
    "lr_decay_epochs": ("cosine",),
}
_FLAGS = {"early_stopping": "--early-stopping"} | {
    s: f"--lr-schedule {s}" for s in ("step", "cosine", "plateau")
}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def resolve_extension_options(cfg: dict[str, Any], given: Mapping[str, Any]) -> None:
    """Check the resolved options ``cfg`` (and those ``given``) before anything is
    written, and fill ``lr_decay_epochs`` (cosine: the run's epochs). Raises a
    :class:`~xpcnn.errors.RunError` (status 2, raised on every rank) naming the fix;
    the values themselves are checked by the extensions' constructors, called here once."""
    chosen = {cfg["lr_schedule"]} - {None}
    if cfg["early_stopping"] is not None:
        chosen.add("early_stopping")
    for key, serves in _SERVES.items():
        if key in given and not chosen.intersection(serves):
            users = " or ".join(_FLAGS[s] for s in serves)
            raise RunError(
                f"{_flag(key)} applies to {users} only: add it, or drop {_flag(key)}",
                collective=True,
            )
    for feature in sorted(chosen & {"early_stopping", "plateau"}):
        if cfg["val_split"] is None:
            raise RunError(
                f"{_FLAGS[feature]} monitors a validation metric ({cfg['monitor']}): add "
                "--val-split F (e.g. --val-split 0.1); the test set is not used to choose",
                collective=True,
            )
    if cfg["lr_schedule"] in ("cosine", "plateau") and cfg["lr_min"] >= cfg["lr"]:
        raise RunError(
            f"--lr-min {cfg['lr_min']:g} must be below --lr {cfg['lr']:g}", collective=True
        )
    if cfg["lr_schedule"] == "cosine" and cfg["lr_decay_epochs"] is None:
        cfg["lr_decay_epochs"] = cfg["epochs"]
    if (dtype := cfg["dtype"]) not in ("float32", "float64"):
        raise RunError(
            f"--dtype {dtype}: training runs in float32 or float64; {dtype} is for "
            f"inference: train in float32, then xpcnn evaluate/predict --dtype {dtype}",
            collective=True,
        )
    try:
        check_augment(cfg["augment"] or (), cfg["dataset"])  # no flip of digits
        make_extensions(cfg, Path(), {})
    except XpcnnError as exc:  # a value out of range, no tensorboardX
        raise RunError(str(exc), collective=True) from None


def make_extensions(cfg: Mapping[str, Any], out: Path, extra: Mapping[str, Any]) -> list[Extension]:
    """The schedule, early stopping (``out/best.npz``, with ``extra`` metadata), the
    CSV log (``out/history.csv``) and TensorBoard (``out/tensorboard``) that ``cfg``
    asks for, in the order the trainer must call them: a schedule's state and the
    best value are up to date when the checkpoints are written."""
    exts: list[Extension] = []
    schedule = cfg["lr_schedule"]
    if schedule == "step":
        exts.append(StepLR(cfg["lr_step_size"], cfg["lr_gamma"]))
    elif schedule == "cosine":
        exts.append(CosineLR(cfg["lr_decay_epochs"] or cfg["epochs"], cfg["lr_min"]))
    elif schedule == "plateau":
        exts.append(
            ReduceLROnPlateau(
                cfg["monitor"], cfg["lr_patience"], cfg["lr_gamma"], cfg["lr_min"], cfg["min_delta"]
            )
        )
    if cfg["early_stopping"] is not None:
        exts.append(
            EarlyStopping(
                cfg["early_stopping"], cfg["monitor"], cfg["min_delta"], out / "best.npz", extra
            )
        )
    exts.append(CSVLog(out / "history.csv"))
    if cfg["tensorboard"]:
        exts.append(TensorBoardLog(out / "tensorboard"))
    return exts


def describe_extensions(cfg: Mapping[str, Any], out: Path) -> str:
    """One line on the schedule, early stopping, TensorBoard and augmentation ("" for none)."""
    parts = []
    monitor, schedule = cfg["monitor"], cfg["lr_schedule"]
    if schedule == "step":
        parts.append(f"lr x{cfg['lr_gamma']:g} every {cfg['lr_step_size']} epochs")
    elif schedule == "cosine":
        parts.append(f"lr cosine to {cfg['lr_min']:g} over {cfg['lr_decay_epochs']} epochs")
    elif schedule == "plateau":
        parts.append(
            f"lr x{cfg['lr_gamma']:g} (down to {cfg['lr_min']:g}) after {cfg['lr_patience']} "
            f"epochs without {monitor} improvement"
        )
    if cfg["early_stopping"] is not None:
        n = cfg["early_stopping"]
        parts.append(
            f"early stopping after {n} epoch{'' if n == 1 else 's'} without {monitor} improvement"
        )
    if cfg["tensorboard"]:
        parts.append(f"TensorBoard logs in {out / 'tensorboard'}")
    if cfg["augment"]:
        parts.append(f"augment {cfg['augment']}")
    return "; ".join(parts)


def restore_best(trainer: Trainer, extensions: Sequence[Extension]) -> int | None:
    """The best epoch of the run's :class:`~xpcnn.train.EarlyStopping` (None without
    one), with its weights put back into the network on every rank when the network
    holds another epoch's (rank 0 reads ``best.npz``, then broadcasts). Save the last
    epoch's checkpoint first. A collective in a data-parallel run."""
    early = next((e for e in extensions if isinstance(e, EarlyStopping)), None)
    if early is None or early.path is None:
        return None
    comm = trainer.comm
    best = comm.bcast_object(early.monitor.best_epoch if comm.rank == 0 else 0)
    if not best:
        return None
    if best != trainer.epoch or trainer.step_in_epoch:
        if comm.rank == 0:
            arrays, _ = load_checkpoint(early.path)
            trainer.network.load_state_dict(arrays)
        trainer.broadcast_state()
    return int(best)
