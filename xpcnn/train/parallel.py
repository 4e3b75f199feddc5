"""What a data-parallel run adds to training, apart from the one-process loop.

Modelled on ChainerMN: :class:`DataParallelUpdater` wraps an updater as ChainerMN's
multi-node optimizer wraps an optimizer, summing the ranks' gradients between
gradient and update; :func:`broadcast_state` starts every rank from rank 0's
state; `sharded_evaluation` lets each rank evaluate its slice. Only the
:class:`~xpcnn.train.comm.Communicator` protocol is used here, so this module
needs no MPI (``xpcnn.distributed`` supplies the communicator and imports this
module, never the reverse). A :class:`~xpcnn.train.Trainer` with one process
never touches any of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..metrics import count_correct_and_loss
from ..models import Sequential
from ..optim import Optimizer
from .batches import Batch, BatchIterator, share
from .comm import Communicator
from .stopping import StopRequest, agreed_request, stop_flags

__all__ = [
    "DataParallelUpdater",
    "agree_on_stop",
    "broadcast_state",
    "mean_metrics",
    "rank_seed",
    "sharded_evaluation",
]


class DataParallelUpdater:
    """An updater whose step is the global batch's, over ``comm.size`` ranks.

    Each rank computes the mean gradients of its share of the batch; they are
    weighted by share / global batch and summed over the ranks through one flat
    buffer and one ``comm.allreduce``, before the wrapped updater applies them.
    The buffer also carries the loss and this rank's stop request (``local_stop()``),
    so that every rank learns the same :attr:`agreed_stop` after the same step.
    """

    def __init__(
        self,
        updater: Any,
        comm: Communicator,
        local_stop: Callable[[], StopRequest | None] = lambda: None,
    ) -> None:
        self.updater, self.comm, self.local_stop = updater, comm, local_stop
        self.network: Sequential = updater.network
        self.optimizer: Optimizer = updater.optimizer
        self.agreed_stop: StopRequest | None = None  # after the last step's allreduce

    def update(self, batch: Batch) -> Any:
        net = self.network
        x, t = self.updater.take(batch.indices, batch.epoch)
        if x.shape[0]:
            grads, loss = self.updater.gradients(x, t)
        else:  # an empty share of a global batch smaller than the world: contributes nothing
            xp = net.device.xp
            grads = {k: xp.zeros_like(p) for k, p in net.params.items()}
            loss = xp.zeros((), dtype=net.dtype, device=net.device.device)
        grads, loss = self._reduce(grads, loss, len(batch.indices) / batch.global_size)
        self.updater.apply(grads)
        return loss

    def _reduce(self, grads: dict[str, Any], loss: Any, w: float) -> tuple[dict[str, Any], Any]:
        xp, dev = self.network.device.xp, self.network.device
        keys = list(grads)
        mine = self.local_stop()
        flags = xp.asarray(stop_flags(mine), dtype=loss.dtype, device=dev.device)
        flat = xp.concat(
            [xp.reshape(grads[k], (-1,)) * w for k in keys] + [xp.reshape(loss * w, (1,)), flags]
        )
        flat = self.comm.allreduce(flat, in_place=True)  # flat is ours: no second buffer
        out, at = {}, 0
        for k in keys:
            n = grads[k].size
            out[k] = xp.reshape(flat[at : at + n], grads[k].shape)
            at += n
        self.agreed_stop = agreed_request(to_numpy(flat[at + 1 :]).tolist(), mine)
        return out, flat[at]


def agree_on_stop(comm: Communicator, mine: StopRequest | None) -> StopRequest | None:
    """The stop request of any rank, on every rank (one small allreduce): for
    requests made between steps, at the end of an epoch."""
    flags = comm.allreduce(np.asarray(stop_flags(mine), dtype=np.float64))
    return agreed_request(np.asarray(flags).tolist(), mine)


def broadcast_state(
    comm: Communicator, network: Sequential, optimizer: Optimizer, batches: BatchIterator
) -> None:
    """Give every rank rank 0's parameters, buffers, optimizer state and progress
    (at the start and after a resume).

    Dropout masks are the exception: rank r > 0 reseeds each dropout layer from
    (its seed, r, the optimizer step), so the ranks draw different masks and a
    resumed run does not repeat the first steps' masks (rank 0 keeps its stream,
    saved in checkpoints)."""
    for view in (network.params, network.buffers):
        for k in list(view):
            view[k] = comm.bcast(view[k])
    state = optimizer.state_arrays()
    names, it = comm.bcast_object((sorted(state), optimizer.iter))
    if names != sorted(state):
        raise RuntimeError(f"rank {comm.rank}: optimizer state differs from rank 0's")
    optimizer.load_state_arrays({n: comm.bcast(state[n]) for n in names}, it)
    b = batches
    progress = (b.epoch, b.step, b.rng.bit_generator.state)
    b.epoch, b.step, b.rng.bit_generator.state = comm.bcast_object(progress)
    perm = comm.bcast_object(None if b.perm is None else b.perm.tolist())
    b.perm = None if perm is None else np.asarray(perm, dtype=np.int64)
    if comm.rank > 0:
        step = optimizer.iter
        for layer in network.layers:  # a layer that draws nothing ignores it
            layer.reseed(lambda seed: rank_seed(seed, comm.rank, step))


def sharded_evaluation(
    network: Sequential, sets: Sequence[tuple[Any, Any]], comm: Communicator, *, loss: bool = False
) -> list[tuple[float, float]]:
    """``(accuracy, mean loss)`` on each ``(x, t)`` set (NaN for an empty set; the loss
    NaN unless ``loss``): each rank counts its contiguous shard and the (correct, summed
    loss, count) triples are summed in one allreduce. Every rank first takes rank 0's
    buffers (BatchNorm's running statistics, which training keeps per rank), so the
    network evaluated is the one rank 0 saves."""
    for k in list(network.buffers):
        network.buffers[k] = comm.bcast(network.buffers[k])
    sums: list[float] = []
    for x, t in sets:
        rows = share(np.arange(x.shape[0]), comm.rank, comm.size)
        lo, hi = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0)
        correct, summed = count_correct_and_loss(network, x[lo:hi, ...], t[lo:hi, ...], loss=loss)
        sums += [correct, summed, hi - lo]  # float64: counts stay exact below 2**53
    total = np.asarray(comm.allreduce(np.asarray(sums, dtype=np.float64))).reshape(-1, 3)
    return [mean_metrics(c, s, n, loss) for c, s, n in total.tolist()]


def mean_metrics(correct: float, summed: float, n: float, loss: bool) -> tuple[float, float]:
    """``(accuracy, mean loss)`` from sums over ``n`` examples (NaN where undefined)."""
    nan = float("nan")
    if not n:
        return nan, nan
    return correct / n, summed / n if loss else nan


def rank_seed(seed: int | None, rank: int, step: int = 0) -> int | None:
    """The seed of rank ``rank``'s random stream (dropout masks) in a job seeded ``seed``.

    Rank 0 keeps ``seed``, so a one-process run is unchanged; every other rank gets a
    distinct seed mixed from ``(seed, rank)``, and ``step`` when non-zero (a stream
    restarted after a resume at optimizer step ``step`` does not repeat the first
    one), by ``numpy.random.SeedSequence``. None (fresh entropy) stays None.
    """
    if seed is None or rank == 0:
        return seed
    if rank < 0 or seed < 0 or step < 0:
        raise ValueError(
            f"seed, rank and step must be non-negative, got seed {seed}, rank {rank}, step {step}"
        )
    entropy = [seed, rank, step] if step else [seed, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])
