"""A training run's state in a checkpoint: what is saved, how it is checked, how it
is restored; and :func:`load_network`, the network alone.

A checkpoint (:mod:`xpcnn.checkpoint`: an ``.npz`` with JSON metadata, no pickle)
holds the network's parameters and buffers (``params/``, ``buffers/``), the
optimizer state (``optim/``), the dropout generators (``rng/``), the shuffle of an
epoch stopped mid-way (``trainer/perm``), and in its metadata the model's
configuration, the optimizer, the progress (epoch, step, the shuffle generator)
and the history, and the state of the extensions that keep one (``extensions``:
early stopping, learning-rate schedules). Everything is checked against the trainer
before anything changes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import Device, to_numpy
from ..checkpoint import CheckpointError, check_compatible, load_checkpoint, save_checkpoint
from ..models import Sequential, build_model
from ..optim import Optimizer
from .batches import BatchIterator
from .extensions import Extension

__all__ = [
    "check_state",
    "extension_states",
    "load_extension_states",
    "load_network",
    "load_network_with_meta",
    "load_state",
    "save_state",
]


def save_state(
    path: str | os.PathLike[str],
    network: Sequential,
    optimizer: Optimizer,
    batches: BatchIterator,
    meta: Mapping[str, Any],
) -> Path:
    """Write the network, the optimizer state, the progress and the RNG state to an
    ``.npz`` (atomic), with ``meta`` (the run's epochs, history, ...) added."""
    arrays = network.state_dict()
    arrays.update({f"optim/{k}": to_numpy(v) for k, v in optimizer.state_arrays().items()})
    arrays.update({f"rng/{k}": v for k, v in network.random_state().items()})
    if batches.perm is not None and batches.step:
        arrays["trainer/perm"] = batches.perm
    meta = dict(meta)
    meta["trainer"] = {
        "epoch": batches.epoch,
        "step_in_epoch": batches.step,
        "mini_batch_size": batches.batch_size,
        "rng": batches.rng.bit_generator.state,
        **meta.get("trainer", {}),
    }
    return save_checkpoint(
        path, arrays, {"model": network.config, **_optimizer_meta(optimizer), **meta}
    )


def _optimizer_meta(optimizer: Optimizer) -> dict[str, Any]:
    return {
        "optimizer": {
            "name": type(optimizer).__name__,
            "hyperparameters": optimizer.hyperparameters(),
            "iter": optimizer.iter,
        }
    }


def load_state(
    source: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    network: Sequential,
    optimizer: Optimizer,
    batches: BatchIterator,
) -> None:
    """Restore a checkpoint's ``arrays`` and ``meta`` (read from ``source``, named in
    errors) into the network, the optimizer and the batch iterator, after
    :func:`check_state` (nothing changes when it raises)."""
    check_state(source, arrays, meta, network, optimizer, batches)
    dev = network.device
    network.load_state_dict(dict(arrays))
    optim = {
        k.removeprefix("optim/"): dev.asarray(v) for k, v in _prefixed(arrays, "optim/").items()
    }
    optimizer.load_state_arrays(optim, meta["optimizer"]["iter"])
    network.set_random_state(
        {k.removeprefix("rng/"): v for k, v in _prefixed(arrays, "rng/").items()}
    )
    tr = meta["trainer"]
    batches.epoch, batches.step = tr["epoch"], tr["step_in_epoch"]
    batches.rng.bit_generator.state = tr["rng"]
    batches.perm = arrays.get("trainer/perm")


def check_state(
    source: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    network: Sequential,
    optimizer: Optimizer,
    batches: BatchIterator,
) -> None:
    """Raise :class:`~xpcnn.checkpoint.CheckpointError`, naming ``source`` and the fix,
    unless the checkpoint fits as a whole: the same architecture, optimizer, batch
    size, layers with generators and (mid-epoch) training-set size."""
    check_compatible(network.state_shapes(), _prefixed(arrays, ("params/", "buffers/")))
    tr, opt = meta.get("trainer"), meta.get("optimizer")
    if not isinstance(tr, dict) or not isinstance(opt, dict):
        raise CheckpointError(
            f"checkpoint {source} has no trainer state: it was not written by Trainer.save_checkpoint"
        )
    if tr.get("mini_batch_size") != batches.batch_size:
        raise CheckpointError(
            f"checkpoint {source} was trained with mini_batch_size {tr.get('mini_batch_size')}, "
            f"not {batches.batch_size}: resume with the same batch size"
        )
    _check_optimizer(source, arrays, opt, network, optimizer)
    seeded = {str(i) for i, layer in enumerate(network.layers) if layer.rng_state() is not None}
    for k in _prefixed(arrays, "rng/"):
        if k.removeprefix("rng/").split("/", 1)[0] not in seeded:
            raise CheckpointError(
                f"checkpoint {source}: random state {k} has no layer with a generator in this network"
            )
    perm = arrays.get("trainer/perm")
    if perm is not None and perm.shape != (batches.n,):
        raise CheckpointError(
            f"checkpoint {source} stopped mid-epoch on a training set of {perm.shape[0]} "
            f"examples, not {batches.n}: resume on the same training set"
        )
    state, kind = tr.get("rng"), type(batches.rng.bit_generator).__name__
    if not isinstance(state, dict) or state.get("bit_generator") != kind:
        raise CheckpointError(
            f"checkpoint {source} holds no {kind} shuffle state; re-save it with this xpcnn"
        )


def _check_optimizer(
    source: Any,
    arrays: Mapping[str, np.ndarray],
    opt: Mapping[str, Any],
    network: Sequential,
    optimizer: Optimizer,
) -> None:
    name = type(optimizer).__name__
    if opt.get("name") != name:
        raise CheckpointError(
            f"checkpoint {source} was trained with optimizer {opt.get('name')}, not {name}: "
            "resume with the same optimizer"
        )
    shapes = {k: tuple(v.shape) for k, v in network.params.items()}
    for k, a in _prefixed(arrays, "optim/").items():
        slot, _, key = k.removeprefix("optim/").partition("/")
        if slot not in optimizer.state or shapes.get(key) != tuple(a.shape):
            raise CheckpointError(
                f"checkpoint {source}: optimizer state {k} {tuple(a.shape)} does not fit {name} "
                "on this network; resume with the checkpoint's model and optimizer"
            )


def extension_states(extensions: Sequence[Extension]) -> dict[str, Any]:
    """Each stateful extension's :meth:`~Extension.state_dict`, by its state key."""
    states: dict[str, Any] = {}
    for ext in extensions:
        state = ext.state_dict()
        if state is None:
            continue
        if ext.state_key in states:
            raise ValueError(
                f"two extensions keep state under the name {ext.state_key!r}: "
                "give one another name (its `name` attribute)"
            )
        states[ext.state_key] = state
    return states


def load_extension_states(
    source: Any, states: Mapping[str, Any] | None, extensions: Sequence[Extension]
) -> None:
    """Give each extension its state of a checkpoint (those without one keep theirs);
    all or none: a :class:`~xpcnn.checkpoint.CheckpointError` leaves every extension
    as it was."""
    if states is None:
        return
    if not isinstance(states, Mapping):
        raise CheckpointError(f"checkpoint {source}: damaged extension states")
    before = [(ext, ext.state_dict()) for ext in extensions]
    key = ""
    try:
        for ext in extensions:
            key = ext.state_key
            if key in states:
                ext.load_state_dict(states[key])
    except (KeyError, TypeError, ValueError) as exc:
        for ext, state in before:
            if state is not None:
                ext.load_state_dict(state)
        raise CheckpointError(
            f"checkpoint {source}: the state of extension {key} does not fit ({exc}); "
            "resume with the checkpoint's extensions and options"
        ) from None


def _prefixed(arrays: Mapping[str, Any], prefixes: str | tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in arrays.items() if k.startswith(prefixes)}


def load_network_with_meta(
    path: str | os.PathLike[str], device: str | Device = "cpu"
) -> tuple[Sequential, dict[str, Any]]:
    """:func:`load_network`, and the checkpoint's metadata (its ``"run"`` options,
    ``"history"``, ...) as a dict."""
    arrays, meta = load_checkpoint(path)
    try:
        network = build_model(meta["model"], device=device)
    except (KeyError, TypeError, ValueError) as exc:  # not a named network's configuration
        why = "no model configuration" if isinstance(exc, KeyError) else str(exc)
        raise CheckpointError(f"{path}: {why}") from None
    check_compatible(network.state_shapes(), _prefixed(arrays, ("params/", "buffers/")))
    network.load_state_dict(arrays)
    return network, meta


def load_network(path: str | os.PathLike[str], device: str | Device = "cpu") -> Sequential:
    """The network of a checkpoint (``xpcnn train``, :meth:`Trainer.save_checkpoint
    <xpcnn.train.Trainer.save_checkpoint>` or :meth:`Sequential.save_params` of a
    named network), rebuilt and loaded on ``device`` (``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` or a :class:`~xpcnn.backend.Device`).

    Raises :class:`~xpcnn.checkpoint.CheckpointError` (a ``ValueError``) for a damaged
    file, one of another architecture, or a network that cannot be rebuilt from its
    file (built with ``NetBuilder``: build it again and call ``load_params``)."""
    return load_network_with_meta(path, device)[0]
