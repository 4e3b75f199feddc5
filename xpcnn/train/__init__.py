"""Training: the :class:`Trainer` and its parts (the split of Chainer's trainer).

* :mod:`.trainer` — the loop: epochs, steps, extension hooks, :meth:`Trainer.request_stop`;
* :mod:`.updater` — the step: :class:`StandardUpdater` (forward, backward, update);
* :mod:`.batches` — :class:`BatchIterator`, epochs of shuffled index batches;
* :mod:`.augment` — :class:`Augment`, random crops and flips of each batch on the device;
* :mod:`.extensions` — evaluation, divergence check, progress bar, epoch line,
  checkpoints (rank-0-only side effects are marked ``rank0_only``);
* :mod:`.split` — the seeded validation split (``Trainer(val_split=...)``);
* :mod:`.monitor` — :class:`EarlyStopping` on a validation metric;
* :mod:`.schedules` — learning-rate schedules (step, cosine, on a plateau);
* :mod:`.logs` — ``history.csv`` and TensorBoard event files, one row per epoch;
* :mod:`.state` — a run's state in a checkpoint (save, check, restore) and
  :func:`load_network`;
* :mod:`.stopping` — early stops: requests, SIGINT and SIGTERM after a whole step;
* :mod:`.comm` — the :class:`Communicator` protocol and the default :class:`SingleProcess`;
* :mod:`.parallel` — what a data-parallel run adds (:class:`DataParallelUpdater`,
  the start-of-training broadcast, sharded evaluation, :func:`rank_seed`), on any
  communicator; MPI itself is ``xpcnn.distributed``, which this package never imports.
"""

from ..inputs import as_input
from ..metrics import predict_labels
from .augment import Augment, check_augment, crop_flip
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
from .logs import CSVLog, TensorBoardLog, epoch_rows
from .monitor import EarlyStopping, Monitor
from .parallel import DataParallelUpdater, rank_seed
from .schedules import SCHEDULES, CosineLR, LRSchedule, ReduceLROnPlateau, StepLR
from .split import validation_split
from .state import load_network, load_network_with_meta
from .stopping import StopRequest
from .trainer import HISTORY_FIELDS, Trainer, TrainingDiverged, TrainingInterrupted
from .updater import StandardUpdater, Updater

__all__ = [
    "HISTORY_FIELDS",
    "SCHEDULES",
    "Augment",
    "Batch",
    "BatchIterator",
    "CSVLog",
    "Checkpoint",
    "Communicator",
    "CosineLR",
    "DataParallelUpdater",
    "DivergenceCheck",
    "EarlyStopping",
    "EpochEndCallback",
    "EpochLog",
    "Evaluate",
    "Extension",
    "LRSchedule",
    "Monitor",
    "ProgressBar",
    "ReduceLROnPlateau",
    "SingleProcess",
    "StandardUpdater",
    "StepLR",
    "StopRequest",
    "TensorBoardLog",
    "Trainer",
    "TrainerView",
    "TrainingDiverged",
    "TrainingInterrupted",
    "Updater",
    "as_input",
    "check_augment",
    "crop_flip",
    "epoch_rows",
    "load_network",
    "load_network_with_meta",
    "predict_labels",
    "rank_seed",
    "validation_split",
]
