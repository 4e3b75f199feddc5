"""Tests for xpcnn.checkpoint: round trip, integrity, atomicity, refusals."""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

from xpcnn import checkpoint as ck
from xpcnn._atomic import atomic_write
from xpcnn.checkpoint import (
    META_KEY,
    CheckpointError,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
)


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    r = np.random.default_rng(0)
    return {
        "params/W1": r.standard_normal((4, 1, 3, 3)).astype(np.float32),
        "params/b1": np.zeros(4, dtype=np.float32),
        "optim/m/W1": r.standard_normal((4, 1, 3, 3)),  # float64
        "rng/state": r.integers(-(2**62), 2**62, size=5, dtype=np.int64),
        "data/order": r.integers(0, 256, size=(2, 7), dtype=np.uint8),
        "scalar": np.asarray(3.5),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


@pytest.fixture
def meta() -> dict:
    return {
        "epoch": 3,
        "config": {"model": "simple", "conv": {"filter_num": 30, "sizes": [5, 5]}},
        "history": {"train_loss": [2.3, 0.5], "test_acc": [0.9]},
        "name": "ü→✓",
        "flag": True,
        "none": None,
    }


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _rewrite_zip(src: Path, dst: Path, edit) -> None:
    """Copy the zip member by member, letting ``edit(name, bytes)`` change data.

    The result is a perfectly valid zip (fresh CRCs), so only the digest can
    tell that it was altered.
    """
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, edit(info.filename, zin.read(info.filename)))


# ---------------------------------------------------------------------------
# round trip
# ---------------------------------------------------------------------------


def test_round_trip(tmp_path: Path, arrays: dict, meta: dict) -> None:
    p = save_checkpoint(tmp_path / "a.npz", arrays, meta)
    assert p == tmp_path / "a.npz"
    got, got_meta = load_checkpoint(p)
    assert sorted(got) == sorted(arrays)
    for k, a in arrays.items():
        assert got[k].dtype == a.dtype, k
        assert got[k].shape == a.shape, k
        np.testing.assert_array_equal(got[k], a)
    assert got_meta == meta
    assert _files(tmp_path) == ["a.npz"]  # no temp files left behind


def test_keys_with_slashes_are_plain_npz(tmp_path: Path, arrays: dict) -> None:
    # The file is an ordinary npz: np.load sees the keys unchanged.
    p = save_checkpoint(tmp_path / "a.npz", arrays, {})
    with np.load(p, allow_pickle=False) as z:
        assert sorted(z.files) == sorted([*arrays, META_KEY])
        np.testing.assert_array_equal(z["optim/m/W1"], arrays["optim/m/W1"])
    with zipfile.ZipFile(p) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def test_keys_that_clash_with_np_savez_arguments(tmp_path: Path) -> None:
    a = {"file": np.arange(3), "allow_pickle": np.ones(2, dtype=bool)}
    got, _ = load_checkpoint(save_checkpoint(tmp_path / "a.npz", a, {}))
    np.testing.assert_array_equal(got["file"], a["file"])
    assert got["allow_pickle"].dtype == np.bool_


def test_layouts_and_exotic_dtypes_round_trip(tmp_path: Path) -> None:
    a = {
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "strided": np.arange(20, dtype=np.int32)[::3],
        "bigendian": np.arange(4, dtype=">f4"),
        "record": np.array([(1.0, 2)], dtype=[("x", "<f4"), ("y", "<i8")]),
        "float16": np.linspace(0, 1, 5, dtype=np.float16),
    }
    got, _ = load_checkpoint(save_checkpoint(tmp_path / "a.npz", a, {}))
    for k, v in a.items():
        assert got[k].dtype == v.dtype
        np.testing.assert_array_equal(got[k], v)


def test_numpy_scalars_in_meta_become_python(tmp_path: Path) -> None:
    m = {"epoch": np.int64(2), "loss": np.float32(0.25), "shape": (1, 2)}
    _, got = load_checkpoint(save_checkpoint(tmp_path / "a.npz", {}, m))
    assert got == {"epoch": 2, "loss": 0.25, "shape": [1, 2]}
    assert type(got["epoch"]) is int


def test_overwrite_replaces_atomically(tmp_path: Path, arrays: dict) -> None:
    p = tmp_path / "a.npz"
    save_checkpoint(p, arrays, {"epoch": 1})
    os.chmod(p, 0o640)
    save_checkpoint(p, {"x": np.ones(2)}, {"epoch": 2})
    got, m = load_checkpoint(p)
    assert list(got) == ["x"] and m == {"epoch": 2}
    assert (p.stat().st_mode & 0o777) == 0o640  # permissions kept
    assert _files(tmp_path) == ["a.npz"]


