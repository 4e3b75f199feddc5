"""Reader (and a small writer) for the IDX format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number, ``ndim`` big-endian uint32 dimensions and
then the payload in C order. The magic is two zero bytes, a dtype code
(``0x08`` = uint8, the only one MNIST uses) and the number of dimensions:
``0x00000803`` (2051) for 3-D image files, ``0x00000801`` (2049) for labels.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from xpcnn.errors import XpcnnError

__all__ = ["IDXError", "read_idx", "write_idx"]

_GZIP_MAGIC = b"\x1f\x8b"
_UINT8 = 0x08
# Codes from the IDX spec; named so an unsupported file gets a useful message.
_DTYPE_NAMES = {
    0x08: "uint8",
    0x09: "int8",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}


class IDXError(XpcnnError, ValueError):
    """An IDX file is malformed: bad magic, truncated, trailing bytes, corrupt gzip."""


def _decode(path: Path) -> bytes:
    """The file's IDX bytes, gunzipped when the name ends in .gz or the content is gzip."""
    raw = path.read_bytes()
    if not raw:
        raise IDXError(f"{path}: empty file (expected an IDX header of at least 4 bytes)")
    if path.suffix != ".gz" and not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        data = gzip.decompress(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise IDXError(
            f"{path}: corrupt or truncated gzip data ({type(e).__name__}: {e}); "
            "delete the file and download it again"
        ) from e
    if not data:
        raise IDXError(
            f"{path}: gzip content is empty (expected an IDX header of at least 4 bytes)"
        )
    return data


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a NumPy array.

    Parameters
    ----------
    path
        File to read. Gzip is detected by the ``.gz`` suffix or the gzip magic bytes.
    ndim
        When given, the number of dimensions the file must have (3 for image files,
        magic 2051; 1 for label files, magic 2049).

    Returns
    -------
    numpy.ndarray
        uint8 array of the shape stored in the header, e.g. ``(60000, 28, 28)`` for
        ``train-images-idx3-ubyte`` or ``(60000,)`` for labels. It is a read-only view
        over the decoded bytes (no copy); call ``.copy()`` to get a writable one.

    Raises
    ------
    IDXError
        Empty file, corrupt gzip, wrong magic, a dtype code other than 0x08 (uint8),
        an unexpected ``ndim``, or a payload shorter or longer than the header says.
        The message names the file and what was expected versus found.
    """
    path = Path(path)
    data = _decode(path)
    if len(data) < 4:
        raise IDXError(f"{path}: truncated header: expected at least 4 bytes, found {len(data)}")
    magic = int.from_bytes(data[:4], "big")
    zero, code, nd = data[0:2], data[2], data[3]
    if zero != b"\x00\x00":
        raise IDXError(
            f"{path}: not an IDX file: expected magic 0x0000TTNN (two zero bytes, type, ndim), "
            f"found 0x{magic:08X}"
        )
    if code != _UINT8:
        what = _DTYPE_NAMES.get(code, "unknown")
        raise IDXError(
            f"{path}: unsupported IDX dtype code 0x{code:02X} ({what}); "
            "only 0x08 (uint8) is supported"
        )
    if ndim is not None and nd != ndim:
        want = 0x0800 | ndim
        raise IDXError(
            f"{path}: expected magic 0x{want:08X} ({want}, {ndim}-D uint8), "
            f"found 0x{magic:08X} ({magic}, {nd}-D)"
        )
    if nd == 0:
        raise IDXError(f"{path}: expected at least 1 dimension in the magic, found 0")
    header = 4 + 4 * nd
    if len(data) < header:
        raise IDXError(
            f"{path}: truncated header: expected {header} bytes for {nd} dimensions, "
            f"found {len(data)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=nd, offset=4))
    expected = math.prod(shape)
    found = len(data) - header
    if found < expected:
        raise IDXError(
            f"{path}: truncated payload: shape {shape} needs {expected} bytes after the "
            f"{header}-byte header, found {found}"
        )
    if found > expected:
        raise IDXError(
            f"{path}: {found - expected} extra trailing bytes: shape {shape} needs {expected} "
            f"bytes after the {header}-byte header, found {found}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file; gzip-compressed when ``path`` ends in ``.gz``.

    ``array`` must be uint8 with at least one dimension (e.g. ``(N, 28, 28)`` images
    or ``(N,)`` labels). Returns the path written.
    """
    path = Path(path)
    a = np.ascontiguousarray(array)
    if a.dtype != np.uint8 or a.ndim == 0:
        raise ValueError(f"write_idx needs a uint8 array with ndim >= 1, got {a.dtype} {a.shape}")
    header = bytes([0, 0, _UINT8, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
    payload = header + a.tobytes()
    if path.suffix == ".gz":
        # mtime=0 so the same array always gives the same bytes.
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path
