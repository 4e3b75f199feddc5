"""``xpcnn visualize CHECKPOINT --out DIR``: the figures of
:func:`xpcnn.viz.network_figures`, written as PNG files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..run import check_writable
from ._options import (
    add_checkpoint_argument,
    add_data_options,
    add_device_options,
    int_list,
    network_and_data,
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    v = subparsers.add_parser(
        "visualize", help="filters, feature maps, curves, errors of a checkpoint, as PNG"
    )
    add_checkpoint_argument(v)
    v.add_argument("--out", type=Path, required=True, help="output folder for the PNG files")
    v.add_argument(
        "--what",
        help="comma-separated subset of: filters, responses, features, curves, errors, "
        "confusion (default all)",
    )
    v.add_argument("--image-index", type=int, default=0, help="test image for responses/features")
    v.add_argument(
        "--filters",
        type=int_list,
        default=None,
        help="first-layer filters whose responses to show, e.g. 0,3,7 (default: the first four)",
    )
    add_data_options(v)
    add_device_options(v)
    return v


def run(args: argparse.Namespace) -> int:
    from .. import viz  # matplotlib: loaded only when plotting

    text = ",".join(viz.VISUALS) if args.what is None else args.what
    what = [w.strip() for w in text.split(",") if w.strip()]
    unknown = sorted(set(what) - set(viz.VISUALS))
    if unknown or not what:
        raise ConfigError(
            f"--what: unknown {unknown or 'empty'}; choose from {','.join(viz.VISUALS)}"
        )
    network, meta, dataset = network_and_data(args)
    out = check_writable(args.out)
    n = dataset.x_test.shape[0]
    if not 0 <= args.image_index < n:
        raise ConfigError(f"--image-index {args.image_index} is outside 0..{n - 1}")
    conv = viz.first_conv(network)
    if conv is not None and "responses" in what:
        bad = [i for i in args.filters or [] if not 0 <= i < conv.W.shape[0]]
        if bad:
            raise ConfigError(
                f"--filters {bad}: the first layer has filters 0..{conv.W.shape[0] - 1}"
            )
    figures = viz.network_figures(
        network, dataset, meta, what=what, image_index=args.image_index, filters=args.filters
    )
    for name, fig in figures.items():
        print(viz.save_figure(fig, out / f"{name}.png"))
    return 0
