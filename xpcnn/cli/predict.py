"""``xpcnn predict CHECKPOINT IMAGE...``: classify your own images."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..data import CLASS_NAMES
from ..errors import ConfigError
from ..ops import softmax
from ._options import (
    add_checkpoint_argument,
    add_device_options,
    add_dtype_option,
    checkpoint_network,
    positive_int,
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    pr = subparsers.add_parser(
        "predict", help="classify your own images (PNG, JPEG, ...) with a checkpoint"
    )
    add_checkpoint_argument(pr)
    pr.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    pr.add_argument(
        "--top", type=positive_int, default=1, help="the K likeliest classes (default 1)"
    )
    pr.add_argument("--json", action="store_true", help="print one JSON list instead of lines")
    pr.add_argument(
        "--style",
        choices=("mnist", "fashion", "resize"),
        help="preparation: mnist (fit 20x20, centre of mass), fashion (fit the field), "
        "resize (whole picture); default: from the checkpoint's dataset",
    )
    add_device_options(pr)
    add_dtype_option(pr)
    return pr


def run(args: argparse.Namespace) -> int:
    from ..images import load_image  # Pillow: loaded only for this command

    network, meta = checkpoint_network(args)
    if len(network.input_dim) != 3:
        raise ConfigError(
            f"{args.checkpoint} takes inputs {network.input_dim}, not images (C, H, W)"
        )
    dataset = meta.get("run", {}).get("dataset", "mnist")
    style = args.style or ("fashion" if dataset == "fashion-mnist" else "mnist")
    paths, images, failed = [], [], 0
    for path in args.images:
        try:
            images.append(load_image(path, network.input_dim, style=style))
            paths.append(path)
        except Exception as exc:  # any unreadable file: report it, classify the others
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if type(exc).__name__ == "UnidentifiedImageError":
                why = "not an image file Pillow can read (PNG, JPEG, ...)"
            print(f"xpcnn predict: error: {path}: {why}", file=sys.stderr)
            failed += 1
    probabilities: list[np.ndarray] = []
    for i in range(0, len(images), 500):
        scores = network.predict(np.stack(images[i : i + 500]), keep_cache=False)
        probabilities.extend(to_numpy(softmax(scores)))
    names = CLASS_NAMES.get(dataset, ())
    out = [
        _top(str(path), p, args.top, names) for path, p in zip(paths, probabilities, strict=True)
    ]
    if args.json:
        print(json.dumps(out, indent=2))
    for r in [] if args.json else out:
        print(f"{r['path']}: " + ", ".join(f"{t['class']} (p={t['p']:.2f})" for t in r["top"]))
    return 2 if failed else 0


def _top(path: str, p: np.ndarray, k: int, names: Any) -> dict[str, Any]:
    """One image's ``k`` likeliest classes, most likely first (ties: the lower label)."""
    top = [int(c) for c in np.argsort(-p, kind="stable")[:k]]
    return {
        "path": path,
        "top": [
            {"label": c, "class": names[c] if c < len(names) else str(c), "p": float(p[c])}
            for c in top
        ],
    }
