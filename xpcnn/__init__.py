"""xpcnn: the convolutional networks of "Deep Learning from Scratch" (ch. 7),
written once against the Python array API standard, run on NumPy or CuPy.

>>> from xpcnn import SimpleConvNet, Trainer
>>> from xpcnn.data import load_dataset
"""

from __future__ import annotations

import os
from pathlib import Path

from .backend import Device, DeviceError, cpu_threads, resolve_device, to_numpy
from .models import NetBuilder, Sequential, SimpleConvNet, build_model
from .train import Trainer
from .train import load_network as _load_network

__version__ = "0.1.0"


def load_network(path: str | os.PathLike[str], device: str | Device = "cpu") -> Sequential:
    """The network of a checkpoint (``xpcnn train``, :meth:`Trainer.save_checkpoint` or
    :meth:`Sequential.save_params` of a named network), rebuilt and loaded on ``device``
    (``"cpu"``, ``"cuda"``, ``"cuda:N"``). Raises :class:`xpcnn.checkpoint.CheckpointError`
    for a damaged file. ``xpcnn.train.load_network`` also returns the file's metadata.
    """
    return _load_network(Path(path), device)[0]


__all__ = [
    "Device",
    "DeviceError",
    "NetBuilder",
    "Sequential",
    "SimpleConvNet",
    "Trainer",
    "__version__",
    "build_model",
    "cpu_threads",
    "load_network",
    "resolve_device",
    "to_numpy",
]
