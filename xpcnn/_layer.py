"""The base class of every layer, :class:`Layer` (public as ``xpcnn.layers.Layer``):
``forward`` / ``backward`` through an op's cache, ``params`` / ``grads`` / ``buffers``,
and the hooks a training run calls (ONNX export, random state, randomness as an
input of a compiled step). The book's layers are in :mod:`xpcnn.layers`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Layer"]


class Layer:
    """Base class: a layer maps ``forward(x)`` to an output and ``backward(dout)`` to ``dx``.

    ``params`` maps names (``"W"``, ``"b"``, ...) to arrays; ``backward`` fills
    ``grads`` with arrays of the same shapes. ``buffers`` holds non-trained state
    that a checkpoint must keep (running statistics).

    A layer built on an op (:mod:`xpcnn.ops`) keeps the op's cache in ``_cache``
    in ``forward``; the inherited ``backward`` then runs ``_cache.backward(dout)``
    and stores the parameter gradients it returns (one per entry of ``params``,
    in ``params``' order) in ``grads``. See the README's layout section for the
    files a new layer touches.
    """

    params: dict[str, Any]
    grads: dict[str, Any]
    buffers: dict[str, Any]
    _cache: Any

    def __init__(self) -> None:
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self._cache = None

    def forward(self, x: Any, train_flg: bool = True) -> Any:
        raise NotImplementedError

    def backward(self, dout: Any) -> Any:
        """``dx`` for ``dout`` through the last forward pass's cache; fills ``grads``."""
        grads = self._saved().backward(dout)
        if not self.params:
            return grads
        dx, *dparams = grads
        self.grads.update(zip(self.params, dparams, strict=True))
        return dx

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one example's output for one example's input shape (no batch axis)."""
        return input_shape

    def _saved(self) -> Any:
        """The last forward pass's cache, or a clear error if there is none."""
        if self._cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called with no forward pass to go back "
                "through (never run, or cleared by clear_cache()); call forward first"
            )
        return self._cache

    def clear_cache(self) -> None:
        """Drop the forward pass's saved arrays (pure inference needs no backward)."""
        self._cache = None

    def onnx_nodes(self, graph: Any, x: str, input_shape: tuple[int, ...]) -> str:
        """Write this layer's inference form into an ONNX graph; return its output's name.

        ``graph`` is an :class:`xpcnn.export.OnnxGraph` (``graph.node(op_type, inputs,
        **attributes)`` adds a node and returns its output's name; ``graph.const(name,
        array)`` adds a float32 initializer), ``x`` the name of the input tensor and
        ``input_shape`` one example's shape. Raise ValueError for what ONNX cannot express.
        """
        name = type(self).__name__
        raise ValueError(f"{name} has no ONNX export: define {name}.onnx_nodes (see Layer)")

    # Random state: a layer that draws random numbers (Dropout) overrides all three.
    def rng_state(self) -> dict[str, Any] | None:
        """Host snapshots (NumPy arrays) of this layer's random generators, keyed by
        generator, for checkpoints; None (the default): this layer draws no random numbers."""
        return None

    def set_rng_state(self, arrays: Mapping[str, Any]) -> None:
        """Restore :meth:`rng_state` snapshots: the next draws continue the saved
        sequences. The default does nothing."""

    def reseed(self, derive: Callable[[int | None], int | None]) -> None:
        """Restart this layer's generators from ``derive(seed)``, where ``seed`` is the
        layer's integer seed (None if it has none): for example a per-rank seed in
        data-parallel training. The default does nothing."""

    # Randomness as an input (a compiled step, xpcnn.train.compiled): the same two.
    def random_seed(self) -> int | None:
        """The integer seed a compiled step derives this layer's keys from; None
        (the default) when the layer draws no random numbers."""
        return None

    def draw_from(self, uniform: Callable[[tuple[int, ...], Any], Any] | None) -> None:
        """Take the random numbers of the next forward passes from ``uniform(shape,
        like)`` (uniform in [0, 1), ``like``'s dtype and device; drawn from a key, so
        they are inputs of a compiled function, not constants), or again from this
        layer's generators (None). The default refuses a layer that draws some."""
        if uniform is not None and self.random_seed() is not None:
            raise TypeError(f"{type(self).__name__} must override Layer.draw_from (see Dropout)")

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
