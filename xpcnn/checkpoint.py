"""Safe, atomic, device-independent checkpoints.

A checkpoint is an ordinary uncompressed ``.npz`` archive (readable with
``np.load(path, allow_pickle=False)``) holding

* one ``.npy`` member per array, named by its key (``"params/W1"``,
  ``"optim/m/W1"``, ``"rng/state"``, ... — ``/`` is fine inside zip member
  names and ``np.load`` gives the keys back unchanged), and
* a reserved member :data:`META_KEY`: a UTF-8 JSON document stored as a
  ``uint8`` array, with the format name and version, the sorted list of array
  keys, the caller's metadata and a SHA-256 digest over every array's key,
  dtype, shape and bytes plus the caller's metadata.

The caller (the Trainer) converts device arrays to NumPy first; this module
only sees NumPy arrays and JSON-able metadata, so a checkpoint written on a
GPU loads on a CPU-only machine and vice versa.

Why uncompressed (``ZIP_STORED``): trained float weights are close to random
bits and deflate saves little on them, while compression costs time on every
save; stored members also keep the file layout simple to inspect.

Why the archive is written with :mod:`zipfile` + ``np.lib.format.write_array``
instead of ``np.savez(file, **arrays)``: ``np.savez`` takes the keys as keyword
arguments, so keys named ``file`` or ``allow_pickle`` would collide with its own
parameters, and it always allows pickling. Writing the members ourselves is
what ``np.savez`` does internally, gives the same file format, and lets us pass
``allow_pickle=False``.

Nothing here ever unpickles: loading uses ``allow_pickle=False`` and any
object array is refused on both save and load.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ._atomic import atomic_write
from .errors import XpcnnError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "META_KEY",
    "CheckpointError",
    "check_compatible",
    "compute_digest",
    "load_checkpoint",
    "save_checkpoint",
]

#: Value of the ``format`` field in the stored metadata envelope.
FORMAT_NAME = "xpcnn-checkpoint"
#: Version of the on-disk layout written by :func:`save_checkpoint`.
FORMAT_VERSION = 1
#: Reserved array key holding the JSON metadata envelope (uint8 bytes).
META_KEY = "__xpcnn_meta__"

_NPY = ".npy"
_ZIP_MAGIC = b"PK\x03\x04"  # local file header; every non-empty zip starts with it
_MAX_LISTED = 20  # cap long key lists in error messages


class CheckpointError(XpcnnError, ValueError):
    """A checkpoint file is missing, damaged, not ours, or does not fit the model."""


# ---------------------------------------------------------------------------
# digest
# ---------------------------------------------------------------------------


def _frame(h: Any, data: bytes) -> None:
    # Length-prefix every field so that no two different inputs hash the same
    # byte stream (e.g. key "ab"+dtype "c" vs key "a"+dtype "bc").
    h.update(struct.pack("<Q", len(data)))
    h.update(data)


def _canonical_json(meta: Any) -> str:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _dtype_descr(dtype: np.dtype) -> str:
    # dtype_to_descr keeps byte order and structured fields ('<f4',
    # "[('a', '<f4'), ...]"), unlike dtype.str which collapses records to '|V8'.
    return repr(np.lib.format.dtype_to_descr(dtype))


def compute_digest(arrays: Mapping[str, np.ndarray], meta: Any = None) -> str:
    """SHA-256 hex digest of ``arrays`` (and optionally JSON-able ``meta``).

    For each key in sorted order the hash covers the key (UTF-8), the dtype
    description (byte order and record fields included), the shape and the
    array's bytes in C order; every field is length-prefixed. ``meta`` is
    hashed last as canonical JSON (sorted keys, no whitespace).

    Args:
        arrays: key -> NumPy array of any non-object dtype and shape.
        meta: JSON-able value (dict) or None.

    Returns:
        64-character lowercase hex string.
    """
    h = hashlib.sha256()
    h.update(FORMAT_NAME.encode())
    for key in sorted(arrays):
        a = np.asarray(arrays[key])
        _frame(h, key.encode("utf-8"))
        _frame(h, _dtype_descr(a.dtype).encode())
        _frame(h, repr(tuple(int(n) for n in a.shape)).encode())
        # A flat uint8 view hashes any dtype (datetime, records, big-endian)
        # without an extra bytes copy for already-contiguous arrays.
        flat = np.ascontiguousarray(a).reshape(-1)
        data = flat.view(np.uint8).data if flat.dtype.itemsize else flat.tobytes()
        h.update(struct.pack("<Q", a.nbytes))
        h.update(data)
    if meta is not None:
        _frame(h, _canonical_json(meta).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    # NumPy scalars (np.float32 loss, np.int64 epoch) are common in metadata.
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _validate_arrays(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"checkpoint keys must be non-empty strings, got {key!r}")
        if key == META_KEY:
            raise ValueError(f"checkpoint key {META_KEY!r} is reserved for the metadata")
        if key.endswith(_NPY):
            # np.load strips one '.npy' from member names; a key ending in
            # '.npy' could then shadow another key on lookup.
            raise ValueError(f"checkpoint key {key!r} must not end with {_NPY!r}")
        if "\x00" in key:
            raise ValueError(f"checkpoint key {key!r} contains a NUL character")
        if not isinstance(value, np.ndarray | np.generic):
            raise TypeError(
                f"checkpoint array {key!r} is a {type(value).__module__}.{type(value).__name__}, "
                "not a NumPy array; convert it on the host first (xpcnn.backend.to_numpy)"
            )
        a = np.asarray(value)
        if a.dtype.hasobject:
            raise ValueError(
                f"checkpoint array {key!r} has object dtype {a.dtype}; object arrays need "
                "pickle and are refused — store numeric arrays and put the rest in meta"
            )
        out[key] = a
    return out


def _check_directory(path: Path) -> None:
    directory = path.parent
    if not directory.exists():
        raise FileNotFoundError(
            f"cannot save checkpoint {path}: directory {directory} does not exist; "
            "create it first (e.g. mkdir -p) or choose another path"
        )
    if not directory.is_dir():
        raise NotADirectoryError(
            f"cannot save checkpoint {path}: {directory} is not a directory; choose another path"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cannot save checkpoint {path}: directory {directory} is not writable; "
            "fix its permissions or choose another directory"
        )
    if path.is_dir():
        raise IsADirectoryError(
            f"cannot save checkpoint {path}: it is a directory; give a file name such as "
            f"{path / 'checkpoint.npz'}"
        )


def _write_member(zf: zipfile.ZipFile, key: str, array: np.ndarray) -> None:
    # force_zip64: sizes are unknown while streaming; large members need it.
    with zf.open(key + _NPY, "w", force_zip64=True) as fh:
        np.lib.format.write_array(fh, array, allow_pickle=False)


def save_checkpoint(
    path: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
) -> Path:
    """Atomically write ``arrays`` and ``meta`` to the ``.npz`` file ``path``.

    The data go to a temporary file in the same directory, which is flushed,
    fsynced and then renamed over ``path`` with :func:`os.replace`. On any
    failure (including KeyboardInterrupt) the temporary file is removed and an
    existing file at ``path`` is left byte-identical. ``path`` is used as given
    (no ``.npz`` suffix is appended).

    Args:
        path: destination file; its directory must already exist.
        arrays: key -> NumPy array (any shape; numeric, bool, string or
            record dtypes; not object). Keys are non-empty strings such as
            ``"params/W1"``; they must not end in ``".npy"`` and must not be
            :data:`META_KEY`.
        meta: JSON-able mapping (NumPy scalars are converted with ``.item()``;
            tuples come back as lists).

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: object-dtype arrays, bad keys, meta not JSON-able.
        TypeError: a value that is not a NumPy array (e.g. a device array).
        FileNotFoundError, NotADirectoryError, PermissionError,
        IsADirectoryError: the destination directory is missing or unusable.
    """
    path = Path(path)
    checked = _validate_arrays(arrays)
    if not isinstance(meta, Mapping):
        raise TypeError(f"checkpoint meta must be a mapping, got {type(meta).__name__}")
    try:
        # Round-trip through JSON so the digest is over exactly what load sees.
        user_meta = json.loads(json.dumps(dict(meta), default=_json_default))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint meta is not JSON-serialisable: {exc}") from exc
    _check_directory(path)

    envelope = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "keys": sorted(checked),
        "digest": {"algorithm": "sha256", "hex": compute_digest(checked, user_meta)},
        "meta": user_meta,
    }
    meta_bytes = np.frombuffer(
        json.dumps(envelope, sort_keys=True, indent=1).encode("utf-8"), dtype=np.uint8
    )

    with atomic_write(path) as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key in sorted(checked):
                _write_member(zf, key, checked[key])
            _write_member(zf, META_KEY, meta_bytes)
    return path


# ---------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------


def _fail(path: Path, what: str, fix: str = "re-save it or point to another file") -> NoReturn:
    raise CheckpointError(f"checkpoint {path} {what}; {fix}")


def _list(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    if len(keys) > _MAX_LISTED:
        shown += f", ... ({len(keys) - _MAX_LISTED} more)"
    return shown


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Uses ``np.load(path, allow_pickle=False)`` (never unpickles), checks the
    format name and version, the stored key list and the SHA-256 digest.

    Args:
        path: the ``.npz`` file.

    Returns:
        ``(arrays, meta)``: key -> NumPy array with the dtype and shape that
        were saved (keys exactly as saved, e.g. ``"params/W1"``), and the
        caller's metadata dict (without the format/digest envelope).

    Raises:
        CheckpointError: missing or unreadable file, not a zip/npz, truncated
            or altered file, missing or malformed metadata, unknown format
            version, digest mismatch. The message names the file and the
            problem.
    """
    path = Path(path)
    _check_zip_file(path)
    arrays, raw_meta = _read_members(path)
    envelope = _read_envelope(path, raw_meta)
    return arrays, _verified_meta(path, envelope, arrays)


