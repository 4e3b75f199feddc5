"""Build the class-balanced MNIST sample bundled as ``xpcnn/data/mnist_sample.npz``.

Usage (from the repository root)::

    python scripts/make_mnist_sample.py --source ../shared/data/mnist \\
        --out xpcnn/data/mnist_sample.npz --train 5000 --test 1000 --seed 0

``--source`` holds the four standard MNIST IDX files (``.gz`` or uncompressed). The
draw is reproducible: the same source, counts and seed give the same arrays.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
KEYS = ("x_train", "t_train", "x_test", "t_test")


def balanced_indices(
    labels: np.ndarray, total: int, rng: np.random.Generator, num_classes: int = 10
) -> np.ndarray:
    """Indices of ``total // num_classes`` examples per class, drawn without replacement
    and shuffled so classes are interleaved. ``labels`` is uint8 ``(N,)``; returns int64."""
    if total % num_classes:
        raise ValueError(f"{total} is not a multiple of {num_classes} classes")
    per_class = total // num_classes
    picks = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise ValueError(f"class {c} has only {len(pool)} examples, need {per_class}")
        picks.append(rng.choice(pool, size=per_class, replace=False))
    return rng.permutation(np.concatenate(picks))


def make_sample(source: Path, n_train: int, n_test: int, seed: int) -> dict[str, np.ndarray]:
    """Draw the sample from the MNIST files in ``source``: x uint8 (N,1,28,28), t uint8 (N,)."""
    from xpcnn.data import load_dataset

    ds = load_dataset("mnist", source, download=False)
    rng = np.random.default_rng(seed)
    train = balanced_indices(ds.t_train, n_train, rng)
    test = balanced_indices(ds.t_test, n_test, rng)
    return {
        "x_train": ds.x_train[train],
        "t_train": ds.t_train[train],
        "x_test": ds.x_test[test],
        "t_test": ds.t_test[test],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="folder with the MNIST files")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "xpcnn/data/mnist_sample.npz")
    parser.add_argument("--train", type=int, default=5000, help="train images (multiple of 10)")
    parser.add_argument("--test", type=int, default=1000, help="test images (multiple of 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for flag in ("train", "test"):
        n = getattr(args, flag)
        if n <= 0 or n % 10:
            parser.error(f"--{flag} must be a positive multiple of 10 (one share per class)")

    arrays = make_sample(args.source, args.train, args.test, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)

    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    for split in ("train", "test"):
        x, t = arrays[f"x_{split}"], arrays[f"t_{split}"]
        counts = np.bincount(t, minlength=10)
        print(f"{split}: x {x.dtype} {x.shape}, t {t.dtype} {t.shape}, per class {counts}")
    # The zip container embeds timestamps, so hash the array contents instead.
    for key in KEYS:
        print(f"sha256({key}) = {hashlib.sha256(arrays[key].tobytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    # Run as a file from a checkout: make ./xpcnn importable without installing.
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
