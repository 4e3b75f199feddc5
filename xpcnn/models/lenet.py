"""LeNet-5 (LeCun et al., 1998), as drawn in chapter 7.7: convolution and
subsampling twice, then three fully connected layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..backend import Device
from .builder import NetBuilder
from .sequential import Sequential

__all__ = ["LeNet"]

_INIT_FOR = {"sigmoid": "xavier", "tanh": "xavier", "relu": "he"}


class LeNet(Sequential):
    """LeNet-5: ``conv5x5(6) - act - subsample - conv5x5(16) - act - subsample -
    affine(120) - act - affine(84) - act - affine(10)`` and softmax.

    "Subsampling" is 2x2 average pooling with stride 2 (the original's trainable
    coefficient and bias are left out); the activation follows every convolution
    and hidden affine layer.

    Parameters
    ----------
    input_dim : (C, H, W); the original takes 32x32 images (3x32x32, CIFAR-10: the
        original's geometry on three channels, 28 -> 14 -> 10 -> 5). A 28x28 input
        (MNIST) is padded by 2 in the first convolution, giving the same 28x28 feature maps.
    activation : "sigmoid" (default, like the original), "tanh" or "relu"
    conv_channels : filters of the two convolutions (6, 16)
    filter_size : int, 5
    hidden_sizes : the two hidden affine layers (120, 84)
    output_size : int, 10
    pad : padding of the first convolution; None: 2 for a 28x28 input, else 0
    pool : "avg" (subsampling, default) or "max"
    weight_init_std : float or "he" / "xavier" / "std"; None: "xavier" for sigmoid
        and tanh, "he" for relu
    dtype, device, backend, seed, shape_only : as for :class:`~xpcnn.models.DeepConvNet`

    Parameters are named ``W1, W2`` (convolutions), ``W3 .. W5`` (affine).
    """

    def __init__(
        self,
        input_dim: Sequence[int] = (1, 32, 32),
        activation: str = "sigmoid",
        conv_channels: Sequence[int] = (6, 16),
        filter_size: int = 5,
        hidden_sizes: Sequence[int] = (120, 84),
        output_size: int = 10,
        pad: int | None = None,
        pool: str = "avg",
        weight_init_std: float | str | None = None,
        *,
        dtype: str = "float32",
        device: str | Device = "cpu",
        backend: str | None = None,
        seed: Any = None,
        shape_only: bool = False,
    ) -> None:
        if activation not in _INIT_FOR:
            raise ValueError(f"unknown activation {activation!r}: use one of {sorted(_INIT_FOR)}")
        conv_channels = [int(c) for c in conv_channels]
        hidden_sizes = [int(h) for h in hidden_sizes]
        if len(conv_channels) != 2 or len(hidden_sizes) != 2:
            raise ValueError(
                f"LeNet has two convolutions and two hidden affine layers: got conv_channels="
                f"{conv_channels} and hidden_sizes={hidden_sizes}"
            )
        if pad is None:
            pad = 2 if tuple(input_dim)[1:] == (28, 28) else 0
        if weight_init_std is None:
            weight_init_std = _INIT_FOR[activation]
        b = NetBuilder(
            input_dim,
            weight_init=weight_init_std,
            seed=seed,
            dtype=dtype,
            device=device,
            backend=backend,
            shape_only=shape_only,
        )
        b.conv(conv_channels[0], filter_size, pad=pad).activation(activation)
        b.pool(2, stride=2, mode=pool)
        b.conv(conv_channels[1], filter_size).activation(activation)
        b.pool(2, stride=2, mode=pool)
        for h in hidden_sizes:
            b.affine(h).activation(activation)
        b.affine(output_size)
        config = {
            "model": "lenet",
            "input_dim": list(b.input_dim),
            "activation": activation,
            "conv_channels": conv_channels,
            "filter_size": int(filter_size),
            "hidden_sizes": hidden_sizes,
            "output_size": int(output_size),
            "pad": int(pad),
            "pool": pool,
            "weight_init_std": weight_init_std,
            "dtype": dtype,
        }
        super().__init__(b.layers, b.input_dim, config=config)
