"""Epochs of shuffled mini-batches, as index arrays, that know where they are.

Each epoch is one permutation of the training set drawn from the host
Generator (sampling without replacement, unlike the book's ``np.random.choice``);
step ``s`` takes ``perm[s*B : (s+1)*B]``, so the last batch is partial when B
does not divide N. The state (epoch, step, permutation, Generator) is what a
checkpoint needs to resume on the same batch.

In a data-parallel run every rank draws the same permutation (same seed) and
keeps a contiguous share of each global batch (``np.array_split`` shares:
they differ by at most one index).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["Batch", "BatchIterator", "share"]


def share(indices: np.ndarray, rank: int, size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous part of ``indices`` out of ``size`` parts
    (the first ``len % size`` parts one longer)."""
    return np.array_split(indices, size)[rank]


@dataclass(frozen=True)
class Batch:
    """One step's batch: ``indices`` (host int64, this rank's share) of a
    global batch of ``global_size`` images; ``step`` counts from 1 in the epoch,
    ``epoch`` from 0 (the epochs completed before it)."""

    step: int
    indices: np.ndarray
    global_size: int
    epoch: int = 0


class BatchIterator:
    """Index batches of ``n`` examples in mini-batches of ``batch_size``.

    ``epoch`` counts completed epochs; ``step`` the batches handed out in the
    current one (the Trainer completes a step before it can stop, so after a
    Ctrl-C it is also the completed steps). :meth:`epoch_batches` continues the
    current epoch from ``step`` (after a resume, mid-epoch) and
    :meth:`end_epoch` closes it.
    """

    def __init__(
        self, n: int, batch_size: int, rng: np.random.Generator, *, rank: int = 0, size: int = 1
    ) -> None:
        self.n, self.batch_size, self.rng = n, batch_size, rng
        self.rank, self.size = rank, size
        self.epoch = 0
        self.step = 0
        self.perm: np.ndarray | None = None  # the current epoch's shuffle (kept for resume)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def epoch_batches(self) -> Iterator[Batch]:
        """The remaining batches of the current epoch (a new shuffle at its start)."""
        if self.perm is None or self.step == 0:
            self.perm = self.rng.permutation(self.n)
        B = self.batch_size
        while self.step < self.steps_per_epoch:
            whole = self.perm[self.step * B : min((self.step + 1) * B, self.n)]
            self.step += 1
            yield Batch(self.step, share(whole, self.rank, self.size), len(whole), self.epoch)

    def end_epoch(self) -> None:
        self.epoch += 1
        self.step = 0