def _check_zip_file(path: Path) -> None:
    """An existing, readable file that starts like a zip archive."""
    if not path.exists():
        _fail(path, "does not exist", "check the path (or train first to create it)")
    if path.is_dir():
        _fail(path, "is a directory, not a file", "point to the .npz file inside it")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        _fail(path, f"could not be read ({type(exc).__name__}: {exc})", "check its permissions")
    if magic != _ZIP_MAGIC:
        # Checked before np.load, which would otherwise try (and, with
        # allow_pickle=False, refuse) to read unknown bytes as a pickle.
        what = "is empty" if not magic else f"is not an npz/zip archive (starts with {magic!r})"
        _fail(path, f"{what}, so it is truncated or not an xpcnn checkpoint")


def _read_members(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every ``.npy`` member: the arrays by key, and the raw metadata member."""
    arrays: dict[str, np.ndarray] = {}
    raw_meta: np.ndarray | None = None
    try:
        with np.load(path, allow_pickle=False) as z:
            for name in z.files:
                value = z[name]  # reads the member; the zip CRC is checked here
                if not isinstance(value, np.ndarray):
                    _fail(path, f"has a member {name!r} that is not a .npy array")
                if name == META_KEY:
                    raw_meta = value
                else:
                    arrays[name] = value
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, TypeError, OSError, KeyError,
            struct.error, UnicodeDecodeError) as exc:  # fmt: skip
        reason = f"{type(exc).__name__}: {exc}"
        if "CRC" in str(exc):
            _fail(path, f"is corrupted: its bytes changed after saving ({reason})")
        if "allow_pickle" in str(exc):
            _fail(path, f"contains object (pickled) arrays, which are never loaded ({reason})")
        _fail(path, f"is truncated, damaged or not an xpcnn checkpoint ({reason})")
    if raw_meta is None:
        _fail(path, f"has no {META_KEY!r} metadata, so it is not an xpcnn checkpoint")
    return arrays, raw_meta


def _read_envelope(path: Path, raw_meta: np.ndarray) -> dict[str, Any]:
    """The metadata envelope as a dict, once its format name and version are ours."""
    try:
        if raw_meta.dtype != np.uint8 or raw_meta.ndim != 1:
            raise ValueError(f"metadata array has dtype {raw_meta.dtype}, ndim {raw_meta.ndim}")
        envelope = json.loads(raw_meta.tobytes().decode("utf-8"))
        if not isinstance(envelope, dict):
            raise ValueError("metadata is not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        _fail(path, f"has unreadable metadata ({type(exc).__name__}: {exc})")

    if envelope.get("format") != FORMAT_NAME:
        _fail(path, f"is not an xpcnn checkpoint (format {envelope.get('format')!r})")
    version = envelope.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        _fail(path, f"has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        _fail(
            path,
            f"uses format version {version}, newer than this xpcnn reads ({FORMAT_VERSION})",
            "upgrade xpcnn to load it",
        )
    if version != FORMAT_VERSION:
        _fail(path, f"uses unknown format version {version} (this xpcnn reads {FORMAT_VERSION})")
    return envelope


def _verified_meta(
    path: Path, envelope: dict[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """The caller's metadata, once the stored key list and digest match ``arrays``."""
    user_meta = envelope.get("meta")
    digest = envelope.get("digest")
    keys = envelope.get("keys")
    if (
        not isinstance(user_meta, dict)
        or not isinstance(digest, dict)
        or not isinstance(keys, list)
    ):
        _fail(path, "has incomplete metadata (meta, digest or keys missing)")

    expected_keys = {str(k) for k in keys}
    missing = sorted(expected_keys - arrays.keys())
    extra = sorted(arrays.keys() - expected_keys)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing arrays: {_list(missing)}")
        if extra:
            parts.append(f"unexpected arrays: {_list(extra)}")
        _fail(path, "was altered (" + "; ".join(parts) + ")")

    if digest.get("algorithm") != "sha256" or not isinstance(digest.get("hex"), str):
        _fail(path, f"has an unsupported digest {digest!r}")
    actual = compute_digest(arrays, user_meta)
    if not hmac.compare_digest(actual, digest["hex"]):
        _fail(
            path,
            "failed its integrity check (SHA-256 digest mismatch: the array data or "
            "metadata were altered or corrupted after saving)",
        )
    return user_meta


# ---------------------------------------------------------------------------
# compatibility
# ---------------------------------------------------------------------------


def check_compatible(
    expected: Mapping[str, tuple[tuple[int, ...], str]],
    arrays: Mapping[str, np.ndarray],
    *,
    what: str = "model",
) -> None:
    """Check that checkpoint ``arrays`` fit a model/optimizer's parameters.

    Args:
        expected: key -> ``(shape, dtype_name)`` of what the ``what`` needs
            (e.g. ``{"W1": ((30, 1, 5, 5), "float32")}``).
        arrays: key -> NumPy array from the checkpoint (same key naming as
            ``expected``; the caller strips prefixes such as ``"params/"``).
        what: noun used in the message ("model", "optimizer", ...).

    Raises:
        CheckpointError: listing, in one message, every missing key, every
            unexpected key and every shape mismatch (checkpoint shape vs
            ``what`` shape). dtype differences are allowed: the caller casts.
    """
    missing = sorted(k for k in expected if k not in arrays)
    unexpected = sorted(k for k in arrays if k not in expected)
    mismatched = []
    for key in sorted(k for k in expected if k in arrays):
        want = tuple(int(n) for n in expected[key][0])
        got = tuple(int(n) for n in np.shape(arrays[key]))
        if got != want:
            mismatched.append(f"{key}: checkpoint {got} vs {what} {want}")
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"missing keys (in the {what}, not in the checkpoint): {_list(missing)}")
    if unexpected:
        problems.append(
            f"unexpected keys (in the checkpoint, not in the {what}): {_list(unexpected)}"
        )
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    raise CheckpointError(
        f"checkpoint does not match this {what}: "
        + " | ".join(problems)
        + f". Fix: build the {what} with the configuration stored in the checkpoint, "
        f"or pass a checkpoint of this {what}"
    )
