"""ONNX export: a trained :class:`~xpcnn.models.Sequential` as an ONNX graph.

The graph takes ``input``, float32 (N, C, H, W) (or (N, D) for a network whose
``input_dim`` is 1-D) with a dynamic batch ``N``, scaled to [0, 1] as the
Trainer does (divide 8-bit pixels by 255 first), and returns ``logits``,
float32 (N, K): the scores of :meth:`Sequential.predict`, before the softmax.
Opset :data:`OPSET` (17), IR version 8, so any recent onnxruntime runs it.

Each layer writes its own nodes, beside its forward in :mod:`xpcnn.layers`
(:meth:`~xpcnn.layers.Layer.onnx_nodes`, given an :class:`OnnxGraph`), so a new
layer brings its export with it: Convolution -> Conv, Pooling -> MaxPool /
AveragePool (``count_include_pad=1``; padding never wins a maximum in either),
Affine -> Flatten + Gemm, Relu / Sigmoid / Tanh, BatchNormalization -> its
inference form (running statistics), LRN -> LRN (the same ``alpha / size``
convention), Dropout -> nothing (the identity at inference).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_write
from .backend import to_numpy
from .models import Sequential

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "OnnxGraph", "export_onnx", "to_onnx"]

#: The ONNX operator set the graph is written for.
OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_IR_VERSION = 8  # the IR version that introduced opset 17


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError(
            "ONNX export needs the onnx package, which is not installed: pip install onnx"
        ) from None
    return onnx


class OnnxGraph:
    """The nodes and initializers of one graph, as layers write them
    (:meth:`~xpcnn.layers.Layer.onnx_nodes`); names are scoped per layer."""

    def __init__(self, onnx: Any) -> None:
        self._onnx = onnx
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.scope = ""  # the prefix of the names the current layer creates

    def const(self, name: str, a: Any) -> str:
        """Add array ``a`` (any backend or device) as a float32 initializer; return its name."""
        full = f"{self.scope}{name}"
        host = np.asarray(to_numpy(a), np.float32)
        self.initializers.append(self._onnx.numpy_helper.from_array(host, full))
        return full

    def node(self, op_type: str, inputs: list[str], **attributes: Any) -> str:
        """Add an ``op_type`` node reading ``inputs``; return the name of its one output."""
        out = f"{self.scope}{op_type}{len(self.nodes)}"
        self.nodes.append(self._onnx.helper.make_node(op_type, inputs, [out], **attributes))
        return out


def to_onnx(network: Sequential, *, opset: int = OPSET) -> Any:
    """The network as an ``onnx.ModelProto`` (checked with ``onnx.checker``).

    Parameters are copied to the host as float32 whatever the network's dtype
    and device. Raises ValueError, naming the layer, for a layer with no ONNX
    counterpart.
    """
    onnx = _onnx()
    helper, TP = onnx.helper, onnx.TensorProto
    graph = OnnxGraph(onnx)
    x = INPUT_NAME
    shapes = [network.input_dim, *network.output_shapes()]
    for i, layer in enumerate(network.layers):
        graph.scope = f"l{i}_"
        try:
            x = layer.onnx_nodes(graph, x, shapes[i])
        except ValueError as exc:
            raise ValueError(f"layer {i} ({layer!r}): {exc}") from None
    graph.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME]))
    proto = helper.make_graph(
        graph.nodes,
        type(network).__name__,
        [helper.make_tensor_value_info(INPUT_NAME, TP.FLOAT, ["N", *network.input_dim])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TP.FLOAT, ["N", *shapes[-1]])],
        initializer=graph.initializers,
    )
    model = helper.make_model(
        proto,
        opset_imports=[helper.make_opsetid("", int(opset))],
        producer_name="xpcnn",
        ir_version=_IR_VERSION,
    )
    onnx.checker.check_model(model)
    return model


def export_onnx(
    network: Sequential | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    opset: int = OPSET,
) -> Path:
    """Write ``network`` (or the network of a checkpoint file) to ``path`` as ONNX,
    atomically; returns the path. See the module docstring for the graph's input
    and output."""
    if not isinstance(network, Sequential):
        from .train import load_network

        network = load_network(network)
    model = to_onnx(network, opset=opset)
    path = Path(path)
    with atomic_write(path) as f:
        f.write(model.SerializeToString())
    return path
