"""Loading the data sets: the IDX files of MNIST / Fashion-MNIST and CIFAR-10's binary
batches (found or downloaded by :mod:`xpcnn.data.sources`) and the bundled sample, as a
:class:`Dataset`; the book's :func:`load_mnist`. Nothing is ever pickled.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xpcnn.data import cifar
from xpcnn.data.idx import IDXError, read_idx
from xpcnn.data.registry import DATASETS
from xpcnn.data.sources import FILES, DatasetError, canonical_name, resolve_files
from xpcnn.inputs import as_input

__all__ = ["CLASS_NAMES", "Dataset", "load_dataset", "load_mnist"]

SAMPLE_RESOURCE = "mnist_sample.npz"

#: Each data set's class names, indexed by label (from :data:`~xpcnn.data.registry.DATASETS`).
CLASS_NAMES: dict[str, tuple[str, ...]] = {n: d.class_names for n, d in DATASETS.items()}


# ---------------------------------------------------------------------------
# Dataset


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image data set held as host (NumPy) arrays.

    Attributes
    ----------
    x_train, x_test
        uint8 images ``(N, C, H, W)``, values 0..255: ``(N, 1, 28, 28)`` for MNIST,
        ``(N, 3, 32, 32)`` (RGB) for CIFAR-10.
    t_train, t_test
        uint8 class labels, shape ``(N,)``, values in ``range(len(class_names))``.
    name
        ``"mnist"``, ``"fashion-mnist"``, ``"mnist-sample"`` or ``"cifar10"``.
    class_names
        Human-readable name of each class, indexed by label.
    source
        Where the arrays were read from (a folder, or the bundled sample).
    """

    x_train: np.ndarray
    t_train: np.ndarray
    x_test: np.ndarray
    t_test: np.ndarray
    name: str
    class_names: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, t = getattr(self, f"x_{split}"), getattr(self, f"t_{split}")
            if x.dtype != np.uint8 or x.ndim != 4:
                raise ValueError(f"x_{split} must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
            if t.dtype != np.uint8 or t.ndim != 1:
                raise ValueError(f"t_{split} must be uint8 (N,), got {t.dtype} {t.shape}")
            if len(x) != len(t):
                raise ValueError(
                    f"{split} images and labels disagree in length: {len(x)} images, "
                    f"{len(t)} labels"
                )
            if t.size and int(t.max()) >= len(self.class_names):
                raise ValueError(
                    f"t_{split} holds label {int(t.max())} but there are only "
                    f"{len(self.class_names)} class names"
                )

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={self.x_train.shape}, "
            f"test={self.x_test.shape}, classes={len(self.class_names)}, "
            f"source={self.source!r})"
        )


# ---------------------------------------------------------------------------
# Loading


def _load_idx_set(name: str, files: Mapping[str, Path]) -> Dataset:
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        xp, tp = files[f"x_{split}"], files[f"t_{split}"]
        x = read_idx(xp, ndim=3)
        t = read_idx(tp, ndim=1)
        if len(x) != len(t):
            raise IDXError(
                f"label file {tp} does not match image file {xp}: expected {len(x)} labels, "
                f"found {len(t)}"
            )
        arrays[f"x_{split}"] = x[:, None]  # (N, 28, 28) -> (N, 1, 28, 28), a view
        arrays[f"t_{split}"] = t
    folders = sorted({str(p.parent) for p in files.values()})
    return Dataset(**arrays, name=name, class_names=CLASS_NAMES[name], source=", ".join(folders))


def _load_cifar10(name: str, files: Mapping[str, Path]) -> Dataset:
    folders = sorted({str(p.parent) for p in files.values()})
    arrays = cifar.load_batches(files)
    return Dataset(**arrays, name=name, class_names=CLASS_NAMES[name], source=", ".join(folders))


_READERS = {"idx": _load_idx_set, "cifar10": _load_cifar10}


