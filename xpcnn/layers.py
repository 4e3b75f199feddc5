"""The book's layers: ``forward`` / ``backward`` objects owning ``params`` and ``grads``.

Each derives from :class:`Layer` (defined in :mod:`xpcnn._layer`, with the hooks a
training run calls). Every layer takes its array namespace from the arrays it is given; the
arithmetic lives in :mod:`xpcnn.ops`. Shapes follow the book: images are
(N, C, H, W), dense inputs (N, D). ``backward`` never overwrites the ``dout``
it receives.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from array_api_compat import array_namespace

from . import ops
from ._checks import check_dropout_ratio
from ._layer import Layer
from ._window import check_window
from .backend import random_uniform
from .backend import rng_state as _rng_state
from .backend import set_rng_state as _set_rng_state

__all__ = [
    "LRN",
    "Affine",
    "BatchNormalization",
    "Convolution",
    "Dropout",
    "Layer",
    "Pooling",
    "Relu",
    "Sigmoid",
    "SoftmaxWithLoss",
    "Tanh",
]


class Convolution(Layer):
    """2-D convolution by im2col (the book's ``Convolution``).

    Parameters
    ----------
    W : array (FN, C, FH, FW)
    b : array (FN,)
    stride, pad : int

    ``need_dx=False`` skips the input gradient (use it for a network's first layer).
    """

    def __init__(self, W: Any, b: Any, stride: int = 1, pad: int = 0) -> None:
        super().__init__()
        self.params = {"W": W, "b": b}
        self.stride = stride
        self.pad = pad
        self.need_dx = True

    @property
    def W(self) -> Any:
        return self.params["W"]

    @property
    def b(self) -> Any:
        return self.params["b"]

    def forward(self, x: Any, train_flg: bool = True) -> Any:
        out, self._cache = ops.conv2d_forward(x, self.W, self.b, self.stride, self.pad)
        return out

    def forward_relu(self, x: Any) -> Any:
        """``forward`` followed by a ReLU, as one op (:func:`xpcnn.ops.conv2d_relu_forward`);
        :meth:`backward` then takes the gradient of the ReLU's output."""
        out, self._cache = ops.conv2d_relu_forward(x, self.W, self.b, self.stride, self.pad)
        return out

    def forward_relu_max_pool(
        self, x: Any, pool_h: int, pool_w: int, pool_stride: int = 2, pool_pad: int = 0
    ) -> Any:
        """``forward``, a ReLU, then max pooling, as one op
        (:func:`xpcnn.ops.conv2d_relu_max_pool2d_forward`); :meth:`backward` then takes
        the gradient of the pooling's output."""
        out, self._cache = ops.conv2d_relu_max_pool2d_forward(
            x, self.W, self.b, self.stride, self.pad, pool_h, pool_w, pool_stride, pool_pad
        )
        return out

    def backward(self, dout: Any) -> Any:
        dx, self.grads["W"], self.grads["b"] = self._saved().backward(dout, need_dx=self.need_dx)
        return dx

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        FN, C, FH, FW = self.W.shape
        if len(input_shape) != 3 or input_shape[0] != C:
            raise ValueError(
                f"Convolution with W {tuple(self.W.shape)} expects inputs (C={C}, H, W), "
                f"got {tuple(input_shape)}"
            )
        OH, OW = check_window(
            input_shape, FH, FW, self.stride, self.pad, what="Convolution", batched=False
        )
        return (FN, OH, OW)

    def onnx_nodes(self, graph: Any, x: str, input_shape: tuple[int, ...]) -> str:
        FH, FW = (int(n) for n in self.W.shape[2:])
        s, p = int(self.stride), int(self.pad)
        ins = [x, graph.const("W", self.W), graph.const("b", self.b)]
        return graph.node("Conv", ins, kernel_shape=[FH, FW], strides=[s, s], pads=[p] * 4)

    def extra_repr(self) -> str:
        FN, C, FH, FW = self.W.shape
        return f"{C}->{FN}, {FH}x{FW}, stride={self.stride}, pad={self.pad}"


class Pooling(Layer):
    """Max (default) or average pooling over ``pool_h x pool_w`` windows.

    ``mode="max"`` or ``"avg"``. Unlike the book, ``pad`` is honoured in the
    output size, and padding never wins a maximum.
    """

    def __init__(
        self, pool_h: int, pool_w: int, stride: int = 2, pad: int = 0, mode: str = "max"
    ) -> None:
        super().__init__()
        if mode not in ("max", "avg"):
            raise ValueError(f"Pooling mode must be 'max' or 'avg', got {mode!r}")
        self.pool_h, self.pool_w = pool_h, pool_w
        self.stride, self.pad, self.mode = stride, pad, mode

    def forward(self, x: Any, train_flg: bool = True) -> Any:
        fwd = ops.max_pool2d_forward if self.mode == "max" else ops.avg_pool2d_forward
        out, self._cache = fwd(x, self.pool_h, self.pool_w, self.stride, self.pad)
        return out

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        OH, OW = check_window(
            input_shape,
            self.pool_h,
            self.pool_w,
            self.stride,
            self.pad,
            what="Pooling",
            batched=False,
        )
        return (input_shape[0], OH, OW)

    def onnx_nodes(self, graph: Any, x: str, input_shape: tuple[int, ...]) -> str:
        """MaxPool, or AveragePool counting padding (``count_include_pad=1``) as this does."""
        kw: dict[str, Any] = {
            "kernel_shape": [self.pool_h, self.pool_w],
            "strides": [self.stride] * 2,
            "pads": [self.pad] * 4,
        }
        if self.mode == "max":
            return graph.node("MaxPool", [x], **kw)
        return graph.node("AveragePool", [x], count_include_pad=1, **kw)

    def extra_repr(self) -> str:
        return f"{self.mode}, {self.pool_h}x{self.pool_w}, stride={self.stride}, pad={self.pad}"


class Affine(Layer):
    """Fully connected layer ``x @ W + b``; a 4-D input is flattened per example.

    W : array (D, M), b : array (M,); forward (N, ...) -> (N, M); backward
    returns ``dx`` in the input's original shape.
    """

    def __init__(self, W: Any, b: Any) -> None:
        super().__init__()
        self.params = {"W": W, "b": b}

    @property
    def W(self) -> Any:
        return self.params["W"]

    @property
    def b(self) -> Any:
        return self.params["b"]

    def forward(self, x: Any, train_flg: bool = True) -> Any:
        out, self._cache = ops.affine_forward(x, self.W, self.b)
        return out

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        D, M = self.W.shape
        if math.prod(input_shape) != D:
            raise ValueError(
                f"Affine with W {tuple(self.W.shape)} expects {D} input features, "
                f"got input shape {tuple(input_shape)} ({math.prod(input_shape)} features)"
            )
        return (M,)

    def onnx_nodes(self, graph: Any, x: str, input_shape: tuple[int, ...]) -> str:
        """Flatten (for an image-shaped input) and Gemm."""
        if len(input_shape) > 1:
            x = graph.node("Flatten", [x], axis=1)
        return graph.node("Gemm", [x, graph.const("W", self.W), graph.const("b", self.b)])

    def extra_repr(self) -> str:
        return "{}->{}".format(*self.W.shape)


class Relu(Layer):
    """Rectified linear unit; keeps the mask ``x > 0`` for the backward pass."""

    def forward(self, x: Any, train_flg: bool = True) -> Any:
        out, self._cache = ops.relu_forward(x)
        return out

    def onnx_nodes(self, graph: Any, x: str, input_shape: tuple[int, ...]) -> str:
        return graph.node("Relu", [x])


class _OutputActivation(Layer):
    """An activation whose backward needs only its own output (sigmoid, tanh)."""

    _forward: Any = None  # ops function x -> (out, cache with .out)
    _onnx_op = ""  # the ONNX operator of the same name

    def forward(self, x: Any, train_flg: bool = True) -> Any:
        out, self._cache = self._forward(x)
        return out

    def onnx_nodes(self, graph: Any, x: str, input_shape: tuple[int, ...]) -> str:
        return graph.node(self._onnx_op, [x])


class Sigmoid(_OutputActivation):
    """Logistic sigmoid ``1 / (1 + exp(-x))``."""

    _forward = staticmethod(ops.sigmoid_forward)
    _onnx_op = "Sigmoid"


class SoftmaxWithLoss(Layer):
    """Softmax and mean cross-entropy in one layer.

    ``forward(x, t)``: scores x (N, K) and labels t, either (N,) integers or
    (N, K) one-hot; returns the loss as a 0-d array (no host copy).
    ``backward(dout=1)`` returns dx (N, K) = (y - t) / N.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loss: Any = None

    def forward(self, x: Any, t: Any) -> Any:  # type: ignore[override]
        self.loss, self._cache = ops.softmax_cross_entropy_forward(x, t)
        return self.loss

    def backward(self, dout: Any = 1.0) -> Any:
        return super().backward(dout)

    @property
    def y(self) -> Any:
        """The book's attribute: the softmax (N, K) of the last forward pass (or None)."""
        return None if self._cache is None else self._cache.y


class Tanh(_OutputActivation):
    """Hyperbolic tangent (LeNet's squashing function)."""

    _forward = staticmethod(ops.tanh_forward)
    _onnx_op = "Tanh"


class Dropout(Layer):
    """Inverted dropout (http://arxiv.org/abs/1207.0580).

    Training (``train_flg=True``): each unit is dropped with probability
    ``dropout_ratio`` and kept units are scaled by ``1 / (1 - dropout_ratio)``;
    inference: the identity, with no rescaling (unlike the book, which scales
    at inference time). ``backward`` reuses the last forward pass's mask.

    The uniform numbers come from :func:`xpcnn.backend.random_uniform` on the
    input's own device (CuPy / torch generators; the host generator for NumPy
    and array-api-strict). ``seed`` (int or None) makes the sequence of masks
    reproducible on a given backend. In a compiled step they come from a key of
    the seed and the step number (:meth:`draw_from`).
    """

    def __init__(self, dropout_ratio: float = 0.5, *, seed: int | None = None) -> None:
        super().__init__()
        # ops' own check, run here too so a bad ratio fails when the net is built.
        self.dropout_ratio = check_dropout_ratio(dropout_ratio)
        self.seed_state: dict[str, Any] = {"seed": seed}
        self._uniform: Callable[[tuple[int, ...], Any], Any] | None = None

    @property
    def mask(self) -> Any:
        """Bool array of kept units from the last training forward pass (None after inference)."""
        return None if self._cache is None else self._cache.mask

    def forward(self, x: Any, train_flg: bool = True) -> Any:
        if not train_flg or self.dropout_ratio == 0.0:
            self._cache = None
            return x
        if self._uniform is not None:
            u = self._uniform(tuple(x.shape), x)
        else:
            u = random_uniform(x, tuple(x.shape), seed_state=self.seed_state)
        out, self._cache = ops.dropout_forward(x, u, self.dropout_ratio)
        return out

    def backward(self, dout: Any) -> Any:
        return dout if self._cache is None else self._cache.backward(dout)

    def rng_state(self) -> dict[str, Any]:
        return _rng_state(self.seed_state)

    def set_rng_state(self, arrays: Mapping[str, Any]) -> None:
        _set_rng_state(self.seed_state, dict(arrays))

    def reseed(self, derive: Callable[[int | None], int | None]) -> None:
        seed = self.seed_state.get("seed")
        # a Generator seed has no integer to derive from: derive(None)
        self.seed_state = {"seed": derive(seed if isinstance(seed, int) else None)}

    def random_seed(self) -> int:
        seed = self.seed_state.get("seed")
        if seed is not None and not hasattr(seed, "integers"):
            return int(seed)
        if "int" not in self.seed_state:  # None or a Generator: one integer, drawn once
            self.seed_state["int"] = (
                secrets.randbits(31) if seed is None else int(seed.integers(2**31))
            )
        return int(self.seed_state["int"])

    def draw_from(self, uniform: Callable[[tuple[int, ...], Any], Any] | None) -> None:
        self._uniform = uniform

    def onnx_nodes(self, graph: Any, x: str, input_shape: tuple[int, ...]) -> str:
        return x  # the identity at inference

    def extra_repr(self) -> str:
        return f"{self.dropout_ratio}"


class BatchNormalization(Layer):
    """Batch normalisation (http://arxiv.org/abs/1502.03167), the book's layer made
    per channel for images.

    Parameters
    ----------
    gamma, beta : arrays (D,) for (N, D) inputs or (C,) for (N, C, H, W) inputs
        (statistics per feature, or per channel over N, H, W).
    momentum : float, weight of the old running statistics (the book's 0.9)
    running_mean, running_var : arrays like ``gamma``; default zeros and ones
        (ones rather than the book's zeros, so inference before any training
        step does not divide by ``sqrt(eps)``)
    eps : float, the book's ``10e-7``

    ``params``: ``gamma``, ``beta``; ``buffers``: ``running_mean``, ``running_var``,
    replaced (not written in place) after each training forward pass. Inference
    (``train_flg=False``) normalises with the running statistics.
    """

    def __init__(
        self,
        gamma: Any,
        beta: Any,
        momentum: float = 0.9,
        running_mean: Any = None,
        running_var: Any = None,
        *,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        xp = array_namespace(gamma, beta)
        self.params = {"gamma": gamma, "beta": beta}
        self.buffers = {
            "running_mean": xp.zeros_like(gamma) if running_mean is None else running_mean,
            "running_var": xp.ones_like(gamma) if running_var is None else running_var,
        }
        self.momentum = float(momentum)
        self.eps = float(eps)

    def forward(self, x: Any, train_flg: bool = True) -> Any:
        out, self._cache = ops.batchnorm_forward(
            x,
            self.params["gamma"],
            self.params["beta"],
            self.buffers["running_mean"],
            self.buffers["running_var"],
            train_flg=train_flg,
            momentum=self.momentum,
            eps=self.eps,
        )
        if train_flg:
            self.buffers["running_mean"] = self._cache.running_mean
            self.buffers["running_var"] = self._cache.running_var
        return out

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        (C,) = self.params["gamma"].shape
        if len(input_shape) not in (1, 3) or input_shape[0] != C:
            raise ValueError(
                f"BatchNormalization with {C} channels expects inputs (D={C},) or (C={C}, H, W), "
                f"got {tuple(input_shape)}"
            )
        return input_shape

    def onnx_nodes(self, graph: Any, x: str, input_shape: tuple[int, ...]) -> str:
        """The inference form: the running statistics."""
        arrays = {**self.params, **self.buffers}
        order = ("gamma", "beta", "running_mean", "running_var")  # ONNX's input order
        ins = [x, *(graph.const(k, arrays[k]) for k in order)]
        return graph.node("BatchNormalization", ins, epsilon=self.eps)

    def extra_repr(self) -> str:
        return f"{self.params['gamma'].shape[0]}, momentum={self.momentum}"


class LRN(Layer):
    """Local response normalisation across channels (AlexNet): ``size`` channels per
    window, ``alpha`` divided by ``size`` as in ``torch.nn.functional.local_response_norm``.

    Defaults are AlexNet's: ``size=5, alpha=1e-4, beta=0.75, k=2``. Input (N, C, H, W)
    (any (N, C, ...)); output of the same shape and dtype.
    """

    def __init__(
        self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0
    ) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def forward(self, x: Any, train_flg: bool = True) -> Any:
        out, self._cache = ops.lrn_forward(x, self.size, self.alpha, self.beta, self.k)
        return out

    def onnx_nodes(self, graph: Any, x: str, input_shape: tuple[int, ...]) -> str:
        """ONNX's LRN (the same ``alpha / size`` convention), for odd sizes."""
        if self.size % 2 == 0:  # ONNX centres an even window one channel later than we do
            raise ValueError(
                "ONNX's LRN places an even window differently; only odd sizes can be exported"
            )
        return graph.node("LRN", [x], size=self.size, alpha=self.alpha, beta=self.beta, bias=self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
