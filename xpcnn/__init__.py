"""xpcnn: the convolutional networks of "Deep Learning from Scratch" (ch. 7),
written once against the Python array API standard, run on NumPy or CuPy.

>>> from xpcnn import SimpleConvNet, Trainer
>>> from xpcnn.data import load_dataset
"""

from .backend import Device, DeviceError, resolve_device, to_numpy
from .models import NetBuilder, Sequential, SimpleConvNet, build_model
from .train import Trainer

__version__ = "0.1.0"

__all__ = [
    "Device",
    "DeviceError",
    "NetBuilder",
    "Sequential",
    "SimpleConvNet",
    "Trainer",
    "__version__",
    "build_model",
    "resolve_device",
    "to_numpy",
]
