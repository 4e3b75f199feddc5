"""MNIST / Fashion-MNIST / bundled sample: finding, downloading and loading the files.

Where the IDX files come from, first match wins:

1. an explicit ``data_dir`` (an error if the files are not there);
2. the folder in the ``XPCNN_DATA`` environment variable;
3. the user cache ``$XDG_CACHE_HOME/xpcnn/<dataset>`` (default ``~/.cache/xpcnn/<dataset>``);
4. a download into that cache from :data:`MIRRORS`, checked against :data:`MD5`.

In folders 1 and 2 the files may sit directly inside or in a ``<dataset>/`` subfolder.
Files are the standard names, gzip-compressed (``.gz``) or not. Nothing is ever
pickled; the gzip files decode in well under a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.resources
import os
import sys
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from xpcnn.data.idx import IDXError, read_idx
from xpcnn.inputs import as_input

__all__ = [
    "CLASS_NAMES",
    "DATASET_NAMES",
    "ENV_VAR",
    "FILES",
    "MD5",
    "MIRRORS",
    "Dataset",
    "DatasetError",
    "cache_dir",
    "download",
    "download_file",
    "load_dataset",
    "load_mnist",
    "resolve_files",
]

DATASET_NAMES: tuple[str, ...] = ("mnist-sample", "mnist", "fashion-mnist")
ENV_VAR = "XPCNN_DATA"
SAMPLE_RESOURCE = "mnist_sample.npz"

#: Array name -> file stem; the file is ``<stem>.gz`` or ``<stem>``.
FILES: dict[str, str] = {
    "x_train": "train-images-idx3-ubyte",
    "t_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "t_test": "t10k-labels-idx1-ubyte",
}

#: Base URLs tried in order; the file name is appended.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

#: MD5 of the original .gz files on the public mirrors (what downloads are checked against).
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(d) for d in range(10)),
    "mnist-sample": tuple(str(d) for d in range(10)),
    "fashion-mnist": (
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
}

_CHUNK = 1 << 16
_USER_AGENT = "xpcnn (python urllib)"


class DatasetError(RuntimeError):
    """The data set files could not be found or downloaded."""


# ---------------------------------------------------------------------------
# Dataset


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image data set held as host (NumPy) arrays.

    Attributes
    ----------
    x_train, x_test
        uint8 images, shape ``(N, 1, 28, 28)`` (channel axis included, values 0..255).
    t_train, t_test
        uint8 class labels, shape ``(N,)``, values in ``range(len(class_names))``.
    name
        ``"mnist"``, ``"fashion-mnist"`` or ``"mnist-sample"``.
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
# Where the files are


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    if key not in DATASET_NAMES:
        valid = ", ".join(repr(n) for n in DATASET_NAMES)
        raise ValueError(f"unknown dataset {name!r}; valid names are {valid}")
    return key


def cache_dir(name: str) -> Path:
    """The cache folder for a data set: ``$XDG_CACHE_HOME/xpcnn/<name>``.

    ``XDG_CACHE_HOME`` defaults to ``~/.cache`` (also when empty or relative, as the
    XDG spec asks).
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "xpcnn" / _canonical(name)


