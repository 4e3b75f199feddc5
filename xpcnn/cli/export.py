"""``xpcnn export CHECKPOINT model.onnx``: the network as an ONNX model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._options import add_checkpoint_argument, checkpoint_network


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    ex = subparsers.add_parser("export", help="write a checkpoint's network as an ONNX model")
    add_checkpoint_argument(ex)
    ex.add_argument("output", type=Path, help="the .onnx file to write")
    return ex


def run(args: argparse.Namespace) -> int:
    from ..export import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx  # onnx: an optional extra

    network, _ = checkpoint_network(args)
    try:
        path = export_onnx(network, args.output)
    except ImportError as exc:  # no onnx package
        raise ConfigError(str(exc)) from None
    dims = ", ".join(map(str, network.input_dim))
    print(
        f"wrote {path}: ONNX opset {OPSET}, input {INPUT_NAME!r} float32 (N, {dims}) in [0, 1], "
        f"output {OUTPUT_NAME!r} float32 (N, {network.output_shapes()[-1][0]})"
    )
    return 0
