"""Where the MNIST / Fashion-MNIST IDX files come from, and their verified download.

First match wins:

1. an explicit ``data_dir`` (an error if the files are not there);
2. the folder in the ``XPCNN_DATA`` environment variable;
3. the user cache ``$XDG_CACHE_HOME/xpcnn/<dataset>`` (default ``~/.cache/xpcnn/<dataset>``);
4. a download into that cache from :data:`MIRRORS`, checked against :data:`MD5`.

In folders 1 and 2 the files may sit directly inside or in a ``<dataset>/`` subfolder.
Files are the standard names, gzip-compressed (``.gz``) or not. Loading them is
:mod:`xpcnn.data.datasets`' job.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm import tqdm

from xpcnn._atomic import atomic_write
from xpcnn.errors import XpcnnError

__all__ = [
    "DATASET_NAMES",
    "ENV_VAR",
    "FILES",
    "MD5",
    "MIRRORS",
    "DatasetError",
    "cache_dir",
    "canonical_name",
    "download",
    "download_file",
    "resolve_files",
]

DATASET_NAMES: tuple[str, ...] = ("mnist-sample", "mnist", "fashion-mnist")
ENV_VAR = "XPCNN_DATA"

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

_CHUNK = 1 << 16
_USER_AGENT = "xpcnn (python urllib)"


class DatasetError(XpcnnError, RuntimeError):
    """The data set files could not be found or downloaded."""


# ---------------------------------------------------------------------------
# Where the files are


def canonical_name(name: str) -> str:
    """``name`` as one of :data:`DATASET_NAMES` (case and ``_`` / ``-`` ignored), else ValueError."""
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
    return root / "xpcnn" / canonical_name(name)


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
        f"provide the {name} files ({names}; uncompressed copies also work) with "
        f"--data-dir DIR (data_dir=DIR in Python) or {ENV_VAR}=DIR, the files directly in DIR "
        f"or in DIR/{name}/, or put them in the cache folder {cache_dir(name)}"
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
    key = canonical_name(name)
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
            f"{key} files not found (looked in {looked}{cache}) and download=False; "
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
    """Stream ``url`` into ``dest`` atomically: it appears only when complete with a matching MD5."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with (
        urllib.request.urlopen(request, timeout=timeout) as response,
        atomic_write(dest) as out,
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
        # Raised inside the block, so atomic_write discards the temporary file.
        # http.client returns short reads silently when the server closes early.
        if total is not None and received != total:
            raise OSError(f"incomplete transfer: got {received} of {total} bytes")
        if digest.hexdigest() != md5.lower():
            raise OSError(f"MD5 mismatch: expected {md5.lower()}, got {digest.hexdigest()}")


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
            reason = " ".join(str(e).split())  # one line, whatever the exception holds
            failures.append(f"{url}: {type(e).__name__}: {reason}")
            continue
        return dest
    if not failures:
        failures.append("no mirrors given")
    raise DatasetError(f"could not download {filename} ({'; '.join(failures)})")


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
    key = canonical_name(name)
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
            raise DatasetError(f"{e}; {_how_to_provide(key)}") from e
