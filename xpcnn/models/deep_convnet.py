"""The book's DeepConvNet (chapter 8.1): six 3x3 convolutions in three blocks,
then affine - relu - dropout - affine - dropout, with He initialisation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..backend import Device
from ._options import merge_options
from .builder import NetBuilder
from .sequential import Sequential

__all__ = ["DeepConvNet"]

#: The book's ``conv_param_1`` .. ``conv_param_6`` (the 4th convolution pads by 2, so
#: 28 -> 28 -> 14 -> 14 -> 16 -> 8 -> 8 -> 4 and the last pool flattens to 64*4*4).
BOOK_CONV_PARAMS: tuple[dict[str, int], ...] = (
    {"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 32, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 32, "filter_size": 3, "pad": 2, "stride": 1},
    {"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1},
)


class DeepConvNet(Sequential):
    """DeepConvNet with the book's constructor and defaults (about 99% on MNIST).

    ``conv - relu - conv - relu - pool`` three times (16, 32, 64 filters), then
    ``affine(hidden_size) - relu - dropout - affine(output_size) - dropout`` and
    softmax. Pooling is 2x2 with stride 2.

    Parameters
    ----------
    input_dim : (C, H, W), default (1, 28, 28)
    conv_param_1 .. conv_param_6 : dicts with ``filter_num``, ``filter_size``, ``pad``,
        ``stride``; given keys override the book's values (:data:`BOOK_CONV_PARAMS`)
    hidden_size, output_size : int (the book: 50, 10)
    dropout_ratio : float, both dropout layers (the book: 0.5; 0 disables them,
        e.g. for gradient checks)
    weight_init_std : float or "he" (the book's choice) / "xavier" / "std"
    dtype, device, backend, seed : as for :class:`~xpcnn.models.SimpleConvNet`; ``seed``
        also fixes the dropout masks
    shape_only : build without drawing weights (see :class:`NetBuilder`)

    Parameters are named ``W1 .. W6`` (convolutions), ``W7, W8`` (affine), as in the book.

    On 3x32x32 images (CIFAR-10) the book's geometry does not divide evenly: the maps
    go 32 -> 16 -> 18 (the fourth convolution pads by 2) -> 9, and the last 2x2 pooling
    of the 9x9 maps drops their ninth row and column (the output size rounds down, as
    in PyTorch), leaving 64x4x4 as on MNIST. It is built so, unchanged; pass
    ``conv_param_4={"pad": 1}`` for 32 -> 16 -> 16 -> 8 -> 4 with nothing dropped.
    """

    def __init__(
        self,
        input_dim: Sequence[int] = (1, 28, 28),
        conv_param_1: Mapping[str, int] | None = None,
        conv_param_2: Mapping[str, int] | None = None,
        conv_param_3: Mapping[str, int] | None = None,
        conv_param_4: Mapping[str, int] | None = None,
        conv_param_5: Mapping[str, int] | None = None,
        conv_param_6: Mapping[str, int] | None = None,
        hidden_size: int = 50,
        output_size: int = 10,
        dropout_ratio: float = 0.5,
        weight_init_std: float | str = "he",
        *,
        dtype: str = "float32",
        device: str | Device = "cpu",
        backend: str | None = None,
        seed: Any = None,
        shape_only: bool = False,
    ) -> None:
        given = (conv_param_1, conv_param_2, conv_param_3, conv_param_4, conv_param_5, conv_param_6)
        convs = [
            merge_options(f"conv_param_{i}", d, g, int)
            for i, (d, g) in enumerate(zip(BOOK_CONV_PARAMS, given, strict=True), start=1)
        ]
        b = NetBuilder(
            input_dim,
            weight_init=weight_init_std,
            seed=seed,
            dtype=dtype,
            device=device,
            backend=backend,
            shape_only=shape_only,
        )
        for block in range(3):
            for p in convs[2 * block : 2 * block + 2]:
                b.conv(p["filter_num"], p["filter_size"], p["stride"], p["pad"]).relu()
            b.pool(2, stride=2)
        b.affine(hidden_size).relu().dropout(dropout_ratio)
        b.affine(output_size).dropout(dropout_ratio)
        config: dict[str, Any] = {"model": "deep", "input_dim": list(b.input_dim)}
        config.update({f"conv_param_{i}": p for i, p in enumerate(convs, start=1)})
        config.update(
            {
                "hidden_size": int(hidden_size),
                "output_size": int(output_size),
                "dropout_ratio": float(dropout_ratio),
                "weight_init_std": weight_init_std,
                "dtype": dtype,
            }
        )
        super().__init__(b.layers, b.input_dim, config=config)