def _files_in(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Files found in ``folder`` (``.gz`` preferred) and the stems that are missing."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, stem in FILES.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            missing.append(stem)
    return found, missing


def _search(root: Path, name: str) -> dict[str, Path] | None:
    """A complete file set in ``root/<name>`` or directly in ``root``, else None."""
    for folder in (root / name, root):
        found, missing = _files_in(folder)
        if not missing:
            return found
    return None


def _how_to_provide(name: str) -> str:
    names = ", ".join(f"{stem}.gz" for stem in FILES.values())
    return (
        f"Provide the {name} files ({names}; uncompressed copies without .gz also work) "
        "in one of three ways:\n"
        f"  1. pass --data-dir DIR (or data_dir=DIR) naming a folder that holds them "
        f"(directly or in DIR/{name}/);\n"
        f"  2. set the environment variable {ENV_VAR}=DIR (files directly in DIR or in "
        f"DIR/{name}/);\n"
        f"  3. place them in the cache folder {cache_dir(name)}"
    )


def resolve_files(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> dict[str, Path]:
    """Find (or download) the four IDX files of ``name`` ("mnist" or "fashion-mnist").

    Returns a mapping ``{"x_train", "t_train", "x_test", "t_test"} -> Path``. See the
    module docstring for the search order. Raises :class:`DatasetError` when an explicit
    ``data_dir`` lacks the files, or when nothing is found and downloading is off or fails.
    """
    key = _canonical(name)
    if key == "mnist-sample":
        raise ValueError("'mnist-sample' is bundled with the package; it has no IDX files")

    if data_dir is not None:
        root = Path(data_dir).expanduser()
        found = _search(root, key)
        if found is None:
            _, missing = _files_in(root)
            raise DatasetError(
                f"data_dir {root} does not hold the {key} files (looked in {root / key} and "
                f"{root}); missing in {root}: {', '.join(missing)}"
            )
        return found

    env = os.environ.get(ENV_VAR)
    if env:
        found = _search(Path(env).expanduser(), key)
        if found is not None:
            return found

    cache = cache_dir(key)
    found, missing = _files_in(cache)
    if not missing:
        return found
    if not download:
        looked = f"{ENV_VAR}={env} (and its {key}/ subfolder), " if env else ""
        raise DatasetError(
            f"{key} files not found (looked in {looked}{cache}) and download=False.\n"
            + _how_to_provide(key)
        )
    # Only fetch what the cache lacks; files already there are checked by the IDX reader.
    _download_files(
        key,
        cache,
        [f"{stem}.gz" for stem in missing],
        mirrors=MIRRORS[key],
        md5=MD5[key],
        timeout=30.0,
        progress=progress,
    )
    found, missing = _files_in(cache)
    if missing:  # a download that "succeeded" must have produced every file
        raise DatasetError(f"download into {cache} left {', '.join(missing)} missing")
    return found


# ---------------------------------------------------------------------------
# Download


def _fetch(url: str, dest: Path, md5: str, *, timeout: float, progress: bool) -> None:
    """Stream ``url`` into a temp file next to ``dest``; rename only when the MD5 matches."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(request, timeout=timeout) as response,
        ):
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            digest = hashlib.md5(usedforsecurity=False)
            received = 0
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=None if progress else True,  # None: off when not a TTY
                file=sys.stderr,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        # http.client returns short reads silently when the server closes early.
        if total is not None and received != total:
            raise OSError(f"incomplete transfer: got {received} of {total} bytes")
        if digest.hexdigest() != md5.lower():
            raise OSError(f"MD5 mismatch: expected {md5.lower()}, got {digest.hexdigest()}")
        os.replace(tmp, dest)
    finally:
        # After a successful os.replace the temp name no longer exists.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def download_file(
    filename: str,
    dest_dir: str | os.PathLike[str],
    *,
    md5: str,
    mirrors: Sequence[str],
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download ``filename`` into ``dest_dir`` from the first mirror that serves it intact.

    Each mirror is a base URL (``filename`` is appended). The body is streamed into a
    temporary file in ``dest_dir``, checked against ``md5`` (hex) and only then renamed
    to ``dest_dir/filename``; the temporary file is removed on any failure.

    Returns the final path. Raises :class:`DatasetError` naming each mirror's failure.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / filename
    failures: list[str] = []
    for base in mirrors:
        url = base if base.endswith(filename) else base.rstrip("/") + "/" + filename
        try:
            _fetch(url, dest, md5, timeout=timeout, progress=progress)
        except (OSError, http.client.HTTPException, ValueError) as e:
            # URLError/HTTPError/timeouts are OSErrors; HTTPException covers IncompleteRead.
            failures.append(f"{url}: {type(e).__name__}: {e}")
            continue
        return dest
    if not failures:
        failures.append("no mirrors given")
    raise DatasetError(f"could not download {filename}:\n  " + "\n  ".join(failures))


def download(
    name: str,
    dest_dir: str | os.PathLike[str] | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    md5: Mapping[str, str] | None = None,
    only: Sequence[str] | None = None,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download the four ``.gz`` files of ``name`` into ``dest_dir`` (default: the cache).

    ``mirrors`` replaces :data:`MIRRORS` ``[name]`` and ``md5`` (file name -> hex digest)
    replaces :data:`MD5` ``[name]``; both exist so tests can serve small local files.
    ``only`` restricts the download to some file names. Returns ``dest_dir``.

    Raises :class:`DatasetError` listing every mirror's failure and the three ways to
    provide the files by hand.
    """
    key = _canonical(name)
    if key not in MIRRORS:
        raise ValueError(f"{key!r} cannot be downloaded (it is bundled with the package)")
    dest = Path(dest_dir) if dest_dir is not None else cache_dir(key)
    names = list(only) if only is not None else [f"{stem}.gz" for stem in FILES.values()]
    _download_files(
        key,
        dest,
        names,
        mirrors=tuple(mirrors) if mirrors is not None else MIRRORS[key],
        md5=dict(md5) if md5 is not None else MD5[key],
        timeout=timeout,
        progress=progress,
    )
    return dest


def _download_files(
    key: str,
    dest: Path,
    names: Sequence[str],
    *,
    mirrors: Sequence[str],
    md5: Mapping[str, str],
    timeout: float,
    progress: bool,
) -> None:
    for filename in names:
        try:
            download_file(
                filename,
                dest,
                md5=md5[filename],
                mirrors=mirrors,
                timeout=timeout,
                progress=progress,
            )
        except DatasetError as e:
            raise DatasetError(
                f"could not download the {key} data set; {e}\n{_how_to_provide(key)}"
            ) from e


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
        (60,000 / 10,000).
    data_dir
        Folder holding the IDX files (directly or in ``<name>/``). If given and the files
        are missing, :class:`DatasetError` is raised instead of downloading.
    download
        Download into the cache when the files are not found locally.
    progress
        Show a progress bar while downloading (only on a terminal).

    Returns
    -------
    Dataset
        ``x_train``/``x_test`` uint8 ``(N, 1, 28, 28)``, ``t_train``/``t_test`` uint8
        ``(N,)``; the arrays are read-only.

    Raises
    ------
    ValueError
        Unknown ``name`` (the message lists the valid ones).
    DatasetError
        Files not found and not downloadable.
    IDXError
        A local file is malformed, or a label file does not match its image file.
    """
    key = _canonical(name)
    if key == "mnist-sample":
        return _load_sample()
    files = resolve_files(key, data_dir, download=download, progress=progress)
    return _load_idx_set(key, files)


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
        Images as ``(N, 784)``; otherwise ``(N, 1, 28, 28)``.
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
