"""xpcnn.data: IDX reader, bundled sample, load_mnist, file sources and downloads.

Everything here uses small synthetic files under tmp_path and a local HTTP server on
127.0.0.1; only the tests taking ``mnist_dir``/``fashion_dir`` read ../shared/data.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import struct
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from xpcnn.data import (
    CLASS_NAMES,
    DATASET_NAMES,
    FILES,
    MD5,
    MIRRORS,
    Dataset,
    DatasetError,
    IDXError,
    cache_dir,
    download,
    download_file,
    load_dataset,
    load_mnist,
    read_idx,
    write_idx,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
# SHA-256 of decompressed content, from ../shared/data/README.md.
SHA256 = {
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(shape: tuple[int, ...], payload: bytes, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def write_set(folder: Path, n_train: int, n_test: int = 2, *, gz: bool = True) -> Path:
    """A tiny complete MNIST-like file set (n images of 28x28) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n_train)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        t = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / (FILES[f"x_{split}"] + suffix), x)
        write_idx(folder / (FILES[f"t_{split}"] + suffix), t)
    return folder


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network must not be touched")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No XPCNN_DATA, cache under tmp_path/cache. Returns the XDG cache root."""
    monkeypatch.delenv("XPCNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------------------
# IDX reader


def test_read_idx_raw_and_gz(tmp_path: Path) -> None:
    payload = bytes(range(24))
    raw = tmp_path / "a-idx3-ubyte"
    raw.write_bytes(idx_bytes((2, 3, 4), payload))
    gz = tmp_path / "a-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(raw.read_bytes()))
    for path in (raw, gz, str(raw)):
        a = read_idx(path)
        assert a.dtype == np.uint8
        assert a.shape == (2, 3, 4)
        np.testing.assert_array_equal(a.ravel(), np.arange(24))
        assert not a.flags.writeable
    labels = tmp_path / "l-idx1-ubyte"
    labels.write_bytes(idx_bytes((5,), bytes([9, 8, 7, 6, 5])))
    np.testing.assert_array_equal(read_idx(labels, ndim=1), [9, 8, 7, 6, 5])


def test_write_idx_round_trip(tmp_path: Path) -> None:
    a = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for name in ("x", "x.gz"):
        np.testing.assert_array_equal(read_idx(write_idx(tmp_path / name, a)), a)
    # header is the standard magic 0x00000803 followed by big-endian dims
    assert (tmp_path / "x").read_bytes()[:16] == struct.pack(">IIII", 0x803, 2, 28, 28)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_read_idx_truncated(tmp_path: Path, gz: bool) -> None:
    data = idx_bytes((2, 3, 4), bytes(20))  # 4 short
    path = tmp_path / ("short.gz" if gz else "short")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(IDXError, match="truncated") as e:
        read_idx(path)
    msg = str(e.value)
    assert str(path) in msg and "24" in msg and "20" in msg and "(2, 3, 4)" in msg


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "h"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">I", 2))  # 3 dims, 1 given
    with pytest.raises(IDXError, match=r"truncated header: expected 16 bytes .* found 8"):
        read_idx(path)


def test_read_idx_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "long"
    path.write_bytes(idx_bytes((3,), bytes(5)))
    with pytest.raises(IDXError, match="2 extra trailing bytes") as e:
        read_idx(path)
    assert str(path) in str(e.value) and "needs 3" in str(e.value) and "found 5" in str(e.value)


def test_read_idx_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "magic"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(IDXError, match=r"0x12340801") as e:
        read_idx(path)
    assert str(path) in str(e.value) and "two zero bytes" in str(e.value)


def test_read_idx_wrong_ndim(tmp_path: Path) -> None:
    path = tmp_path / "labels-as-images"
    path.write_bytes(idx_bytes((3,), bytes(3)))
    with pytest.raises(IDXError, match=r"expected magic 0x00000803 \(2051.*found 0x00000801") as e:
        read_idx(path, ndim=3)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(("code", "name"), [(0x0D, "float32"), (0x0C, "int32"), (0x42, "unknown")])
def test_read_idx_wrong_dtype_code(tmp_path: Path, code: int, name: str) -> None:
    path = tmp_path / "f"
    path.write_bytes(idx_bytes((1,), bytes(4), code=code))
    with pytest.raises(IDXError, match=f"dtype code 0x{code:02X} \\({name}\\)") as e:
        read_idx(path)
    assert "0x08 (uint8)" in str(e.value) and str(path) in str(e.value)


