"""Networks: :class:`Sequential`, the builder, and the book's named nets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..backend import Device
from .alexnet import AlexNet
from .builder import NetBuilder, init_std
from .deep_convnet import DeepConvNet
from .lenet import LeNet
from .sequential import Sequential
from .simple_convnet import SimpleConvNet

__all__ = [
    "MODELS",
    "AlexNet",
    "DeepConvNet",
    "LeNet",
    "NetBuilder",
    "Sequential",
    "SimpleConvNet",
    "build_model",
    "init_std",
]

#: Command-line names of the named networks.
MODELS: dict[str, Callable[..., Sequential]] = {
    "simple": SimpleConvNet,
    "deep": DeepConvNet,
    "lenet": LeNet,
    "alexnet": AlexNet,
}


def build_model(
    config: dict[str, Any],
    *,
    device: str | Device = "cpu",
    backend: str | None = None,
    seed: Any = None,
) -> Sequential:
    """Rebuild a named network from its ``config`` (as stored in checkpoints) on
    ``device`` of ``backend`` (:func:`~xpcnn.backend.resolve_device`)."""
    kwargs = dict(config)
    name = kwargs.pop("model", None)
    if name == "sequential":
        raise ValueError(
            "unknown model 'sequential': a network built with NetBuilder or Sequential cannot "
            "be rebuilt from its file; build the same network again and call net.load_params(path)"
        )
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {sorted(MODELS)}")
    return MODELS[name](**kwargs, device=device, backend=backend, seed=seed)
