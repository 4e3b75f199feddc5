"""Where a data set's files come from, and their verified download.

First match wins:

1. an explicit ``data_dir`` (an error if the files are not there);
2. the folder in the ``XPCNN_DATA`` environment variable;
3. the user cache ``$XDG_CACHE_HOME/xpcnn/<dataset>`` (default ``~/.cache/xpcnn/<dataset>``);
4. a download into that cache from :data:`MIRRORS`, checked against :data:`MD5`
   (CIFAR-10: one archive, unpacked by :func:`xpcnn.data.cifar.unpack_archive`).

In folders 1 and 2 the files may sit directly inside, in a ``<dataset>/`` subfolder,
or in the archive's own folder (``cifar-10-batches-bin/``). The files and mirrors of
each data set are its record in :mod:`xpcnn.data.registry`; IDX files may be
gzip-compressed (``.gz``) or not. Loading them is :mod:`xpcnn.data.datasets`' job.
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
from xpcnn.data import cifar
from xpcnn.data.registry import DATASETS, IDX_FILES, DatasetInfo
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

DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)
ENV_VAR = "XPCNN_DATA"

#: Array name -> file stem of the IDX data sets; the file is ``<stem>.gz`` or ``<stem>``.
FILES: dict[str, str] = IDX_FILES

#: Base URLs tried in order; the file name is appended. From the records; a test may
#: replace an entry to serve local files.
MIRRORS: dict[str, tuple[str, ...]] = {n: d.mirrors for n, d in DATASETS.items() if d.mirrors}

#: MD5 of each file on the mirrors (what downloads are checked against), by data set.
MD5: dict[str, dict[str, str]] = {n: dict(d.md5) for n, d in DATASETS.items() if d.mirrors}

_CHUNK = 1 << 16
_USER_AGENT = "xpcnn (python urllib)"


class DatasetError(XpcnnError, RuntimeError):
    """The data set files could not be found or downloaded."""


# ---------------------------------------------------------------------------
# Where the files are


def canonical_name(name: str) -> str:
    """``name`` as one of :data:`DATASET_NAMES` (case, ``_`` and ``-`` ignored: ``CIFAR-10``
    is ``cifar10``), else ValueError."""
    key = name.strip().lower().replace("_", "-")
    for known in DATASET_NAMES:
        if key.replace("-", "") == known.replace("-", ""):
            return known
    valid = ", ".join(repr(n) for n in DATASET_NAMES)
    raise ValueError(f"unknown dataset {name!r}; valid names are {valid}")


def cache_dir(name: str) -> Path:
    """The cache folder for a data set: ``$XDG_CACHE_HOME/xpcnn/<name>``.

    ``XDG_CACHE_HOME`` defaults to ``~/.cache`` (also when empty or relative, as the
    XDG spec asks).
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "xpcnn" / canonical_name(name)


def _files_in(folder: Path, info: DatasetInfo) -> tuple[dict[str, Path], list[str]]:
    """Files found in ``folder`` (the first suffix preferred: ``.gz``) and the names
    of those missing."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, stem in info.files.items():
        for suffix in info.suffixes:
            if (candidate := folder / f"{stem}{suffix}").is_file():
                found[key] = candidate
                break
        else:
            missing.append(f"{stem}{info.suffixes[-1]}")
    return found, missing


def _folders(root: Path, info: DatasetInfo) -> list[Path]:
    """Where a data folder may hold the files: ``<name>/``, the archive's folder, itself."""
    return [root / f for f in (info.name, *info.folders)] + [root]


def _search(root: Path, info: DatasetInfo) -> dict[str, Path] | None:
    """A complete file set in one of :func:`_folders`, else None."""
    for folder in _folders(root, info):
        found, missing = _files_in(folder, info)
        if not missing:
            return found
    return None


def _how_to_provide(info: DatasetInfo) -> str:
    names = ", ".join(f"{stem}{info.suffixes[0]}" for stem in info.files.values())
    how = f"unpacked from {info.archive}" if info.archive else "uncompressed copies also work"
    subfolders = " or ".join(f"DIR/{f}/" for f in (info.name, *info.folders))
    return (
        f"provide the {info.name} files ({names}; {how}) with "
        f"--data-dir DIR (data_dir=DIR in Python) or {ENV_VAR}=DIR, the files directly in DIR "
        f"or in {subfolders}, or put them in the cache folder {cache_dir(info.name)}"
    )


