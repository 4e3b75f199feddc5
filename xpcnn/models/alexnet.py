"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012), single-tower, as in chapter 7.7:
five convolutions with ReLU, local response normalisation and overlapping max
pooling, then three fully connected layers with dropout."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..backend import Device
from ._options import merge_options
from .builder import NetBuilder
from .sequential import Sequential

__all__ = ["AlexNet"]

_CONV1 = {"filter_size": 11, "stride": 4, "pad": 0}
_LRN = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}

#: ``AlexNet.small``'s defaults: a 5x5 stride-1 first convolution so that 28x28 or
#: 32x32 inputs survive three 3x3/2 poolings, and about 1/6 of the channels.
SMALL = {
    "conv_channels": [16, 32, 48, 48, 32],
    "conv1_param": {"filter_size": 5, "stride": 1, "pad": 2},
    "hidden_size": 128,
}


def _wants_small(input_dim: Sequence[int]) -> bool:
    """The small-input rule: images under 64x64 pixels get :meth:`AlexNet.small`."""
    return len(input_dim) == 3 and min(input_dim[1:]) < 64


class AlexNet(Sequential):
    """AlexNet on one device (the paper split it over two GPUs).

    ``conv11x11/4(96) - relu - lrn - maxpool3/2 - conv5x5 pad 2(256) - relu - lrn -
    maxpool3/2 - conv3x3(384) - relu - conv3x3(384) - relu - conv3x3(256) - relu -
    maxpool3/2 - affine(4096) - relu - dropout - affine(4096) - relu - dropout -
    affine(1000)`` and softmax; the 3x3 convolutions pad by 1. For a 3x227x227 input
    the last pool gives 256x6x6 and the network has 62,378,344 parameters.

    Parameters
    ----------
    input_dim : (C, H, W), default (3, 227, 227)
    conv_channels : filters of the five convolutions, default (96, 256, 384, 384, 256)
    conv1_param : dict ``filter_size``, ``stride``, ``pad`` of the first convolution
        (11, 4, 0)
    hidden_size, output_size : int (4096, 1000)
    dropout_ratio : float (0.5; 0 disables dropout)
    lrn_param : dict ``size``, ``alpha``, ``beta``, ``k`` (5, 1e-4, 0.75, 2)
    weight_init_std : float or "he" (default) / "xavier" / "std"
    dtype, device, backend, seed : as for :class:`~xpcnn.models.SimpleConvNet`
    shape_only : build without drawing weights (see :class:`NetBuilder`): the full
        configuration's summary and shapes without allocating its 250 MB of float32.

    :meth:`small` gives a reduced configuration that trains on 28x28 or 32x32 inputs.
    """

    def __init__(
        self,
        input_dim: Sequence[int] = (3, 227, 227),
        conv_channels: Sequence[int] = (96, 256, 384, 384, 256),
        conv1_param: Mapping[str, int] | None = None,
        hidden_size: int = 4096,
        output_size: int = 1000,
        dropout_ratio: float = 0.5,
        lrn_param: Mapping[str, float] | None = None,
        weight_init_std: float | str = "he",
        *,
        dtype: str = "float32",
        device: str | Device = "cpu",
        backend: str | None = None,
        seed: Any = None,
        shape_only: bool = False,
    ) -> None:
        channels = [int(c) for c in conv_channels]
        if len(channels) != 5:
            raise ValueError(f"AlexNet has five convolutions: got conv_channels={channels}")
        conv1 = merge_options("conv1_param", _CONV1, conv1_param, int)
        lrn = merge_options("lrn_param", _LRN, lrn_param, float)
        lrn["size"] = int(lrn["size"])
        b = NetBuilder(
            input_dim,
            weight_init=weight_init_std,
            seed=seed,
            dtype=dtype,
            device=device,
            backend=backend,
            shape_only=shape_only,
        )
        b.conv(channels[0], conv1["filter_size"], conv1["stride"], conv1["pad"]).relu()
        b.lrn(**lrn).pool(3, stride=2)
        b.conv(channels[1], 5, pad=2).relu().lrn(**lrn).pool(3, stride=2)
        for c in channels[2:]:
            b.conv(c, 3, pad=1).relu()
        b.pool(3, stride=2)
        for _ in range(2):
            b.affine(hidden_size).relu().dropout(dropout_ratio)
        b.affine(output_size)
        config = {
            "model": "alexnet",
            "input_dim": list(b.input_dim),
            "conv_channels": channels,
            "conv1_param": conv1,
            "hidden_size": int(hidden_size),
            "output_size": int(output_size),
            "dropout_ratio": float(dropout_ratio),
            "lrn_param": lrn,
            "weight_init_std": weight_init_std,
            "dtype": dtype,
        }
        super().__init__(b.layers, b.input_dim, config=config)

    @classmethod
    def for_input(cls, input_dim: Sequence[int], **kwargs: Any) -> AlexNet:
        """AlexNet for inputs of ``input_dim``: the full configuration, or :meth:`small`
        for images under 64x64 pixels (the full one is made for 227x227)."""
        factory = cls.small if _wants_small(input_dim) else cls
        return factory(input_dim=input_dim, **kwargs)

    @classmethod
    def _build_hint(cls, input_dim: Sequence[int]) -> str:
        if _wants_small(input_dim):
            return f"{cls.__name__}.small(input_dim={tuple(input_dim)})"
        return super()._build_hint(input_dim)

    @classmethod
    def small(
        cls, input_dim: Sequence[int] = (1, 28, 28), output_size: int = 10, **kwargs: Any
    ) -> AlexNet:
        """A reduced AlexNet for 28x28 / 32x32 inputs (MNIST, CIFAR-10): the same
        layer pattern with :data:`SMALL`'s channels, first convolution and hidden
        size; any constructor argument may override them. On 3x32x32 the maps go
        32 -> 15 -> 7 -> 3 through the three 3x3/2 poolings (28x28: 28 -> 13 -> 6 -> 2)."""
        args = {**SMALL, **kwargs}
        return cls(input_dim, output_size=output_size, **args)