def _bad_gzips() -> dict[str, bytes]:
    good = gzip.compress(idx_bytes((64,), bytes(range(64))))
    flipped = bytearray(good)
    flipped[-6] ^= 0xFF  # CRC32 trailer
    return {
        "garbage": b"\x1f\x8b" + b"not really gzip data at all",
        "cut": good[:-12],
        "crc": bytes(flipped),
        "deflate": good[:10] + b"\xff" * 20 + good[-8:],
    }


@pytest.mark.parametrize("kind", sorted(_bad_gzips()))
def test_read_idx_bad_gzip(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad-idx1-ubyte.gz"
    path.write_bytes(_bad_gzips()[kind])
    with pytest.raises(IDXError, match="corrupt or truncated gzip") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_empty(tmp_path: Path) -> None:
    for name, content in (("empty", b""), ("empty.gz", gzip.compress(b""))):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(IDXError, match="empty") as e:
            read_idx(path)
        assert str(path) in str(e.value)


def test_idx_error_is_value_error() -> None:
    assert issubclass(IDXError, ValueError)
    assert issubclass(DatasetError, RuntimeError)


# ---------------------------------------------------------------------------
# Bundled sample and load_mnist


def test_sample_round_trip(no_network: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XPCNN_DATA", "/nonexistent/xpcnn-data")
    ds = load_dataset()  # default name is the sample
    assert ds.name == "mnist-sample"
    assert ds.class_names == tuple("0123456789")
    assert ds.x_train.shape == (5000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.t_train.shape == (5000,) and ds.t_test.shape == (1000,)
    for a in (ds.x_train, ds.t_train, ds.x_test, ds.t_test):
        assert a.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(ds.t_train, minlength=10), [500] * 10)
    np.testing.assert_array_equal(np.bincount(ds.t_test, minlength=10), [100] * 10)
    assert ds.x_train.max() == 255 and ds.x_test.max() == 255
    # every image has ink; MNIST digits cover roughly a fifth of the pixels
    assert (ds.x_train.reshape(5000, -1).max(axis=1) > 0).all()
    assert 0.1 < (ds.x_train > 0).mean() < 0.3
    # classes are interleaved, not sorted
    assert len(np.unique(ds.t_train[:50])) > 5


def test_sample_ignores_data_dir(no_network: None, tmp_path: Path) -> None:
    ds = load_dataset("mnist-sample", tmp_path / "nothing-here")
    assert len(ds.t_train) == 5000


def test_sample_file_has_no_pickles() -> None:
    with np.load(REPO / "xpcnn" / "data" / "mnist_sample.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted(FILES)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("flatten", [True, False])
@pytest.mark.parametrize("one_hot", [True, False])
def test_load_mnist_semantics(
    no_network: None, normalize: bool, flatten: bool, one_hot: bool
) -> None:
    (x_train, t_train), (x_test, t_test) = load_mnist(
        normalize=normalize, flatten=flatten, one_hot_label=one_hot, dataset="mnist-sample"
    )
    ds = load_dataset("mnist-sample")
    for x, t, n, ref_x, ref_t in (
        (x_train, t_train, 5000, ds.x_train, ds.t_train),
        (x_test, t_test, 1000, ds.x_test, ds.t_test),
    ):
        assert x.shape == ((n, 784) if flatten else (n, 1, 28, 28))
        if normalize:
            assert x.dtype == np.float32
            assert x.min() == 0.0 and x.max() == 1.0
            np.testing.assert_allclose(x.reshape(ref_x.shape) * 255, ref_x, atol=1e-4)
        else:
            assert x.dtype == np.uint8
            np.testing.assert_array_equal(x.reshape(ref_x.shape), ref_x)
        if one_hot:
            assert t.dtype == np.float32 and t.shape == (n, 10)
            np.testing.assert_array_equal(t.sum(axis=1), 1.0)
            np.testing.assert_array_equal(t.argmax(axis=1), ref_t)
        else:
            assert t.dtype == np.uint8 and t.shape == (n,)
            np.testing.assert_array_equal(t, ref_t)
        assert x.flags.writeable and t.flags.writeable


def test_load_mnist_defaults_match_book(no_network: None) -> None:
    (x, t), _ = load_mnist(dataset="mnist-sample")
    assert x.shape == (5000, 784) and x.dtype == np.float32 and t.dtype == np.uint8


def test_load_mnist_does_not_alias_dataset(no_network: None) -> None:
    (x, t), _ = load_mnist(normalize=False, flatten=False, dataset="mnist-sample")
    x[:] = 0
    t[:] = 0
    ds = load_dataset("mnist-sample")
    assert ds.x_train.any() and ds.t_train.any()


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="cifar100") as e:
        load_dataset("cifar100")
    for name in DATASET_NAMES:
        assert repr(name) in str(e.value)
    with pytest.raises(ValueError, match="mnist-sample"):
        load_mnist(dataset="kmnist")


def test_dataset_is_frozen_and_validated() -> None:
    x = np.zeros((3, 1, 28, 28), np.uint8)
    t = np.zeros(3, np.uint8)
    ds = Dataset(x, t, x, t, name="toy", class_names=tuple("0123456789"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="3 images, 2 labels"):
        Dataset(x, t[:2], x, t, name="toy", class_names=tuple("0123456789"))
    with pytest.raises(ValueError, match="uint8"):
        Dataset(x.astype(np.float32), t, x, t, name="toy", class_names=tuple("0123456789"))
    with pytest.raises(ValueError, match="label 9 but there are only 2"):
        Dataset(x, t + 9, x, t, name="toy", class_names=("a", "b"))
    assert "train=(3, 1, 28, 28)" in repr(ds)


def test_fashion_class_names() -> None:
    names = CLASS_NAMES["fashion-mnist"]
    assert len(names) == 10 and names[0] == "T-shirt/top" and names[9] == "Ankle boot"


# ---------------------------------------------------------------------------
# Where files come from


def test_source_order(
    no_network: None, clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit = write_set(tmp_path / "explicit", 3)
    env_root = tmp_path / "env"
    write_set(env_root / "mnist", 4)  # <dataset>/ subfolder form
    write_set(clean_env / "xpcnn" / "mnist", 5)
    monkeypatch.setenv("XPCNN_DATA", str(env_root))

    ds = load_dataset("mnist", explicit, download=False)
    assert len(ds.t_train) == 3 and ds.source == str(explicit)
    assert len(load_dataset("mnist", download=False).t_train) == 4
    monkeypatch.delenv("XPCNN_DATA")
    ds = load_dataset("mnist", download=False)
    assert len(ds.t_train) == 5 and ds.source == str(clean_env / "xpcnn" / "mnist")
    # an XPCNN_DATA without the files falls through to the cache
    monkeypatch.setenv("XPCNN_DATA", str(tmp_path / "empty"))
    assert len(load_dataset("mnist", download=False).t_train) == 5


def test_env_files_directly_inside(
    no_network: None, clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XPCNN_DATA", str(write_set(tmp_path / "flat", 6)))
    ds = load_dataset("mnist", download=False)
    assert ds.x_train.shape == (6, 1, 28, 28) and ds.x_test.shape == (2, 1, 28, 28)


def test_data_dir_subfolder_and_uncompressed(
    no_network: None, clean_env: Path, tmp_path: Path
) -> None:
    write_set(tmp_path / "root" / "fashion-mnist", 7, gz=False)
    ds = load_dataset("fashion-mnist", tmp_path / "root", download=False)
    assert len(ds.t_train) == 7 and ds.class_names == CLASS_NAMES["fashion-mnist"]


def test_explicit_data_dir_without_files_is_error(
    no_network: None, clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_set(clean_env / "xpcnn" / "mnist", 5)
    monkeypatch.setenv("XPCNN_DATA", str(write_set(tmp_path / "env", 4)))
    partial = tmp_path / "partial"
    write_set(partial, 3)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte") as e:
        load_dataset("mnist", partial)  # download=True, still no fall-through
    assert str(partial) in str(e.value)


def test_not_found_without_download(no_network: None, clean_env: Path) -> None:
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", download=False)
    msg = str(e.value)
    assert "\n" not in msg  # the CLI prints it as one line
    assert "download=False" in msg
    assert "--data-dir" in msg and "data_dir=" in msg and "XPCNN_DATA" in msg
    assert str(clean_env / "xpcnn" / "mnist") in msg


def test_cache_dir_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir("mnist") == tmp_path / ".cache" / "xpcnn" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("fashion_mnist") == tmp_path / "xdg" / "xpcnn" / "fashion-mnist"


def test_label_file_mismatch_names_files(no_network: None, clean_env: Path, tmp_path: Path) -> None:
    folder = write_set(tmp_path / "d", 4)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(IDXError, match="does not match") as e:
        load_dataset("mnist", folder)
    msg = str(e.value)
    assert "train-labels-idx1-ubyte.gz" in msg and "train-images-idx3-ubyte.gz" in msg
    assert "expected 4 labels, found 3" in msg


def test_swapped_files_rejected(no_network: None, clean_env: Path, tmp_path: Path) -> None:
    folder = write_set(tmp_path / "d", 4)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros(2, np.uint8))
    with pytest.raises(IDXError, match="expected magic 0x00000803"):
        load_dataset("mnist", folder)


# ---------------------------------------------------------------------------
# Downloads from a local HTTP server


class _Server(ThreadingHTTPServer):
    routes: dict[str, tuple[int, bytes, int | None]]
    hits: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        status, body, length = self.server.routes.get(self.path, (404, b"", None))
        if status != 200:
            self.send_error(status)
            return
        self.send_response(200)
        # A length larger than the body, then closing, simulates a cut transfer.
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, _Server]]:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.routes, srv.hits = {}, []
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


BODY = gzip.compress(idx_bytes((100,), bytes(range(100))), mtime=0)


def test_download_good_file(server: tuple[str, _Server], tmp_path: Path) -> None:
    base, srv = server
    srv.routes["/m/a.gz"] = (200, BODY, None)
    dest = tmp_path / "dl"
    path = download_file("a.gz", dest, md5=_md5(BODY), mirrors=[base + "/m/"], progress=False)
    assert path == dest / "a.gz" and path.read_bytes() == BODY
    assert sorted(p.name for p in dest.iterdir()) == ["a.gz"]  # no temp leftovers


def test_download_wrong_checksum(server: tuple[str, _Server], tmp_path: Path) -> None:
    base, srv = server
    srv.routes["/m/a.gz"] = (200, BODY, None)
    dest = tmp_path / "dl"
    with pytest.raises(DatasetError, match=f"MD5 mismatch: expected {'0' * 32}, got {_md5(BODY)}"):
        download_file("a.gz", dest, md5="0" * 32, mirrors=[base + "/m/"], progress=False)
    assert list(dest.iterdir()) == []


def test_download_truncated_transfer(server: tuple[str, _Server], tmp_path: Path) -> None:
    base, srv = server
    srv.routes["/m/a.gz"] = (200, BODY[:50], len(BODY))
    dest = tmp_path / "dl"
    with pytest.raises(DatasetError, match=r"incomplete|IncompleteRead") as e:
        download_file("a.gz", dest, md5=_md5(BODY), mirrors=[base + "/m/"], progress=False)
    assert f"{base}/m/a.gz" in str(e.value)
    assert list(dest.iterdir()) == []


def test_download_next_mirror_after_500(server: tuple[str, _Server], tmp_path: Path) -> None:
    base, srv = server
    srv.routes["/bad/a.gz"] = (500, b"", None)
    srv.routes["/good/a.gz"] = (200, BODY, None)
    path = download_file(
        "a.gz",
        tmp_path,
        md5=_md5(BODY),
        mirrors=[base + "/bad/", base + "/good"],
        progress=False,
    )
    assert path.read_bytes() == BODY
    assert srv.hits == ["/bad/a.gz", "/good/a.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gz"]


def test_download_all_mirrors_fail(
    server: tuple[str, _Server], clean_env: Path, tmp_path: Path
) -> None:
    base, srv = server
    name = "train-images-idx3-ubyte.gz"
    srv.routes[f"/bad/{name}"] = (500, b"", None)
    dest = tmp_path / "dl"
    with pytest.raises(DatasetError) as e:
        download(
            "mnist",
            dest,
            mirrors=[base + "/bad/", base + "/missing/"],
            md5={name: _md5(BODY)},
            only=[name],
            progress=False,
        )
    msg = str(e.value)
    assert "\n" not in msg  # the CLI prints it as one line
    assert msg.startswith(f"could not download {name} (")
    assert f"{base}/bad/{name}: HTTPError: HTTP Error 500" in msg
    assert f"{base}/missing/{name}: HTTPError: HTTP Error 404" in msg
    assert "--data-dir" in msg and "data_dir=" in msg and "XPCNN_DATA" in msg
    assert str(clean_env / "xpcnn" / "mnist") in msg
    assert list(dest.iterdir()) == []


def test_cli_failed_download_prints_one_line(
    server: tuple[str, _Server],
    clean_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from xpcnn.cli import main

    base, srv = server  # no routes: every file is a 404
    monkeypatch.setitem(MIRRORS, "mnist", (base + "/a/", base + "/b/"))
    out = tmp_path / "run"
    status = main(["train", "--dataset", "mnist", "--epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert status != 0
    assert err.count("\n") == 1, err
    name = "train-images-idx3-ubyte.gz"
    assert err.startswith(f"xpcnn train: error: could not download {name} (")
    assert f"{base}/a/{name}: HTTPError: HTTP Error 404" in err
    assert f"{base}/b/{name}: HTTPError: HTTP Error 404" in err
    assert "--data-dir" in err and str(clean_env / "xpcnn" / "mnist") in err
    assert srv.hits == [f"/a/{name}", f"/b/{name}"]  # stops at the first file that fails


def test_load_dataset_downloads_into_cache(
    server: tuple[str, _Server], clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, srv = server
    src = write_set(tmp_path / "src", 5, 3)
    digests = {}
    for p in src.iterdir():
        srv.routes[f"/mnist/{p.name}"] = (200, p.read_bytes(), None)
        digests[p.name] = _md5(p.read_bytes())
    monkeypatch.setitem(MIRRORS, "mnist", (base + "/down/", base + "/mnist/"))
    monkeypatch.setitem(MD5, "mnist", digests)
    # one file already cached: only the other three are fetched
    cache = clean_env / "xpcnn" / "mnist"
    cache.mkdir(parents=True)
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(
        (src / "t10k-labels-idx1-ubyte.gz").read_bytes()
    )

    ds = load_dataset("mnist", progress=False)
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.x_test.shape == (3, 1, 28, 28)
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in src.iterdir())
    assert "/mnist/t10k-labels-idx1-ubyte.gz" not in srv.hits
    assert len(srv.hits) == 6  # three files, each after one failed mirror
    srv.hits.clear()
    load_dataset("mnist", progress=False)  # now entirely from the cache
    assert srv.hits == []


# ---------------------------------------------------------------------------
# Real data in ../shared/data (skipped when absent)


@pytest.fixture
def fashion_dir() -> Path:
    d = SHARED / "fashion-mnist"
    if not (d / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("../shared/data/fashion-mnist is not present")
    return d


def test_full_mnist(mnist_dir: Path, no_network: None) -> None:
    ds = load_dataset("mnist", mnist_dir, download=False)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(ds.t_train), MNIST_TRAIN_COUNTS)
    np.testing.assert_array_equal(np.bincount(ds.t_test), MNIST_TEST_COUNTS)


@pytest.mark.parametrize("stem", sorted(SHA256))
def test_mnist_content_sha256(mnist_dir: Path, stem: str) -> None:
    a = read_idx(mnist_dir / f"{stem}.gz")
    header = bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    assert hashlib.sha256(header + a.tobytes()).hexdigest() == SHA256[stem]


def test_sample_script_reproduces_bundled_sample(mnist_dir: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "make_mnist_sample", REPO / "scripts" / "make_mnist_sample.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "s.npz"
    args = ["--source", str(mnist_dir), "--out", str(out)]
    assert script.main([*args, *"--train 5000 --test 1000 --seed 0".split()]) == 0
    bundled = load_dataset("mnist-sample")
    with np.load(out, allow_pickle=False) as z:
        for key in FILES:
            np.testing.assert_array_equal(z[key], getattr(bundled, key))


def test_full_fashion_mnist(fashion_dir: Path, no_network: None) -> None:
    ds = load_dataset("fashion-mnist", fashion_dir, download=False)
    np.testing.assert_array_equal(np.bincount(ds.t_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.t_test), [1000] * 10)
    assert ds.class_names[0] == "T-shirt/top"


def test_images_of_another_shape_are_refused(no_network: None, clean_env: Path, tmp_path: Path):
    folder = write_set(tmp_path / "d", 3)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(
        DatasetError, match=r"mnist images are \(1, 28, 28\), these are \(1, 32, 32\)"
    ):
        load_dataset("mnist", folder)
