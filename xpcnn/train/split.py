"""The validation split: a seeded fraction of the training set held out for model
selection (early stopping, a schedule on a plateau), so that the test set is never
used to choose anything.

The split is drawn from its own stream of the run's seed, apart from the shuffles,
so a seed gives the same split in every run: on resume and on every rank of a
data-parallel run (each rank then trains on its share of each global batch of the
remaining set, as without a split).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["split_digest", "split_sizes", "validation_split"]

# The split's stream beside the shuffles' (``default_rng(seed)``): "val" in ASCII.
_SPLIT_STREAM = 0x76616C


def split_sizes(n: int, fraction: float) -> tuple[int, int]:
    """``(kept, held out)`` images when ``fraction`` of ``n`` is held out (rounded to
    the nearest image); a :class:`~xpcnn.errors.ConfigError` unless 0 < fraction < 1
    and both parts have at least one image."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise ConfigError(
            f"the validation split is a fraction of the training set strictly between 0 and 1 "
            f"(e.g. 0.1), got {fraction!r}"
        )
    held = round(fraction * n)
    if held < 1 or held > n - 1:
        raise ConfigError(
            f"a validation split of {fraction:g} of {n:,} training images holds out {held:,}: "
            "choose a fraction that leaves images on both sides"
        )
    return n - held, held


def validation_split(n: int, fraction: float, seed: int | np.random.Generator) -> tuple[Any, Any]:
    """``(train_indices, val_indices)``: host int64 arrays, each in ascending order,
    that split ``range(n)`` with :func:`split_sizes`'s sizes.

    ``seed`` (a non-negative int) seeds the split's own stream, so the shuffles of a
    run with the same seed are unchanged by it; a ``numpy.random.Generator`` is drawn
    from directly."""
    _, held = split_sizes(n, fraction)
    rng = (
        seed
        if isinstance(seed, np.random.Generator)
        else np.random.default_rng([_SPLIT_STREAM, seed])
    )
    perm = rng.permutation(n)
    return np.sort(perm[held:]), np.sort(perm[:held])


def split_digest(val_indices: Any) -> str:
    """A short fingerprint of the held-out indices, kept in checkpoints so that a
    resume on another split is refused."""
    return hashlib.sha256(np.asarray(val_indices, dtype=np.int64).tobytes()).hexdigest()[:16]
