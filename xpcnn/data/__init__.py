"""Data sets for xpcnn: MNIST, Fashion-MNIST, CIFAR-10 and a bundled MNIST sample.

Each data set is one record (:class:`DatasetInfo`) in :data:`DATASETS`
(:mod:`~xpcnn.data.registry`). The modules import one way:
:mod:`~xpcnn.data.idx` reads IDX files and :mod:`~xpcnn.data.cifar` CIFAR-10's binary
batches (and unpacks its archive), :mod:`~xpcnn.data.sources` finds the files or
downloads them (mirrors, MD5) and :mod:`~xpcnn.data.datasets` loads them (or the
bundled sample) as a :class:`Dataset`.

>>> from xpcnn.data import load_dataset, load_mnist
>>> ds = load_dataset("mnist-sample")          # 5,000 / 1,000 images, no network
>>> (x_train, t_train), (x_test, t_test) = load_mnist(dataset="mnist-sample")
"""

from xpcnn.data.cifar import CIFARError, read_cifar_batch
from xpcnn.data.datasets import CLASS_NAMES, Dataset, load_dataset, load_mnist
from xpcnn.data.idx import IDXError, read_idx, write_idx
from xpcnn.data.registry import DATASETS, DatasetInfo
from xpcnn.data.sources import (
    DATASET_NAMES,
    ENV_VAR,
    FILES,
    MD5,
    MIRRORS,
    DatasetError,
    cache_dir,
    download,
    download_file,
    resolve_files,
)

__all__ = [
    "CLASS_NAMES",
    "DATASETS",
    "DATASET_NAMES",
    "ENV_VAR",
    "FILES",
    "MD5",
    "MIRRORS",
    "CIFARError",
    "Dataset",
    "DatasetError",
    "DatasetInfo",
    "IDXError",
    "cache_dir",
    "download",
    "download_file",
    "load_dataset",
    "load_mnist",
    "read_cifar_batch",
    "read_idx",
    "resolve_files",
    "write_idx",
]
