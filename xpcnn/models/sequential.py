"""``Sequential``: a stack of the book's layers ending in ``SoftmaxWithLoss``
(:class:`~xpcnn.models.NetBuilder` builds one block by block)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import MutableMapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, TypeGuard

from .. import ops
from .._numerical import numerical_gradient
from ..backend import Device, float_dtype, resolve_device, to_numpy
from ..layers import Convolution, Layer, Pooling, Relu, SoftmaxWithLoss
from ..metrics import accuracy
from ._inputs import network_input
from ._params import ParamView, index_by_name

__all__ = ["Sequential"]


class _ConvRelu:
    """A ``Convolution`` followed by a ``Relu``, run as one op
    (:meth:`~xpcnn.layers.Convolution.forward_relu`): a fast path applies the ReLU in
    the convolution's output write and its mask in the convolution's backward pass,
    with the same results. The gradients land in the convolution's ``grads``."""

    def __init__(self, conv: Convolution, relu: Relu) -> None:
        self.conv, self.relu = conv, relu

    def forward(self, x: Any, train_flg: bool = True) -> Any:
        return self.conv.forward_relu(x)

    def backward(self, dout: Any) -> Any:
        return self.conv.backward(dout)

    def clear_cache(self) -> None:
        self.conv.clear_cache()


class _ReluMaxPool:
    """A ``Relu`` followed by a max ``Pooling``, run as one op,
    :func:`xpcnn.ops.relu_max_pool2d_forward`: a fast path may run it as pooling
    then ReLU (ReLU on 1/(pool_h*pool_w) of the elements) with the same results,
    NaN included. The two layers keep their places in ``Sequential.layers``."""

    def __init__(self, relu: Relu, pool: Pooling) -> None:
        self.relu, self.pool = relu, pool
        self._cache: Any = None

    def forward(self, x: Any, train_flg: bool = True) -> Any:
        p = self.pool
        out, self._cache = ops.relu_max_pool2d_forward(x, p.pool_h, p.pool_w, p.stride, p.pad)
        return out

    def backward(self, dout: Any) -> Any:
        return self._cache.backward(dout)

    def clear_cache(self) -> None:
        self._cache = None


class _ConvReluMaxPool(_ConvRelu):
    """A ``Convolution``, a ``Relu`` and a max ``Pooling`` run as one op
    (:meth:`~xpcnn.layers.Convolution.forward_relu_max_pool`): the generic path computes
    a first layer's outputs grouped by pooling window, and every path's pooling knows
    that a ReLU's output holds no NaN. The gradients land in the convolution's ``grads``."""

    def __init__(self, conv: Convolution, relu: Relu, pool: Pooling) -> None:
        super().__init__(conv, relu)
        self.pool = pool

    def forward(self, x: Any, train_flg: bool = True) -> Any:
        p = self.pool
        return self.conv.forward_relu_max_pool(x, p.pool_h, p.pool_w, p.stride, p.pad)


def _is_max_pool(layer: Any) -> TypeGuard[Pooling]:
    return type(layer) is Pooling and layer.mode == "max"


def _fused(layers: list[Layer]) -> list[Any]:
    """The steps a forward pass runs: ``layers`` with each ``Convolution, Relu`` pair as
    one :class:`_ConvRelu` (with a max pooling after it, the three as one
    :class:`_ConvReluMaxPool`), and each remaining ``Relu, Pooling(mode="max")`` pair as
    one :class:`_ReluMaxPool`."""
    plan: list[Any] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        after = layers[i + 2] if i + 2 < len(layers) else None
        if type(layer) is Convolution and type(nxt) is Relu and _is_max_pool(after):
            plan.append(_ConvReluMaxPool(layer, nxt, after))
            i += 3
        elif type(layer) is Convolution and type(nxt) is Relu:
            plan.append(_ConvRelu(layer, nxt))
            i += 2
        elif type(layer) is Relu and _is_max_pool(nxt):
            plan.append(_ReluMaxPool(layer, nxt))
            i += 2
        else:
            plan.append(layer)
            i += 1
    return plan


