"""What several subcommands share: argument types that name the option in their
error, the ``--device`` / ``--backend`` and ``--dataset`` / ``--data-dir`` groups,
and loading a checkpoint's network with its data set."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..backend import BACKENDS, FLOAT_DTYPES, Device, resolve_device
from ..data import DATASET_NAMES, Dataset, load_dataset
from ..errors import ConfigError
from ..models import Sequential
from ..pretrained import NAMES, PREFIX, resolve_checkpoint
from ..train import load_network_with_meta
from ..train.augment import parse_augment

__all__ = [
    "add_checkpoint_argument",
    "add_data_options",
    "add_device_options",
    "add_dtype_option",
    "augmentations",
    "checkpoint_network",
    "device",
    "fraction",
    "int_list",
    "network_and_data",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
]


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (argparse names the option in its error)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "a non-negative integer")


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def _number(text: str, what: str, ok: Callable[[float], bool]) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return v


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    return _number(text, "a number strictly between 0 and 1", lambda v: 0 < v < 1)


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    return _number(text, "a number >= 0", lambda v: 0 <= v < float("inf"))


def int_list(text: str) -> list[int]:
    try:
        return [int(i) for i in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def augmentations(text: str) -> str:
    """``--augment``: ``crop``, ``flip`` or both, as ``"crop,flip"``."""
    try:
        return ",".join(parse_augment(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_device_options(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--backend``: the array library that holds the network, and where."""
    p.add_argument(
        "--device",
        help="cpu, cuda or cuda:N, within --backend (default: cpu; CuPy: cuda:0; "
        "JAX: its default device)",
    )
    p.add_argument(
        "--backend",
        type=str.lower,
        choices=BACKENDS,
        help="array library (default: numpy for --device cpu, cupy for cuda)",
    )


def device(args: argparse.Namespace) -> Device:
    """The :class:`~xpcnn.backend.Device` that ``--device`` and ``--backend`` name."""
    return resolve_device(args.device, args.backend)


def add_data_options(p: argparse.ArgumentParser, default: str = "the checkpoint's") -> None:
    p.add_argument(
        "--dataset",
        choices=DATASET_NAMES,
        help=f"mnist-sample (bundled, offline), mnist, fashion-mnist or cifar10 "
        f"(default {default})",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the data set's files, directly or in DIR/DATASET/ (MNIST's IDX "
        "files; CIFAR-10's .bin batches, also in DIR/cifar-10-batches-bin/); else "
        "$XPCNN_DATA, the cache, a download",
    )


def add_dtype_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        choices=FLOAT_DTYPES,
        help="compute in this float type (default: the checkpoint's); float16 and bfloat16 "
        "(PyTorch, JAX) halve the memory, for an accuracy within about a point",
    )


def add_checkpoint_argument(p: argparse.ArgumentParser) -> None:
    """The ``CHECKPOINT`` argument: a file, or a bundled network as ``pretrained:NAME``."""
    names = ", ".join(PREFIX + n for n in NAMES)
    p.add_argument(
        "checkpoint",
        help=f"a checkpoint .npz (xpcnn train's, save_params'), or a bundled network: {names}",
    )


def checkpoint_network(args: argparse.Namespace) -> tuple[Sequential, dict[str, Any]]:
    """The network of ``args.checkpoint`` (a path or ``pretrained:NAME``, resolved here for
    every subcommand) on ``--device`` (the CPU for a command without it), in ``--dtype``
    (when the command has it), and the checkpoint's metadata."""
    on = device(args) if hasattr(args, "device") else "cpu"
    network, meta = load_network_with_meta(resolve_checkpoint(args.checkpoint), on)
    if getattr(args, "dtype", None) is not None:
        network.to_dtype(args.dtype)
    return network, meta


def network_and_data(args: argparse.Namespace) -> tuple[Sequential, dict[str, Any], Dataset]:
    """The checkpoint's network (:func:`checkpoint_network`), its metadata, and
    ``--dataset`` (default: the one it was trained on), whose images must fit the network."""
    network, meta = checkpoint_network(args)
    name = args.dataset or meta.get("run", {}).get("dataset") or "mnist-sample"
    dataset = load_dataset(name, args.data_dir)
    if tuple(dataset.x_test.shape[1:]) != network.input_dim:
        raise ConfigError(
            f"{name} images are {tuple(dataset.x_test.shape[1:])} but the network expects {network.input_dim}"
        )
    return network, meta, dataset
