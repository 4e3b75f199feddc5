"""One training step, apart from the loop (Chainer's ``StandardUpdater``).

:class:`StandardUpdater` owns the step: it takes a batch's rows of the training
set on the device, computes the gradients (forward and backward) and applies the
optimizer's update. The loop (:class:`~xpcnn.train.Trainer`) only calls
:meth:`~StandardUpdater.update` with each :class:`~xpcnn.train.Batch`.

The step is split as :meth:`~StandardUpdater.gradients` and
:meth:`~StandardUpdater.apply` so that a wrapper can act between them (the
data-parallel gradient reduction, :class:`xpcnn.train.parallel.DataParallelUpdater`).
An updater of another kind (a compiled step: forward, backward and update traced
into one function) replaces :meth:`~StandardUpdater.update` as a whole; anything
with the :class:`Updater` interface can stand in for it.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..inputs import as_input
from ..models import Sequential
from ..optim import Optimizer
from .augment import Augment
from .batches import Batch

__all__ = ["StandardUpdater", "Updater"]


class Updater(Protocol):
    """What the loop needs of a step object."""

    network: Sequential
    optimizer: Optimizer

    def update(self, batch: Batch) -> Any:
        """One optimizer step on ``batch``; returns its loss (0-d, on the device:
        the loop copies losses to the host only every few steps)."""
        ...


class StandardUpdater:
    """Forward, backward and the optimizer's update of ``network`` on batches of
    ``x_train``, ``t_train``.

    Parameters
    ----------
    network : Sequential
    optimizer : Optimizer
        Updates ``network.params`` in place of each key.
    x_train, t_train : arrays on the network's device
        Images (N, *input_dim) or flat (N, D), uint8 pixels or floats; labels (N,)
        integers or (N, K) one-hot. Batches are taken from them on the device.
    augment : :class:`~xpcnn.train.augment.Augment`, optional
        Crops and flips each batch's images (``input_dim`` (C, H, W)) on the device.
    """

    def __init__(
        self,
        network: Sequential,
        optimizer: Optimizer,
        x_train: Any,
        t_train: Any,
        augment: Augment | None = None,
    ):
        self.network, self.optimizer = network, optimizer
        self.x_train, self.t_train = x_train, t_train
        self.augment = augment

    def take(self, indices: np.ndarray, epoch: int = 0) -> tuple[Any, Any]:
        """The rows ``indices`` (host int64) of the training set, on the device:
        images augmented as in epoch ``epoch`` when asked, then converted to the
        network's dtype (uint8 scaled there); labels as stored."""
        return self.rows(*self.source(indices, epoch))

    def source(self, indices: np.ndarray, epoch: int = 0) -> tuple[Any, Any, Any, tuple[Any, ...]]:
        """What :meth:`rows` takes for the batch ``indices`` of epoch ``epoch``: the
        training set, the indices on the device, and the epoch's augmentation draws
        (:meth:`Augment.on_device <xpcnn.train.augment.Augment.on_device>`, ``()``
        without augmentation)."""
        dev = self.network.device
        drawn = (
            ()
            if self.augment is None
            else self.augment.on_device(epoch, self.x_train.shape[0], dev)
        )
        return self.x_train, self.t_train, dev.asarray(indices), drawn

    def rows(
        self, x_train: Any, t_train: Any, i: Any, drawn: tuple[Any, ...] = ()
    ) -> tuple[Any, Any]:
        """The batch of rows ``i`` of ``x_train``, ``t_train``, augmented by ``drawn`` if
        given, as :meth:`take` returns it. Device work only: a compiled step traces it."""
        net = self.network
        xp = net.device.xp
        x = xp.reshape(xp.take(x_train, i, axis=0), (-1, *net.input_dim))
        if self.augment is not None and drawn:  # on the pixels: uint8 moves 1/4 of float32's bytes
            x = self.augment.apply(x, i, drawn)
        return as_input(x, net.dtype), xp.take(t_train, i, axis=0)

    def gradients(self, x: Any, t: Any) -> tuple[dict[str, Any], Any]:
        """Forward and backward on a prepared batch: ``(grads by parameter key, loss)``,
        the mean over the batch."""
        grads = self.network.gradient(x, t)
        return grads, self.network.last_layer.loss

    def apply(self, grads: dict[str, Any]) -> None:
        """The optimizer's update of the network's parameters with ``grads``."""
        self.optimizer.update(self.network.params, grads)

    def update(self, batch: Batch) -> Any:
        grads, loss = self.gradients(*self.take(batch.indices, batch.epoch))
        self.apply(grads)
        return loss
