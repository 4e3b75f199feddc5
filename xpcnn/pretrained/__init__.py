"""The book's trained networks, bundled: SimpleConvNet and DeepConvNet on full MNIST.

The book ships the parameters its chapter 7 and 8 scripts load as pickles
(``ch07/params.pkl``, ``ch08/deep_convnet_params.pkl``). xpcnn ships them as
checkpoints (``.npz`` read with ``allow_pickle=False``) in this package, with
``PROVENANCE.json`` beside them: for each network the command that trained it, its
seed, the code's commit, its accuracy on the whole MNIST test set and the file's
SHA-256, which :func:`load_pretrained` checks before it reads the file.

>>> import xpcnn
>>> net = xpcnn.load_pretrained("deep")            # DeepConvNet, float32, on NumPy
>>> net.predict(images).argmax(axis=1)             # images: uint8 (N, 1, 28, 28)

On the command line ``pretrained:simple`` and ``pretrained:deep`` stand wherever a
checkpoint goes (``xpcnn evaluate pretrained:deep --dataset mnist-sample``).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any

from ..backend import Device
from ..checkpoint import CheckpointError
from ..errors import ConfigError
from ..models import Sequential
from ..train import load_network

__all__ = [
    "NAMES",
    "PREFIX",
    "checkpoint_path",
    "load_pretrained",
    "provenance",
    "resolve_checkpoint",
]

#: The spelling of a bundled network where a checkpoint path goes: ``pretrained:NAME``.
PREFIX = "pretrained:"
PROVENANCE_FILE = "PROVENANCE.json"


def _resource(name: str) -> Path:
    ref = importlib.resources.files(__name__).joinpath(name)
    if not isinstance(ref, os.PathLike):  # a zip import: no file to hand to np.load
        raise CheckpointError(
            f"xpcnn's bundled {name} is inside an archive, not a file: install xpcnn unzipped "
            "(pip install xpcnn)"
        )
    return Path(ref)


def provenance() -> dict[str, dict[str, Any]]:
    """``PROVENANCE.json``: for each bundled network (``"simple"``, ``"deep"``) its
    ``file``, ``sha256``, ``model``, ``recipe``, ``command``, ``seed``, ``code``
    (the commit it was trained with), ``data``, ``test_accuracy`` (whole MNIST
    test set), ``trained`` (when and on what) and ``source_sha256`` (the training
    checkpoint it was taken from)."""
    return dict(json.loads(_resource(PROVENANCE_FILE).read_text(encoding="utf-8")))


NAMES: tuple[str, ...] = tuple(provenance())


def checkpoint_path(name: str) -> Path:
    """The bundled checkpoint of network ``name`` (one of :data:`NAMES`), once its
    SHA-256 matches ``PROVENANCE.json``.

    Raises :class:`~xpcnn.errors.ConfigError` for an unknown name and
    :class:`~xpcnn.checkpoint.CheckpointError` for a file that was altered or damaged
    (reinstall xpcnn)."""
    record = provenance().get(name)
    if record is None:
        raise ConfigError(
            f"no pretrained network {name!r}: choose one of {', '.join(NAMES)} "
            f"(e.g. {PREFIX}{NAMES[0]})"
        )
    path = _resource(record["file"])
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise CheckpointError(
            f"bundled pretrained {name!r} ({path}) cannot be read ({exc.strerror}); reinstall xpcnn"
        ) from None
    if digest != record["sha256"]:
        raise CheckpointError(
            f"bundled pretrained {name!r} ({path}) has SHA-256 {digest[:16]}..., not the "
            f"{record['sha256'][:16]}... of {PROVENANCE_FILE}: the file was altered or damaged; "
            "reinstall xpcnn"
        )
    return path


def load_pretrained(name: str, device: str | Device = "cpu") -> Sequential:
    """The bundled network ``name`` (``"simple"``: SimpleConvNet, the book's
    ``train_convnet.py`` recipe; ``"deep"``: DeepConvNet, ``train_deepnet.py``),
    trained on full MNIST, on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
    :class:`~xpcnn.backend.Device` of any backend).

    It takes uint8 or float images ``(N, 1, 28, 28)`` (or flat ``(N, 784)``) and
    returns float32 scores ``(N, 10)`` from ``predict``. The file's SHA-256 is
    checked first (:func:`checkpoint_path`); :func:`provenance` says how it was made.
    """
    return load_network(checkpoint_path(name), device)


def resolve_checkpoint(spec: str | os.PathLike[str]) -> Path:
    """A checkpoint argument as a path: ``pretrained:NAME`` gives the bundled file
    (verified, :func:`checkpoint_path`), anything else the path it names."""
    text = os.fspath(spec)
    if isinstance(text, str) and text.startswith(PREFIX):
        return checkpoint_path(text.removeprefix(PREFIX))
    return Path(text)