# ---------------------------------------------------------------------------
# damaged files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 3, 100, 0.5, -22, -1])
def test_truncated_file(tmp_path: Path, arrays: dict, meta: dict, keep: float) -> None:
    good = save_checkpoint(tmp_path / "good.npz", arrays, meta)
    data = good.read_bytes()
    before = data
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    bad = tmp_path / "bad.npz"
    bad.write_bytes(data[:n])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    msg = str(info.value)
    assert str(bad) in msg
    assert "truncated" in msg
    assert "re-save it or point to another file" in msg
    # the valid checkpoint at another path is untouched and still loads
    assert good.read_bytes() == before
    load_checkpoint(good)


def test_flipped_byte_in_array_data(tmp_path: Path, arrays: dict) -> None:
    p = save_checkpoint(tmp_path / "a.npz", arrays, {})
    data = bytearray(p.read_bytes())
    i = bytes(data).index(arrays["params/W1"].tobytes())
    data[i + 7] ^= 0x01
    p.write_bytes(bytes(data))
    # The zip CRC notices raw corruption of a member.
    with pytest.raises(CheckpointError, match="corrupted") as info:
        load_checkpoint(p)
    assert str(p) in str(info.value) and "CRC" in str(info.value)


def test_altered_array_with_valid_zip_fails_digest(tmp_path: Path, arrays: dict) -> None:
    # Someone re-zips the file (fresh CRCs) after changing one weight: only
    # the SHA-256 digest can notice.
    src = save_checkpoint(tmp_path / "a.npz", arrays, {"epoch": 1})
    dst = tmp_path / "b.npz"

    def edit(name: str, data: bytes) -> bytes:
        if name == "params/W1.npy":
            b = bytearray(data)
            b[-1] ^= 0x40
            return bytes(b)
        return data

    _rewrite_zip(src, dst, edit)
    with np.load(dst, allow_pickle=False) as z:  # a valid npz as far as numpy goes
        assert not np.array_equal(z["params/W1"], arrays["params/W1"])
    with pytest.raises(CheckpointError, match="digest mismatch") as info:
        load_checkpoint(dst)
    assert str(dst) in str(info.value)


def test_altered_meta_fails_digest(tmp_path: Path, arrays: dict) -> None:
    src = save_checkpoint(tmp_path / "a.npz", arrays, {"epoch": 1})
    dst = tmp_path / "b.npz"
    with np.load(src, allow_pickle=False) as z:
        env = json.loads(z[META_KEY].tobytes())
    env["meta"]["epoch"] = 99

    def edit(name: str, data: bytes) -> bytes:
        if name == META_KEY + ".npy":
            buf = io.BytesIO()
            np.save(buf, np.frombuffer(json.dumps(env).encode(), dtype=np.uint8))
            return buf.getvalue()
        return data

    _rewrite_zip(src, dst, edit)
    with pytest.raises(CheckpointError, match="digest mismatch"):
        load_checkpoint(dst)


def test_added_or_removed_array_is_reported(tmp_path: Path, arrays: dict) -> None:
    src = save_checkpoint(tmp_path / "a.npz", arrays, {})
    dst = tmp_path / "b.npz"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename != "params/b1.npy":
                zout.writestr(info.filename, zin.read(info.filename))
    with pytest.raises(CheckpointError, match=r"missing arrays: params/b1"):
        load_checkpoint(dst)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_checkpoint(tmp_path / "nope.npz")
    assert "nope.npz" in str(info.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "is empty"), (b"hello world", "not an npz/zip archive"), (None, "not an npz")],
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes | None, match: str) -> None:
    p = tmp_path / "x.npz"
    if content is None:
        np.save(tmp_path / "x.npy", np.ones(3))
        (tmp_path / "x.npy").rename(p)
    else:
        p.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(p)


def test_plain_npz_without_meta(tmp_path: Path) -> None:
    p = tmp_path / "plain.npz"
    np.savez(p, W1=np.ones(3))
    with pytest.raises(CheckpointError, match="no '__xpcnn_meta__' metadata"):
        load_checkpoint(p)


def _write_envelope(path: Path, envelope: object) -> None:
    raw = np.frombuffer(json.dumps(envelope).encode(), dtype=np.uint8)
    np.savez(path, **{META_KEY: raw})


