"""xpcnn: the convolutional networks of "Deep Learning from Scratch" (ch. 7),
written once against the Python array API standard, run on NumPy, CuPy, PyTorch,
JAX or array-api-strict arrays.

>>> from xpcnn import SimpleConvNet, Trainer
>>> from xpcnn.data import load_dataset
"""

from __future__ import annotations

from .backend import Device, DeviceError, cpu_threads, flush_subnormals, resolve_device, to_numpy
from .errors import XpcnnError
from .models import NetBuilder, Sequential, SimpleConvNet, build_model
from .pretrained import load_pretrained
from .train import Trainer, load_network, load_network_with_meta

__version__ = "0.1.0"

__all__ = [
    "Device",
    "DeviceError",
    "NetBuilder",
    "Sequential",
    "SimpleConvNet",
    "Trainer",
    "XpcnnError",
    "__version__",
    "build_model",
    "cpu_threads",
    "flush_subnormals",
    "load_network",
    "load_network_with_meta",
    "load_pretrained",
    "resolve_device",
    "to_numpy",
]
