"""ONNX export: a trained :class:`~xpcnn.models.Sequential` as an ONNX graph.

The graph takes ``input``, float32 (N, C, H, W) (or (N, D) for a network whose
``input_dim`` is 1-D) with a dynamic batch ``N``, scaled to [0, 1] as the
Trainer does (divide 8-bit pixels by 255 first), and returns ``logits``,
float32 (N, K): the scores of :meth:`Sequential.predict`, before the softmax.
Opset :data:`OPSET` (17), IR version 8, so any recent onnxruntime runs it.

Layer by layer: Convolution -> Conv, Pooling -> MaxPool / AveragePool
(``count_include_pad=1``; padding never wins a maximum in either), Affine ->
Flatten + Gemm, Relu / Sigmoid / Tanh, BatchNormalization -> its inference form
(running statistics), LRN -> LRN (the same ``alpha / size`` convention), Dropout
-> nothing (the identity at inference).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_write
from .backend import to_numpy
from .layers import (
    LRN,
    Affine,
    BatchNormalization,
    Convolution,
    Dropout,
    Pooling,
    Relu,
    Sigmoid,
    Tanh,
)
from .models import Sequential

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "export_onnx", "to_onnx"]

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


def to_onnx(network: Sequential, *, opset: int = OPSET) -> Any:
    """The network as an ``onnx.ModelProto`` (checked with ``onnx.checker``).

    Parameters are copied to the host as float32 whatever the network's dtype
    and device. Raises ValueError for a layer with no ONNX counterpart.
    """
    onnx = _onnx()
    helper, TP = onnx.helper, onnx.TensorProto
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, a: Any) -> str:
        inits.append(onnx.numpy_helper.from_array(np.asarray(to_numpy(a), np.float32), name))
        return name

    x = INPUT_NAME
    shapes = [network.input_dim, *network.output_shapes()]
    for i, layer in enumerate(network.layers):
        y, in_shape = f"l{i}", shapes[i]
        if type(layer) is Dropout:
            continue
        if type(layer) is Convolution:
            FH, FW = layer.W.shape[2:]
            s, p = int(layer.stride), int(layer.pad)
            ins = [x, const(f"W{i}", layer.W), const(f"b{i}", layer.b)]
            nodes.append(
                helper.make_node(
                    "Conv", ins, [y], kernel_shape=[FH, FW], strides=[s, s], pads=[p] * 4
                )
            )
        elif type(layer) is Pooling:
            kw = {
                "kernel_shape": [layer.pool_h, layer.pool_w],
                "strides": [layer.stride] * 2,
                "pads": [layer.pad] * 4,
            }
            if layer.mode == "max":
                nodes.append(helper.make_node("MaxPool", [x], [y], **kw))
            else:
                nodes.append(helper.make_node("AveragePool", [x], [y], count_include_pad=1, **kw))
        elif type(layer) is Affine:
            if len(in_shape) > 1:
                nodes.append(helper.make_node("Flatten", [x], [f"{y}_flat"], axis=1))
                x = f"{y}_flat"
            ins = [x, const(f"W{i}", layer.W), const(f"b{i}", layer.b)]
            nodes.append(helper.make_node("Gemm", ins, [y]))
        elif type(layer) in (Relu, Sigmoid, Tanh):
            nodes.append(helper.make_node(type(layer).__name__, [x], [y]))
        elif type(layer) is BatchNormalization:
            ins = [
                x,
                const(f"gamma{i}", layer.params["gamma"]),
                const(f"beta{i}", layer.params["beta"]),
                const(f"mean{i}", layer.buffers["running_mean"]),
                const(f"var{i}", layer.buffers["running_var"]),
            ]
            nodes.append(helper.make_node("BatchNormalization", ins, [y], epsilon=layer.eps))
        elif type(layer) is LRN:
            # ONNX centres an even window one channel later than xpcnn (and torch) do.
            if layer.size % 2 == 0:
                raise ValueError(
                    f"layer {i} ({layer!r}): ONNX's LRN places an even window differently; "
                    "only odd sizes can be exported"
                )
            nodes.append(
                helper.make_node(
                    "LRN",
                    [x],
                    [y],
                    size=layer.size,
                    alpha=layer.alpha,
                    beta=layer.beta,
                    bias=layer.k,
                )
            )
        else:
            raise ValueError(f"layer {i} ({layer!r}) has no ONNX export")
        x = y
    nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME]))
    graph = helper.make_graph(
        nodes,
        type(network).__name__,
        [helper.make_tensor_value_info(INPUT_NAME, TP.FLOAT, ["N", *network.input_dim])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TP.FLOAT, ["N", *shapes[-1]])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
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

        network, _ = load_network(Path(network))
    model = to_onnx(network, opset=opset)
    path = Path(path)
    with atomic_write(path) as f:
        f.write(model.SerializeToString())
    return path