def test_unknown_and_newer_versions(tmp_path: Path) -> None:
    p = tmp_path / "v.npz"
    save_checkpoint(p, {}, {})
    with np.load(p, allow_pickle=False) as z:
        env = json.loads(z[META_KEY].tobytes())
    env["version"] = ck.FORMAT_VERSION + 1
    _write_envelope(p, env)
    with pytest.raises(CheckpointError, match=r"newer than this xpcnn reads.*upgrade xpcnn"):
        load_checkpoint(p)
    env["version"] = 0
    _write_envelope(p, env)
    with pytest.raises(CheckpointError, match="unknown format version 0"):
        load_checkpoint(p)
    env["format"] = "something-else"
    _write_envelope(p, env)
    with pytest.raises(CheckpointError, match="not an xpcnn checkpoint"):
        load_checkpoint(p)


def test_garbage_meta(tmp_path: Path) -> None:
    p = tmp_path / "g.npz"
    np.savez(p, **{META_KEY: np.frombuffer(b"{not json", dtype=np.uint8)})
    with pytest.raises(CheckpointError, match="unreadable metadata"):
        load_checkpoint(p)
    np.savez(p, **{META_KEY: np.zeros(3, dtype=np.float32)})
    with pytest.raises(CheckpointError, match="unreadable metadata"):
        load_checkpoint(p)


def test_object_array_is_never_unpickled(tmp_path: Path, monkeypatch) -> None:
    # A file crafted with pickling allowed: loading must refuse it without
    # ever calling pickle.
    class Boom:
        def __reduce__(self):
            return (os.getcwd, ())

    p = tmp_path / "evil.npz"
    np.savez(p, **{"params/W1": np.array([Boom()], dtype=object)}, allow_pickle=True)

    import pickle

    def no_unpickle(*args, **kwargs):
        raise AssertionError("pickle.load must not be called")

    monkeypatch.setattr(pickle, "load", no_unpickle)
    monkeypatch.setattr(pickle, "loads", no_unpickle)
    with pytest.raises(CheckpointError, match="object") as info:
        load_checkpoint(p)
    assert str(p) in str(info.value)


# ---------------------------------------------------------------------------
# failed saves leave the old checkpoint alone
# ---------------------------------------------------------------------------


def test_object_array_refused_on_save(tmp_path: Path, arrays: dict) -> None:
    p = save_checkpoint(tmp_path / "a.npz", arrays, {})
    before = p.read_bytes()
    with pytest.raises(ValueError, match="object dtype"):
        save_checkpoint(p, {**arrays, "bad": np.array([{}], dtype=object)}, {})
    assert p.read_bytes() == before
    assert _files(tmp_path) == ["a.npz"]


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        ([1.0, 2.0], TypeError),  # not a numpy array (device arrays land here too)
        (np.zeros(1, dtype=[("o", object)]), ValueError),  # object field in a record
    ],
)
def test_bad_values_refused(tmp_path: Path, value: object, exc: type) -> None:
    with pytest.raises(exc):
        save_checkpoint(tmp_path / "a.npz", {"x": value}, {})
    assert _files(tmp_path) == []


@pytest.mark.parametrize("key", ["", META_KEY, "W1.npy"])
def test_bad_keys_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="key"):
        save_checkpoint(tmp_path / "a.npz", {key: np.ones(1)}, {})


def test_meta_not_json_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "a.npz", {}, {"f": object()})
    assert _files(tmp_path) == []


