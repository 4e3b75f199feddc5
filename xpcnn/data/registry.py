"""The data sets xpcnn knows, one :class:`DatasetInfo` record each.

A new data set in a format xpcnn reads (IDX, or CIFAR-10's binary batches) is
one record in :data:`DATASETS`: its name, class names, image shape, file names,
download mirrors and MD5s. :mod:`xpcnn.data.sources` finds or downloads the
files from it and :mod:`xpcnn.data.datasets` loads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["CIFAR10_FILES", "DATASETS", "IDX_FILES", "DatasetInfo"]

#: Array name -> file stem of the IDX data sets; the file is ``<stem>.gz`` or ``<stem>``.
IDX_FILES: dict[str, str] = {
    "x_train": "train-images-idx3-ubyte",
    "t_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "t_test": "t10k-labels-idx1-ubyte",
}

#: CIFAR-10's binary batches (the training set is the first five), each ``<stem>.bin``.
CIFAR10_FILES: dict[str, str] = {
    **{f"data_batch_{i}": f"data_batch_{i}" for i in range(1, 6)},
    "test_batch": "test_batch",
}


@dataclass(frozen=True)
class DatasetInfo:
    """What xpcnn knows of one data set.

    Attributes
    ----------
    name
        The name ``--dataset`` and :func:`~xpcnn.data.load_dataset` take.
    class_names
        Human-readable name of each class, indexed by label.
    image_shape
        One image, ``(C, H, W)``.
    reader
        How the files are read: ``"bundled"`` (inside the package), ``"idx"`` or
        ``"cifar10"`` (CIFAR-10's binary batches).
    files, suffixes
        Key -> file stem, and the suffixes tried in order (``.gz`` before none).
    mirrors, md5
        Base URLs tried in order, and the MD5 of each file they serve.
    archive
        The one file downloaded when the files come packed (CIFAR-10's tar.gz),
        else None (each file is downloaded).
    folders
        Names of a subfolder of a data folder that may hold the files, besides ``name``
        (the archive's own folder).
    mirror_symmetric
        Whether a left-right mirror image still shows its class (False for digits:
        ``--augment flip`` is refused).
    """

    name: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    reader: str
    files: Mapping[str, str] = field(default_factory=dict)
    suffixes: tuple[str, ...] = ("",)
    mirrors: tuple[str, ...] = ()
    md5: Mapping[str, str] = field(default_factory=dict)
    archive: str | None = None
    folders: tuple[str, ...] = ()
    mirror_symmetric: bool = True


_DIGITS = tuple(str(d) for d in range(10))

DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo(
            "mnist-sample", _DIGITS, (1, 28, 28), "bundled", IDX_FILES, mirror_symmetric=False
        ),
        DatasetInfo(
            name="mnist",
            class_names=_DIGITS,
            mirrors=(
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
                "http://yann.lecun.com/exdb/mnist/",
            ),
            md5={
                "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
            },
            image_shape=(1, 28, 28),
            reader="idx",
            files=IDX_FILES,
            suffixes=(".gz", ""),
            mirror_symmetric=False,  # a mirrored 2, 3, 4, 5, 7 or 9 is no digit
        ),
        DatasetInfo(
            name="fashion-mnist",
            class_names=(
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ),
            mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            md5={
                "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
            },
            image_shape=(1, 28, 28),
            reader="idx",
            files=IDX_FILES,
            suffixes=(".gz", ""),
        ),
        DatasetInfo(
            name="cifar10",
            class_names=(
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ),
            image_shape=(3, 32, 32),
            reader="cifar10",
            files=CIFAR10_FILES,
            suffixes=(".bin",),
            mirrors=("https://www.cs.toronto.edu/~kriz/",),
            md5={"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"},
            archive="cifar-10-binary.tar.gz",
            folders=("cifar-10-batches-bin",),
        ),
    )
}
