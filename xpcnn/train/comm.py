"""The communicator a :class:`~xpcnn.train.Trainer` talks to, and the
single-process one it uses by default.

A data-parallel run passes an object with this interface (``xpcnn.distributed``
wraps mpi4py); nothing here imports MPI. With :class:`SingleProcess` every
collective is the identity, so training is exactly the one-process loop.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["Communicator", "SingleProcess"]

T = TypeVar("T")


@runtime_checkable
class Communicator(Protocol):
    """What the Trainer needs from a group of ``size`` processes.

    Arrays are of any array-API namespace and device; each collective returns
    an array of the same namespace, device, dtype and shape as its argument.
    Every rank must make the same calls in the same order.
    """

    rank: int  #: this process, 0 <= rank < size; rank 0 alone prints and writes files
    size: int  #: number of processes

    def allreduce(self, x: Any, *, in_place: bool = False) -> Any:
        """Elementwise sum of ``x`` over all ranks (every rank gets the sum);
        ``in_place=True`` allows the sum to overwrite ``x``."""
        ...

    def bcast(self, x: Any, root: int = 0) -> Any:
        """``root``'s array; every rank passes an array of the same shape and dtype."""
        ...

    def bcast_object(self, obj: T, root: int = 0) -> T:
        """``root``'s JSON-like Python object (small control data, never arrays of a step)."""
        ...

    def barrier(self) -> None:
        """Wait until every rank got here."""
        ...


class SingleProcess:
    """The trivial communicator: one process, rank 0; every collective returns its input."""

    rank = 0
    size = 1

    def allreduce(self, x: Any, *, in_place: bool = False) -> Any:
        return x

    def bcast(self, x: Any, root: int = 0) -> Any:
        return x

    def bcast_object(self, obj: T, root: int = 0) -> T:
        return obj

    def barrier(self) -> None:
        return None