def _load_sample() -> Dataset:
    ref = importlib.resources.files("xpcnn.data").joinpath(SAMPLE_RESOURCE)
    with ref.open("rb") as f, np.load(f, allow_pickle=False) as npz:
        missing = [k for k in FILES if k not in npz.files]
        if missing:
            raise DatasetError(f"bundled {SAMPLE_RESOURCE} lacks arrays {missing}")
        arrays = {k: npz[k] for k in FILES}
    for a in arrays.values():
        a.flags.writeable = False  # same contract as the IDX loaders' read-only views
    return Dataset(
        **arrays,
        name="mnist-sample",
        class_names=CLASS_NAMES["mnist-sample"],
        source=f"xpcnn.data/{SAMPLE_RESOURCE} (bundled)",
    )


def load_dataset(
    name: str = "mnist-sample",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Load a data set as a :class:`Dataset` of uint8 host arrays.

    Parameters
    ----------
    name
        ``"mnist-sample"`` (5,000 train / 1,000 test images bundled with the package;
        never touches the network or ``data_dir``), ``"mnist"`` or ``"fashion-mnist"``
        (60,000 / 10,000), ``"cifar10"`` (50,000 / 10,000 colour images).
    data_dir
        Folder holding the files (directly or in ``<name>/``; CIFAR-10's also in
        ``cifar-10-batches-bin/``). If given and the files are missing,
        :class:`DatasetError` is raised instead of downloading.
    download
        Download into the cache when the files are not found locally.
    progress
        Show a progress bar while downloading (only on a terminal).

    Returns
    -------
    Dataset
        ``x_train``/``x_test`` uint8 ``(N, C, H, W)``, ``t_train``/``t_test`` uint8
        ``(N,)``; the arrays are read-only.

    Raises
    ------
    ValueError
        Unknown ``name`` (the message lists the valid ones).
    DatasetError
        Files not found and not downloadable, or images of another shape than the
        data set's.
    IDXError, CIFARError
        A local file is malformed (CIFAR-10: a file of the wrong size, a label outside
        0-9), or a label file does not match its image file.
    """
    key = canonical_name(name)
    info = DATASETS[key]
    if info.reader == "bundled":
        return _load_sample()
    files = resolve_files(key, data_dir, download=download, progress=progress)
    ds = _READERS[info.reader](key, files)
    for x in (ds.x_train, ds.x_test):
        if tuple(x.shape[1:]) != info.image_shape:  # another data set's files under this name
            raise DatasetError(
                f"{ds.source}: {key} images are {info.image_shape}, these are "
                f"{tuple(x.shape[1:])}; is it another data set's files?"
            )
    return ds


def load_mnist(
    normalize: bool = True,
    flatten: bool = True,
    one_hot_label: bool = False,
    *,
    dataset: str = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The book's ``load_mnist``: ``((x_train, t_train), (x_test, t_test))``.

    Parameters
    ----------
    normalize
        Images as float32 in ``[0, 1]``; otherwise uint8 in ``0..255``.
    flatten
        Images as ``(N, 784)`` (``(N, C*H*W)``); otherwise ``(N, 1, 28, 28)`` (``(N, C, H, W)``).
    one_hot_label
        Labels as float32 one-hot ``(N, 10)``; otherwise uint8 ``(N,)``.
    dataset, data_dir, download, progress
        As for :func:`load_dataset` (``dataset`` may also be ``"mnist-sample"`` or
        ``"fashion-mnist"``).

    The returned arrays are fresh and writable (the data set itself is not modified).
    """
    ds = load_dataset(dataset, data_dir, download=download, progress=progress)

    def images(x: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), -1) if flatten else x
        return as_input(x, np.float32) if normalize else x.copy()

    def labels(t: np.ndarray) -> np.ndarray:
        if not one_hot_label:
            return t.copy()
        one_hot = np.zeros((t.size, ds.num_classes), dtype=np.float32)
        one_hot[np.arange(t.size), t] = 1.0
        return one_hot

    return (images(ds.x_train), labels(ds.t_train)), (images(ds.x_test), labels(ds.t_test))
