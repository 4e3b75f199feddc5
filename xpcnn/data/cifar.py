"""CIFAR-10's binary release (``cifar-10-binary.tar.gz``; never the pickled one).

Each file ``data_batch_1.bin .. data_batch_5.bin`` (training) and ``test_batch.bin``
holds 10,000 records of 3,073 bytes: one label byte (0-9), then the 32x32 red,
green and blue planes, each row-major: the record's pixels are already (C, H, W).
The archive is unpacked by reading its members' bytes (no ``tar.extract``): only the
expected names, only regular files, into a staging folder first.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from xpcnn.errors import XpcnnError

__all__ = ["RECORDS_PER_FILE", "CIFARError", "read_cifar_batch", "unpack_archive"]

IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32
#: Records in each file of the release (tests of small synthetic files lower it).
RECORDS_PER_FILE = 10_000
NUM_CLASSES = 10
#: The archive's one folder, and the other members it holds besides the batches.
ARCHIVE_FOLDER = "cifar-10-batches-bin"
_OTHER_MEMBERS = ("batches.meta.txt", "readme.html")


class CIFARError(XpcnnError, ValueError):
    """A CIFAR-10 binary file or archive is malformed: wrong size, a label outside
    0-9, an unexpected archive member."""


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary batch file.

    Returns ``(x, t)``: uint8 images ``(N, 3, 32, 32)`` and uint8 labels ``(N,)``
    (N = :data:`RECORDS_PER_FILE`), read-only views of the file's bytes.

    Raises :class:`CIFARError` naming the file when its size is not
    ``RECORDS_PER_FILE * 3073`` bytes or a label is outside 0-9.
    """
    path = Path(path)
    data = path.read_bytes()
    expected = RECORDS_PER_FILE * RECORD_BYTES
    if len(data) != expected:
        whole, rest = divmod(len(data), RECORD_BYTES)
        what = f"{whole:,} records and {rest} bytes" if rest else f"{whole:,} records"
        raise CIFARError(
            f"{path}: {len(data):,} bytes ({what}), expected {expected:,} "
            f"({RECORDS_PER_FILE:,} records of 1 label byte + 3,072 pixel bytes): truncated "
            "or not a CIFAR-10 binary batch; delete it and download it again"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(RECORDS_PER_FILE, RECORD_BYTES)
    t = records[:, 0]
    bad = np.flatnonzero(t >= NUM_CLASSES)
    if bad.size:
        raise CIFARError(
            f"{path}: record {int(bad[0])} has label {int(t[bad[0]])}, but CIFAR-10 labels are "
            "0-9 (is it another data set's file, CIFAR-100's?)"
        )
    return records[:, 1:].reshape(-1, *IMAGE_SHAPE), t


def load_batches(files: Mapping[str, Path]) -> dict[str, np.ndarray]:
    """The arrays of a :class:`~xpcnn.data.Dataset` from the six batch files (keys
    ``data_batch_1`` .. ``data_batch_5``, ``test_batch``), read-only."""
    train = [read_cifar_batch(files[f"data_batch_{i}"]) for i in range(1, 6)]
    x_test, t_test = read_cifar_batch(files["test_batch"])
    arrays = {
        "x_train": np.concatenate([x for x, _ in train]),
        "t_train": np.concatenate([t for _, t in train]),
        "x_test": np.ascontiguousarray(x_test),
        "t_test": t_test.copy(),
    }
    for a in arrays.values():
        a.flags.writeable = False
    return arrays


def unpack_archive(archive: Path, dest: Path, names: Mapping[str, str]) -> None:
    """Unpack the batch files ``names`` (stem -> file name) of CIFAR-10's archive
    into ``dest``, safely and all or nothing.

    The members must be the archive's folder and files in it, with the release's
    names only: anything else (a path with ``..``, an absolute path, another
    file), a link or a special file, a batch of the wrong size, or a missing batch
    is refused with :class:`CIFARError` before anything is written. The batches are
    written into a staging folder inside ``dest`` and then renamed into place.
    """
    wanted = {f"{ARCHIVE_FOLDER}/{n}": n for n in names.values()}
    allowed = {ARCHIVE_FOLDER, *wanted, *(f"{ARCHIVE_FOLDER}/{n}" for n in _OTHER_MEMBERS)}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = _checked_members(tar, archive, allowed)
            missing = sorted(n for n in wanted if n not in members)
            if missing:
                raise CIFARError(f"{archive}: the archive lacks {', '.join(missing)}")
            dest.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".unpack-", dir=dest) as staging:
                for member_name, file_name in wanted.items():
                    src = tar.extractfile(members[member_name])
                    assert src is not None  # a regular file, checked above
                    with src, open(Path(staging, file_name), "wb") as out:
                        shutil.copyfileobj(src, out)
                for file_name in wanted.values():
                    os.replace(Path(staging, file_name), dest / file_name)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise CIFARError(
            f"{archive}: corrupt or truncated archive ({type(e).__name__}: {e}); "
            "delete it and download it again"
        ) from e


def _checked_members(
    tar: tarfile.TarFile, archive: Path, allowed: set[str]
) -> dict[str, tarfile.TarInfo]:
    """The archive's members by name (``./`` dropped), each with an expected name and
    kind, else CIFARError."""
    members = {}
    expected_size = RECORDS_PER_FILE * RECORD_BYTES
    for m in tar.getmembers():  # reads the whole archive: a corrupt one fails here
        name = m.name.removeprefix("./")
        if name not in allowed:
            raise CIFARError(
                f"{archive}: unexpected member {m.name!r} (CIFAR-10's archive holds only "
                f"{ARCHIVE_FOLDER}/ and its files); nothing unpacked"
            )
        kind_ok = m.isdir() if name == ARCHIVE_FOLDER else m.isfile()
        if not kind_ok:
            raise CIFARError(
                f"{archive}: member {m.name!r} is a {_kind(m)}, not a "
                f"{'folder' if name == ARCHIVE_FOLDER else 'regular file'}; nothing unpacked"
            )
        if name.endswith(".bin") and m.size != expected_size:
            raise CIFARError(
                f"{archive}: member {m.name!r} has {m.size:,} bytes, expected {expected_size:,}; "
                "nothing unpacked"
            )
        members[name] = m
    return members


def _kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return f"symbolic link to {m.linkname!r}"
    if m.islnk():
        return f"hard link to {m.linkname!r}"
    return "folder" if m.isdir() else "special file"
