"""``NetBuilder``: a :class:`~xpcnn.models.Sequential` built Lego-block by Lego-block,
with shape inference, and the weight initialisations it draws with."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..backend import Device, host_rng, resolve_device
from ..layers import (
    LRN,
    Affine,
    BatchNormalization,
    Convolution,
    Dropout,
    Layer,
    Pooling,
    Relu,
    Sigmoid,
    Tanh,
)
from .sequential import Sequential

__all__ = ["NetBuilder", "init_std"]

_FLOAT_DTYPES = ("float32", "float64")


def init_std(weight_init: float | str, fan_in: int) -> float:
    """Standard deviation of a weight initialisation.

    ``weight_init`` is a number (the std itself; the book's default is 0.01),
    ``"std"`` (0.01), ``"he"`` / ``"relu"`` (sqrt(2 / fan_in)) or
    ``"xavier"`` / ``"sigmoid"`` (sqrt(1 / fan_in)).
    """
    if isinstance(weight_init, str):
        name = weight_init.lower()
        if name == "std":
            return 0.01
        if name in ("he", "relu"):
            return math.sqrt(2.0 / fan_in)
        if name in ("xavier", "sigmoid"):
            return math.sqrt(1.0 / fan_in)
        raise ValueError(
            f"unknown weight_init {weight_init!r}: use a number, 'std', 'he' or 'xavier'"
        )
    if not weight_init > 0:
        raise ValueError(f"weight_init must be positive, got {weight_init!r}")
    return float(weight_init)


class NetBuilder:
    """Build a :class:`Sequential` block by block, inferring each layer's input shape.

    Weights are drawn from a seeded host ``numpy.random.Generator`` in float64,
    then cast to ``dtype`` and moved to ``device``: the same seed gives the same
    initial network on every backend.

    >>> net = (NetBuilder((1, 28, 28), seed=0)
    ...        .conv(30, 5).relu().pool(2, stride=2).affine(100).relu().affine(10).build())

    ``shape_only=True`` skips the weight draws: every W and b is a zero-stride
    broadcast of one zero (``xp.broadcast_to``), so a large network (AlexNet's 60M
    parameters) can be built for :meth:`Sequential.summary` and shape checks
    without allocating its weights. Such a network is not meant for training.
    """

    def __init__(
        self,
        input_dim: Sequence[int],
        *,
        weight_init: float | str = 0.01,
        seed: Any = None,
        dtype: str = "float32",
        device: str | Device = "cpu",
        backend: str | None = None,
        shape_only: bool = False,
    ) -> None:
        self.shape_only = bool(shape_only)
        if str(dtype) not in _FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {_FLOAT_DTYPES}, got {dtype!r}")
        self.input_dim = tuple(int(d) for d in input_dim)
        if not self.input_dim or min(self.input_dim) < 1:
            raise ValueError(f"input_dim must be positive sizes, got {tuple(input_dim)}")
        self.shape = self.input_dim
        self.weight_init = weight_init
        self.rng = host_rng(seed)
        self.dtype = str(dtype)
        self.device = resolve_device(device, backend)
        self.device.check_dtype(self.dtype)  # float64 on JAX needs x64
        self.layers: list[Layer] = []

    def _weights(self, shape: tuple[int, ...], fan_in: int, weight_init: Any) -> tuple[Any, Any]:
        """W drawn on the host (float64, then cast); b zeros of W's output size."""
        std = init_std(self.weight_init if weight_init is None else weight_init, fan_in)
        if self.shape_only:
            return self._broadcast_zeros(shape), self._broadcast_zeros(
                (shape[0] if len(shape) == 4 else shape[-1],)
            )
        W = self.device.asarray(std * self.rng.standard_normal(shape), self.dtype)
        xp = self.device.xp
        with self.device.activate():
            b = xp.zeros(
                shape[0] if len(shape) == 4 else shape[-1], dtype=W.dtype, device=self.device.device
            )
        return W, b

    def add(self, layer: Layer) -> NetBuilder:
        """Append a built layer, checking it accepts the current shape."""
        try:
            self.shape = tuple(layer.output_shape(self.shape))
        except ValueError as exc:
            raise ValueError(f"layer {len(self.layers)} ({layer!r}): {exc}") from None
        self.layers.append(layer)
        return self

    def conv(
        self,
        filter_num: int,
        filter_size: int | tuple[int, int],
        stride: int = 1,
        pad: int = 0,
        *,
        weight_init: Any = None,
    ) -> NetBuilder:
        """A Convolution with ``filter_num`` filters of ``filter_size`` over the current channels."""
        if len(self.shape) != 3:
            raise ValueError(
                f"conv needs an image-shaped input (C, H, W), the current shape is {self.shape}"
            )
        FH, FW = (filter_size, filter_size) if isinstance(filter_size, int) else filter_size
        C = self.shape[0]
        W, b = self._weights((filter_num, C, FH, FW), C * FH * FW, weight_init)
        return self.add(Convolution(W, b, stride=stride, pad=pad))

    def affine(self, units: int, *, weight_init: Any = None) -> NetBuilder:
        """An Affine layer to ``units`` outputs (flattening an image-shaped input)."""
        D = math.prod(self.shape)
        W, b = self._weights((D, units), D, weight_init)
        return self.add(Affine(W, b))

    def pool(
        self, pool_size: int = 2, stride: int | None = None, pad: int = 0, mode: str = "max"
    ) -> NetBuilder:
        """Square pooling; ``stride`` defaults to ``pool_size`` (non-overlapping)."""
        return self.add(Pooling(pool_size, pool_size, stride or pool_size, pad, mode))

    def relu(self) -> NetBuilder:
        return self.add(Relu())

    def sigmoid(self) -> NetBuilder:
        return self.add(Sigmoid())

    def tanh(self) -> NetBuilder:
        return self.add(Tanh())

    def activation(self, name: str) -> NetBuilder:
        """An activation layer by name: ``"relu"``, ``"sigmoid"`` or ``"tanh"``."""
        makers = {"relu": Relu, "sigmoid": Sigmoid, "tanh": Tanh}
        if name not in makers:
            raise ValueError(f"unknown activation {name!r}: use one of {sorted(makers)}")
        return self.add(makers[name]())

    def dropout(self, ratio: float = 0.5, *, seed: int | None = None) -> NetBuilder:
        """Inverted Dropout dropping ``ratio`` of the units in training.

        Without ``seed``, the mask seed is drawn from the builder's generator, so
        the network's seed also fixes its sequence of masks.
        """
        if seed is None:
            seed = int(self.rng.integers(2**31))
        return self.add(Dropout(ratio, seed=seed))

    def batchnorm(self, momentum: float = 0.9, *, eps: float = 1e-6) -> NetBuilder:
        """BatchNormalization over the current features (D,) or channels (C, H, W):
        gamma ones, beta zeros, running mean zeros, running variance ones."""
        if len(self.shape) not in (1, 3):
            raise ValueError(
                f"batchnorm needs a (D,) or (C, H, W) input, the current shape is {self.shape}"
            )
        C = self.shape[0]
        xp, dt = self.device.xp, getattr(self.device.xp, self.dtype)
        with self.device.activate():
            # four distinct arrays: an in-place update of gamma must not move running_var
            gamma = xp.ones((C,), dtype=dt, device=self.device.device)
            beta = xp.zeros((C,), dtype=dt, device=self.device.device)
            running_mean = xp.zeros((C,), dtype=dt, device=self.device.device)
            running_var = xp.ones((C,), dtype=dt, device=self.device.device)
        return self.add(
            BatchNormalization(gamma, beta, momentum, running_mean, running_var, eps=eps)
        )

    def lrn(
        self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0
    ) -> NetBuilder:
        """Local response normalisation across channels (AlexNet's defaults)."""
        return self.add(LRN(size, alpha, beta, k))

    def _broadcast_zeros(self, shape: tuple[int, ...]) -> Any:
        """A read-only, zero-stride array of ``shape`` (no allocation): for ``shape_only``."""
        xp = self.device.xp
        with self.device.activate():
            zero = xp.zeros((), dtype=getattr(xp, self.dtype), device=self.device.device)
        return xp.broadcast_to(zero, shape)

    def build(self, config: dict[str, Any] | None = None) -> Sequential:
        return Sequential(self.layers, self.input_dim, config=config)
