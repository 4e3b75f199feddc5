"""Training: the :class:`Trainer` and its parts.

* :mod:`.batches` — :class:`BatchIterator`, epochs of shuffled index batches;
* :mod:`.comm` — the :class:`Communicator` protocol of a data-parallel run and
  the default :class:`SingleProcess`;
* :mod:`.extensions` — evaluation, divergence check, progress bar, epoch line,
  checkpoints (rank-0-only side effects are marked ``rank0_only``);
* :mod:`.trainer` — the loop and the step, with the gradient reduction hook
  :meth:`Trainer.reduce_gradients` between gradient and update.
"""

from ..inputs import as_input
from ..metrics import predict_labels
from .batches import Batch, BatchIterator
from .comm import Communicator, SingleProcess
from .extensions import (
    Checkpoint,
    DivergenceCheck,
    EpochEndCallback,
    EpochLog,
    Evaluate,
    Extension,
    ProgressBar,
    TrainerView,
)
from .trainer import HISTORY_FIELDS, Trainer, TrainingDiverged, TrainingInterrupted, load_network

__all__ = [
    "HISTORY_FIELDS",
    "Batch",
    "BatchIterator",
    "Checkpoint",
    "Communicator",
    "DivergenceCheck",
    "EpochEndCallback",
    "EpochLog",
    "Evaluate",
    "Extension",
    "ProgressBar",
    "SingleProcess",
    "Trainer",
    "TrainerView",
    "TrainingDiverged",
    "TrainingInterrupted",
    "as_input",
    "load_network",
    "predict_labels",
]