def resolve_files(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> dict[str, Path]:
    """Find (or download) the files of data set ``name`` (not the bundled sample).

    Returns a mapping from the keys of its record's ``files`` to paths (IDX data sets:
    ``{"x_train", "t_train", "x_test", "t_test"}``; CIFAR-10: ``data_batch_1`` ..
    ``data_batch_5``, ``test_batch``). See the module docstring for the search order.
    Raises :class:`DatasetError` when an explicit ``data_dir`` lacks the files, or when
    nothing is found and downloading is off or fails.
    """
    key = canonical_name(name)
    info = DATASETS[key]
    if info.reader == "bundled":
        raise ValueError(f"{key!r} is bundled with the package; it has no IDX files")

    if data_dir is not None:
        root = Path(data_dir).expanduser()
        found = _search(root, info)
        if found is None:
            *subfolders, _ = _folders(root, info)
            _, missing = _files_in(root, info)
            raise DatasetError(
                f"data_dir {root} does not hold the {key} files (looked in "
                f"{', '.join(map(str, subfolders))} and {root}); missing in {root}: "
                f"{', '.join(missing)}"
            )
        return found

    env = os.environ.get(ENV_VAR)
    if env:
        found = _search(Path(env).expanduser(), info)
        if found is not None:
            return found

    cache = cache_dir(key)
    found, missing = _files_in(cache, info)
    if not missing:
        return found
    if not download:
        looked = f"{ENV_VAR}={env} (and its {key}/ subfolder), " if env else ""
        raise DatasetError(
            f"{key} files not found (looked in {looked}{cache}) and download=False; "
            + _how_to_provide(info)
        )
    # Only fetch what the cache lacks; files already there are checked by the reader.
    _download_files(
        info,
        cache,
        [info.archive] if info.archive else [f"{m}.gz" for m in missing],
        mirrors=MIRRORS[key],
        md5=MD5[key],
        timeout=30.0,
        progress=progress,
    )
    found, missing = _files_in(cache, info)
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
    """Download the files of ``name`` into ``dest_dir`` (default: the cache): the four
    ``.gz`` files of an IDX data set, or CIFAR-10's archive, unpacked there (and then
    removed; :func:`xpcnn.data.cifar.unpack_archive`).

    ``mirrors`` replaces :data:`MIRRORS` ``[name]`` and ``md5`` (file name -> hex digest)
    replaces :data:`MD5` ``[name]``; both exist so tests can serve small local files.
    ``only`` restricts the download to some file names. Returns ``dest_dir``.

    Raises :class:`DatasetError` listing every mirror's failure and the three ways to
    provide the files by hand.
    """
    key = canonical_name(name)
    if key not in MIRRORS:
        raise ValueError(f"{key!r} cannot be downloaded (it is bundled with the package)")
    info = DATASETS[key]
    dest = Path(dest_dir) if dest_dir is not None else cache_dir(key)
    every = [info.archive] if info.archive else [f"{stem}.gz" for stem in info.files.values()]
    _download_files(
        info,
        dest,
        list(only) if only is not None else every,
        mirrors=tuple(mirrors) if mirrors is not None else MIRRORS[key],
        md5=dict(md5) if md5 is not None else MD5[key],
        timeout=timeout,
        progress=progress,
    )
    return dest


def _download_files(
    info: DatasetInfo,
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
            path = download_file(
                filename,
                dest,
                md5=md5[filename],
                mirrors=mirrors,
                timeout=timeout,
                progress=progress,
            )
        except DatasetError as e:
            raise DatasetError(f"{e}; {_how_to_provide(info)}") from e
        if filename == info.archive:
            files = {stem: f"{stem}{info.suffixes[0]}" for stem in info.files.values()}
            try:
                cifar.unpack_archive(path, dest, files)
            finally:  # the batches are kept, not the archive (CIFAR-10's: 163 MB)
                path.unlink(missing_ok=True)