class Sequential:
    """A feed-forward network: ``layers`` then a loss layer (``SoftmaxWithLoss``).

    Parameters
    ----------
    layers : sequence of Layer
        Built layers; their parameters must already live on one device.
    input_dim : tuple
        Shape of one input example, e.g. ``(1, 28, 28)``; used for shape checks
        and :meth:`summary`.
    config : dict, optional
        JSON-able description that rebuilds this network (``xpcnn.models.build_model``);
        checkpoints store it.

    Parameter names follow the book: ``W1, b1`` for the first layer with
    parameters, ``W2, b2`` for the second, and so on (``gamma2, beta2`` for a
    batch normalisation). Inputs are (N, *input_dim) or flat (N, D) arrays:
    integer pixels (0..255, scaled to [0, 1]) or floats (cast to the network's
    dtype), on the host or the network's device.
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        input_dim: Sequence[int],
        *,
        loss_layer: SoftmaxWithLoss | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.layers: list[Layer] = list(layers)
        if not self.layers:
            raise ValueError("Sequential needs at least one layer")
        self.last_layer = loss_layer if loss_layer is not None else SoftmaxWithLoss()
        self.input_dim = tuple(int(d) for d in input_dim)
        self.config = dict(config) if config is not None else {"model": "sequential"}
        self.output_shapes()  # fails early, naming the layer, if the shapes do not chain
        # The input gradient of the first layer is never used: skip its col2im.
        if hasattr(self.layers[0], "need_dx"):
            self.layers[0].need_dx = False
        self._plan: list[Any] = self.layers  # what the last forward pass ran (see predict)
        self._index, buffers = index_by_name(self.layers)
        self.params: MutableMapping[str, Any] = ParamView(self._index, "params")
        self.buffers: MutableMapping[str, Any] = ParamView(buffers, "buffers")
        first = next(iter(self.params.values()), None)
        self.device = Device.of(first) if first is not None else resolve_device("cpu")

    # -- the book's interface -------------------------------------------------
    def _input(self, x: Any) -> Any:
        """``x`` as this network's input (:func:`~xpcnn.models._inputs.network_input`)."""
        return network_input(self, x)

    @classmethod
    def for_input(cls, input_dim: Sequence[int], **kwargs: Any) -> Sequential:
        """A named network of this class for inputs of ``input_dim`` (one example's
        shape): ``cls(input_dim=input_dim, **kwargs)``, or the reduced form where the
        full configuration needs larger inputs (:meth:`AlexNet.for_input
        <xpcnn.models.AlexNet.for_input>`). A plain Sequential is built from its
        layers instead (:class:`~xpcnn.models.NetBuilder`)."""
        if cls is Sequential:
            raise TypeError(f"a Sequential is built from its layers: {cls._build_hint(input_dim)}")
        return cls(input_dim=input_dim, **kwargs)

    @classmethod
    def _build_hint(cls, input_dim: Sequence[int]) -> str:
        """The call that builds this kind of network for inputs of ``input_dim``
        (:meth:`for_input`'s choice), for error messages."""
        if cls is Sequential:
            return f"NetBuilder({tuple(input_dim)}, ...)"
        return f"{cls.__name__}(input_dim={tuple(input_dim)})"

    def predict(self, x: Any, train_flg: bool = False, *, keep_cache: bool = True) -> Any:
        """Scores (N, K) (logits, before the softmax) for inputs x.

        x : (N, *input_dim) or flat (N, D); uint8 pixels (scaled to [0, 1] as the
        Trainer does) or floats (cast to the network's dtype); host (NumPy) or on
        the network's device. ``train_flg`` switches dropout and batch
        normalisation to training behaviour.

        ``keep_cache=False`` drops each layer's saved arrays as soon as the next
        layer has run (no backward possible afterwards): pure inference then
        holds one layer's activations at a time.
        """
        x = self._input(x)
        # ReLU -> max pooling runs as one op (_ReluMaxPool), whatever the fast-path switch.
        self._plan = _fused(self.layers)
        with self.device.activate():  # CuPy allocates on the current GPU, not on device=
            for layer in self._plan:
                x = layer.forward(x, train_flg)
                if not keep_cache:
                    layer.clear_cache()
        return x

    def loss(self, x: Any, t: Any, train_flg: bool = True) -> Any:
        """Mean loss (0-d array, on the device) for inputs x (as for :meth:`predict`)
        and labels t ((N,) integers or (N, K) one-hot)."""
        return self.last_layer.forward(self.predict(x, train_flg), self.device.asarray(t))

    def accuracy(self, x: Any, t: Any, batch_size: int = 100) -> float:
        """Fraction of correctly classified examples, evaluated in batches."""
        return accuracy(self, x, t, batch_size)

    def gradient(self, x: Any, t: Any) -> dict[str, Any]:
        """Loss gradients by backpropagation, keyed like :attr:`params`; also
        leaves each layer's ``grads`` filled. x and t as for :meth:`loss`."""
        self.loss(x, t)
        with self.device.activate():
            dout = self.last_layer.backward(1.0)
            for layer in reversed(self._plan):  # the layers the forward pass ran, in reverse
                dout = layer.backward(dout)
        return {key: layer.grads[k] for key, (layer, k) in self._index.items()}

    def caches(self) -> list[Any]:
        """What the last forward pass left for the backward pass: the ``_cache`` of each
        step it ran (a layer, or a fused pair), of each layer and of the loss layer, None
        where there is none. A compiled step keeps the arrays in them
        (:mod:`xpcnn.train.compiled`)."""
        return [getattr(s, "_cache", None) for s in [*self._plan, *self.layers, self.last_layer]]

    def numerical_gradient(self, x: Any, t: Any, h: float = 1e-4) -> dict[str, Any]:
        """Central-difference gradients of the loss (the book's slow check):
        ``(L(p + h) - L(p - h)) / (2 h)`` for every parameter element.

        Two forward passes per parameter element: use tiny networks and float64
        (SimpleConvNet on MNIST-sized inputs takes minutes).

        The step ``h`` (the book's 1e-4) matters where the loss has kinks: when a
        ReLU input or a max-pooling near-tie lies within ``h`` of its switch, the
        two sides see different branches and the quotient is not the gradient,
        even in float64. On three MNIST images, the untrained book SimpleConvNet
        in float64 gave differences from :meth:`gradient` up to 1.4e-4 on W1 (2% of
        its largest entry) at h = 1e-4 and 4e-10 at h = 1e-6; on ten images through
        a network trained one epoch, a kink closer than 1e-6 left 1.3e-4 at both. Issue
        13 reports up to 0.1 at h = 1e-4. So check on few examples with a smaller
        ``h`` in float64; in float32 rounding error grows as 1/h (keep h >= 1e-3).
        """
        x, t = self._input(x), self.device.asarray(t)
        grads = {}
        for key in list(self.params):
            original = self.params[key]

            def loss(p: Any, key: str = key, dtype: Any = original.dtype) -> float:
                self.params[key] = self.device.asarray(p, dtype)  # p: float64 on the host
                return float(to_numpy(self.loss(x, t)))

            try:
                g = numerical_gradient(loss, to_numpy(original), h)
            finally:
                self.params[key] = original
            grads[key] = self.device.asarray(g, original.dtype)
        return grads

    # -- the book's save_params / load_params (npz, never pickle) --------------------
    def save_params(self, file_name: str | PathLike[str] = "params.npz") -> Path:
        """Write the parameters and buffers (host copies) and :attr:`config` to an
        ``.npz`` checkpoint, atomically (:func:`xpcnn.checkpoint.save_checkpoint`);
        returns the path. The book pickles; this file holds no objects."""
        from ..checkpoint import save_checkpoint

        return save_checkpoint(file_name, self.state_dict(), {"model": self.config})

    def load_params(self, file_name: str | PathLike[str] = "params.npz") -> None:
        """Load parameters and buffers written by :meth:`save_params` (or a training
        checkpoint) into this network, cast to its dtype and moved to its device.
        A file of another architecture is refused, naming the first mismatch."""
        from ..checkpoint import check_compatible, load_checkpoint

        arrays, _ = load_checkpoint(file_name)
        ours = {k: v for k, v in arrays.items() if k.startswith(("params/", "buffers/"))}
        check_compatible(self.state_shapes(), ours)
        self.load_state_dict(ours)

    def shuffle_seed(self) -> int:
        """A seed derived from the current parameters (SHA-256 of their bytes): the
        Trainer's default shuffling seed, so a seeded network trains the same way
        on every run (and every backend, which all draw the same initial weights)."""
        h = hashlib.sha256()
        for v in self.params.values():
            h.update(to_numpy(v).tobytes())
        return int.from_bytes(h.digest()[:8], "little")

    # -- placement and state ----------------------------------------------------
    @property
    def dtype(self) -> Any:
        first = next(iter(self.params.values()), None)
        return None if first is None else first.dtype

    def to(self, device: str | Device) -> Sequential:
        """Move every parameter and buffer to ``device`` (in place); returns self."""
        dev = resolve_device(device)
        for view in (self.params, self.buffers):
            for key in view:
                view[key] = dev.asarray(view[key])
        self.device = dev
        return self

    def to_dtype(self, dtype: str) -> Sequential:
        """Cast every parameter and buffer to ``dtype`` (in place); returns self.

        ``dtype``: ``"float16"``, ``"bfloat16"`` (PyTorch, JAX), ``"float32"`` or
        ``"float64"``. For inference (the book's half-precision check): every op follows
        its input's dtype and inputs are cast to the network's, so ``predict`` then
        computes in ``dtype``. Training stays float32 / float64. :attr:`config` keeps
        the dtype the network was built in. Raises
        :class:`~xpcnn.backend.DeviceError` when the library has no such dtype.
        """
        dt = float_dtype(self.device, dtype)
        for view in (self.params, self.buffers):
            for key in view:
                view[key] = self.device.xp.astype(view[key], dt)
        return self

    def state_dict(self) -> dict[str, Any]:
        """Host (NumPy) copies of parameters and buffers, keyed ``params/W1``, ``buffers/...``."""
        out = {f"params/{k}": to_numpy(v, copy=True) for k, v in self.params.items()}
        out.update({f"buffers/{k}": to_numpy(v, copy=True) for k, v in self.buffers.items()})
        return out

    def random_state(self) -> dict[str, Any]:
        """Host snapshots of the layers' random generators (dropout masks), keyed
        ``"<layer index>/<generator>"``, so a resumed run draws the same masks."""
        return {
            f"{i}/{key}": a
            for i, layer in enumerate(self.layers)
            for key, a in (layer.rng_state() or {}).items()
        }

    def set_random_state(self, arrays: dict[str, Any]) -> None:
        """Restore :meth:`random_state`."""
        for name, a in arrays.items():
            i, key = name.split("/", 1)
            layer = self.layers[int(i)]
            if layer.rng_state() is None:
                raise ValueError(
                    f"random state {name!r} is for layer {i}, a {type(layer).__name__}, which "
                    "draws no random numbers: it was saved from another network"
                )
            layer.set_rng_state({key: a})

    def state_shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Expected ``{key: (shape, dtype name)}`` of :meth:`state_dict`."""
        out = {}
        for prefix, view in (("params", self.params), ("buffers", self.buffers)):
            for k, v in view.items():
                out[f"{prefix}/{k}"] = (tuple(v.shape), str(v.dtype).rsplit(".", 1)[-1])
        return out

    def load_state_dict(self, arrays: dict[str, Any]) -> None:
        """Load host arrays from :meth:`state_dict` (any dtype; cast to the network's)."""
        for prefix, view in (("params", self.params), ("buffers", self.buffers)):
            for k in view:
                a = arrays[f"{prefix}/{k}"]
                if tuple(a.shape) != tuple(view[k].shape):
                    raise ValueError(
                        f"{prefix}/{k}: shape {tuple(a.shape)} does not match the network's "
                        f"{tuple(view[k].shape)}"
                    )
                view[k] = self.device.asarray(a, dtype=view[k].dtype)

    # -- inspection -------------------------------------------------------------
    def output_shapes(self) -> list[tuple[int, ...]]:
        """Per-layer output shape of one example (no batch axis)."""
        shapes, shape = [], self.input_dim
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except ValueError as exc:
                raise ValueError(f"layer {i} ({layer!r}): {exc}") from None
            shapes.append(tuple(shape))
        return shapes

    def summary(self) -> str:
        """A table of layers, output shapes and parameter counts."""
        rows = [("layer", "output shape", "params")]
        rows.append(("input", str(self.input_dim), ""))
        total = 0
        for layer, shape in zip(self.layers, self.output_shapes(), strict=True):
            n = sum(math.prod(p.shape) for p in layer.params.values())
            total += n
            rows.append((repr(layer), str(shape), f"{n:,}" if n else ""))
        rows.append(("total", "", f"{total:,}"))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}" for a, b, c in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(\n{self.summary()}\n)"