def test_write_failing_midway_keeps_old_file(tmp_path: Path, arrays: dict, monkeypatch) -> None:
    p = save_checkpoint(tmp_path / "a.npz", arrays, {"epoch": 1})
    before = p.read_bytes()
    real = np.lib.format.write_array
    calls = []

    def flaky(fp, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # some members are already on disk
            fp.write(b"partial")
            raise OSError(28, "No space left on device")
        return real(fp, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", flaky)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(p, arrays, {"epoch": 2})
    assert len(calls) == 3
    assert p.read_bytes() == before
    assert _files(tmp_path) == ["a.npz"]
    monkeypatch.undo()
    assert load_checkpoint(p)[1] == {"epoch": 1}


@pytest.mark.parametrize("target", ["replace", "fsync"])
def test_interrupt_before_rename_keeps_old_file(
    tmp_path: Path, arrays: dict, monkeypatch, target: str
) -> None:
    p = save_checkpoint(tmp_path / "a.npz", arrays, {"epoch": 1})
    before = p.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.os, target, interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(p, arrays, {"epoch": 2})
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert _files(tmp_path) == ["a.npz"]


def _write_bytes(path: Path) -> None:
    with atomic_write(path) as f:
        f.write(b"xpcnn")


@pytest.mark.parametrize(
    "write",
    [_write_bytes, lambda p: save_checkpoint(p, {"x": np.ones(2)}, {})],
    ids=["atomic_write", "save_checkpoint"],
)
def test_writes_fsync_the_file_then_its_folder(tmp_path: Path, monkeypatch, write) -> None:
    # atomic_write (checkpoints, figures, JSON, downloads) makes the rename itself durable.
    synced: list[tuple[bool, bool]] = []
    real_fsync = os.fsync

    def record(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        synced.append((stat.S_ISREG(mode), stat.S_ISDIR(mode)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    write(tmp_path / "a.npz")
    assert synced == [(True, False), (False, True)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


def test_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "runs" / "exp1" / "ckpt.npz"
    with pytest.raises(FileNotFoundError) as info:
        save_checkpoint(target, {"x": np.ones(1)}, {})
    msg = str(info.value)
    assert str(target.parent) in msg and "does not exist" in msg and "create it" in msg
    assert not (tmp_path / "runs").exists()  # not created behind the user's back


def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        save_checkpoint(tmp_path / "f" / "a.npz", {}, {})


def test_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="is a directory"):
        save_checkpoint(tmp_path, {}, {})
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_unwritable_directory_message(tmp_path: Path, monkeypatch) -> None:
    # os.access is what the check uses; faked so the test also runs as root.
    monkeypatch.setattr(ck.os, "access", lambda *a, **k: False)
    with pytest.raises(PermissionError) as info:
        save_checkpoint(tmp_path / "a.npz", {}, {})
    assert str(tmp_path) in str(info.value) and "not writable" in str(info.value)
    assert _files(tmp_path) == []


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere"
)
def test_unwritable_directory(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            save_checkpoint(d / "a.npz", {}, {})
    finally:
        d.chmod(0o700)


# ---------------------------------------------------------------------------
# digest and compatibility
# ---------------------------------------------------------------------------


def test_digest_depends_on_key_dtype_shape_and_bytes() -> None:
    a = np.arange(6, dtype=np.float32)
    base = ck.compute_digest({"a": a})
    assert ck.compute_digest({"a": a.copy()}) == base
    assert ck.compute_digest({"b": a}) != base
    assert ck.compute_digest({"a": a.view(np.int32)}) != base
    assert ck.compute_digest({"a": a.reshape(2, 3)}) != base
    assert ck.compute_digest({"a": a + 1}) != base
    assert ck.compute_digest({"a": a}, {"x": 1}) != base
    # order of insertion does not matter, layout does not matter
    b = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    assert ck.compute_digest({"x": a, "y": b}) == ck.compute_digest(
        {"y": np.ascontiguousarray(b), "x": a}
    )


def test_check_compatible_ok_and_dtype_differences_allowed() -> None:
    expected = {"W1": ((2, 3), "float32"), "b1": ((3,), "float32")}
    check_compatible(expected, {"W1": np.zeros((2, 3)), "b1": np.zeros(3, np.float16)})


def test_check_compatible_lists_every_problem() -> None:
    expected = {
        "W1": ((30, 1, 5, 5), "float32"),
        "b1": ((30,), "float32"),
        "W2": ((4320, 100), "float32"),
    }
    arrays = {
        "W1": np.zeros((16, 1, 5, 5)),
        "W2": np.zeros((4320, 100)),
        "W9": np.zeros(1),
    }
    with pytest.raises(CheckpointError) as info:
        check_compatible(expected, arrays, what="optimizer")
    msg = str(info.value)
    assert "missing keys" in msg and "b1" in msg
    assert "unexpected keys" in msg and "W9" in msg
    assert "W1: checkpoint (16, 1, 5, 5) vs optimizer (30, 1, 5, 5)" in msg
    assert "W2" not in msg
    assert "build the optimizer with the configuration stored in the checkpoint" in msg
    assert "or pass a checkpoint of this optimizer" in msg


def test_check_compatible_long_lists_are_capped() -> None:
    expected = {f"k{i:03d}": ((1,), "float32") for i in range(50)}
    with pytest.raises(CheckpointError, match=r"\(30 more\)"):
        check_compatible(expected, {})
