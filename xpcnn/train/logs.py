"""Per-epoch logs beside ``history.json``: a CSV file (:class:`CSVLog`) and TensorBoard
event files (:class:`TensorBoardLog`, through the optional tensorboardX). Both write
one row per epoch from :func:`epoch_rows`, on rank 0 alone.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._atomic import atomic_write
from ..errors import XpcnnError
from .extensions import Extension, TrainerView

__all__ = ["COLUMNS", "CSVLog", "TensorBoardLog", "epoch_rows"]

#: The columns of :func:`epoch_rows`, in order; ``train_loss`` is the mean of the
#: epoch's step losses, the others are the history's per-epoch values.
COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_acc",
    "epoch_seconds",
    "images_per_sec",
)
_PER_EPOCH = ("lr", *COLUMNS[3:])


def epoch_rows(history: Mapping[str, Any], steps_per_epoch: int) -> list[dict[str, float]]:
    """One dict per completed epoch (``len(history["epoch_seconds"])``), keyed by the
    :data:`COLUMNS` that have values: ``epoch`` from 1, the mean step loss, and each
    per-epoch field (a field recorded only from some epoch on, e.g. after a resume of
    an older checkpoint, belongs to the last epochs)."""
    n = len(history.get("epoch_seconds", []))
    losses = history.get("train_loss", [])
    rows: list[dict[str, float]] = [{"epoch": e + 1} for e in range(n)]
    for e, row in enumerate(rows):
        step = losses[e * steps_per_epoch : (e + 1) * steps_per_epoch]
        if len(step) == steps_per_epoch:
            row["train_loss"] = sum(step) / steps_per_epoch
        for key in _PER_EPOCH:
            values = history.get(key) or []
            late = n - len(values)  # epochs before the field was recorded
            if e >= late:
                row[key] = values[e - late]
    return [{k: row[k] for k in COLUMNS if k in row} for row in rows]


class CSVLog(Extension):
    """``path`` rewritten after each epoch (atomically) with a header and one row per
    epoch so far (:func:`epoch_rows`): a resumed run's file is whole and in order."""

    rank0_only = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def on_epoch_end(self, trainer: TrainerView) -> None:
        rows = epoch_rows(trainer.history(), trainer.steps_per_epoch)
        present = {k for row in rows for k in row}
        text = io.StringIO()
        writer = csv.DictWriter(text, [k for k in COLUMNS if k in present], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)  # a column missing from a row stays empty
        with atomic_write(self.path) as f:
            f.write(text.getvalue().encode())


#: TensorBoard's tags: sections group the train, validation and test curves.
_TAGS = {
    "lr": "lr",
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "test_acc": "accuracy/test",
    "epoch_seconds": "time/epoch_seconds",
    "images_per_sec": "time/images_per_sec",
}


class TensorBoardLog(Extension):
    """TensorBoard event files in ``logdir``: each epoch's row of :func:`epoch_rows`
    as scalars at step ``epoch``. A resumed run adds a file; events of epochs after
    the checkpoint (from a run that was stopped) are hidden (tensorboardX's
    ``purge_step``). Needs ``tensorboardX`` (not torch or TensorFlow); without it the
    constructor raises an :class:`~xpcnn.errors.XpcnnError` that says how to install it."""

    rank0_only = True

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise XpcnnError(
                "TensorBoard logs need tensorboardX: pip install tensorboardX "
                '(or pip install ".[tensorboard]" from a clone of xpcnn)'
            ) from None
        self.logdir, self._writer_class = Path(logdir), SummaryWriter
        self.writer: Any = None

    def on_train_begin(self, trainer: TrainerView) -> None:
        purge = trainer.epoch + 1 if trainer.epoch else None
        # File names hold the second of their start: a resume within it must not replace one.
        unique = f".{os.getpid()}.{time.monotonic_ns()}"
        self.writer = self._writer_class(
            logdir=str(self.logdir), purge_step=purge, filename_suffix=unique
        )

    def on_epoch_end(self, trainer: TrainerView) -> None:
        row = epoch_rows(trainer.history(), trainer.steps_per_epoch)[-1]
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key in _TAGS:
                self.writer.add_scalar(_TAGS[key], value, epoch)
        self.writer.flush()  # visible now, not after flush_secs

    def on_train_end(self, trainer: TrainerView) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
