"""``xpcnn evaluate CHECKPOINT``: overall and per-class test accuracy."""

from __future__ import annotations

import argparse
from typing import Any

from ..backend import to_numpy
from ..metrics import predict_labels
from ._options import (
    add_checkpoint_argument,
    add_data_options,
    add_device_options,
    add_dtype_option,
    network_and_data,
    positive_int,
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    e = subparsers.add_parser("evaluate", help="accuracy (overall and per class) of a checkpoint")
    add_checkpoint_argument(e)
    add_data_options(e)
    add_device_options(e)
    add_dtype_option(e)
    e.add_argument("--batch-size", type=positive_int, default=500)
    return e


def run(args: argparse.Namespace) -> int:
    network, _, dataset = network_and_data(args)
    pred = to_numpy(predict_labels(network, dataset.x_test, args.batch_size))
    t = dataset.t_test
    print(
        f"{dataset.name} test accuracy {float((pred == t).mean()):.4f} ({t.shape[0]} images, "
        f"{str(network.dtype).rsplit('.', 1)[-1]})"
    )
    for k, name in enumerate(dataset.class_names):
        sel = t == k
        print(f"  {name:>12}: {float((pred[sel] == k).mean()):.4f} ({int(sel.sum())})")
    return 0
