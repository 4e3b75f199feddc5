"""The book's SimpleConvNet (chapter 7.5): conv - relu - pool - affine - relu - affine - softmax."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..backend import Device
from ._options import merge_options
from .builder import NetBuilder
from .sequential import Sequential

__all__ = ["SimpleConvNet"]

_DEFAULT_CONV = {"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1}


class SimpleConvNet(Sequential):
    """SimpleConvNet with the book's constructor and defaults.

    Parameters
    ----------
    input_dim : (C, H, W), default (1, 28, 28)
    conv_param : dict with ``filter_num``, ``filter_size``, ``pad``, ``stride``
    hidden_size, output_size : int
    weight_init_std : float or "std" / "he" / "xavier" (the book: 0.01)
    dtype : "float32" (default) or "float64"
    device : "cpu", "cuda", "cuda:N" or a :class:`~xpcnn.backend.Device`
    backend : "numpy", "cupy", "torch", "jax" or "array-api-strict" (default: NumPy
        for the CPU, CuPy for CUDA); see :func:`~xpcnn.backend.resolve_device`
    seed : int or numpy Generator for the initial weights

    Parameters are named ``W1, b1`` (convolution), ``W2, b2``, ``W3, b3``
    (affine) as in the book. Pooling is 2x2 with stride 2. On 3x32x32 images
    (CIFAR-10) the book's geometry fits as it is: 28x28 maps, pooled to 14x14.
    """

    def __init__(
        self,
        input_dim: Sequence[int] = (1, 28, 28),
        conv_param: Mapping[str, int] | None = None,
        hidden_size: int = 100,
        output_size: int = 10,
        weight_init_std: float | str = 0.01,
        *,
        dtype: str = "float32",
        device: str | Device = "cpu",
        backend: str | None = None,
        seed: Any = None,
    ) -> None:
        conv = merge_options("conv_param", _DEFAULT_CONV, conv_param, int)
        b = NetBuilder(
            input_dim,
            weight_init=weight_init_std,
            seed=seed,
            dtype=dtype,
            device=device,
            backend=backend,
        )
        b.conv(conv["filter_num"], conv["filter_size"], conv["stride"], conv["pad"]).relu()
        b.pool(2, stride=2).affine(hidden_size).relu().affine(output_size)
        config = {
            "model": "simple",
            "input_dim": list(b.input_dim),
            "conv_param": conv,
            "hidden_size": hidden_size,
            "output_size": output_size,
            "weight_init_std": weight_init_std,
            "dtype": dtype,
        }
        super().__init__(b.layers, b.input_dim, config=config)
