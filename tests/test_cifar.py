"""CIFAR-10's binary release: the reader, where the files are found, the verified
download and the safe unpacking of its archive.

No network: small synthetic files in the official layout (1 label byte + 3,072 pixel
bytes per record, red then green then blue planes, row-major) with fewer records per
file than the release's 10,000 (``RECORDS_PER_FILE`` lowered), and a fake
``urllib.request.urlopen`` serving a synthetic archive.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from xpcnn.data import (
    CLASS_NAMES,
    DATASETS,
    MD5,
    CIFARError,
    DatasetError,
    cache_dir,
    cifar,
    download,
    load_dataset,
    read_cifar_batch,
)
from xpcnn.models import MODELS

RECORDS = 20
ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
BATCHES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def batch_bytes(seed: int, n: int = RECORDS) -> bytes:
    """``n`` records: labels cycling 0..9 from ``seed``, random pixels."""
    rng = np.random.default_rng(seed)
    records = np.empty((n, 3073), np.uint8)
    records[:, 0] = (np.arange(n) + seed) % 10
    records[:, 1:] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return records.tobytes()


def write_batches(folder: Path, n: int = RECORDS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(BATCHES):
        (folder / name).write_bytes(batch_bytes(seed, n))
    return folder


@pytest.fixture(autouse=True)
def small_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Files of RECORDS records; no XPCNN_DATA; the cache under tmp_path."""
    monkeypatch.setattr(cifar, "RECORDS_PER_FILE", RECORDS)
    monkeypatch.delenv("XPCNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_the_release_size_is_the_documented_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    assert cifar.RECORDS_PER_FILE * cifar.RECORD_BYTES == 30_730_000  # the release's readme


def test_a_record_is_a_label_then_red_green_blue_planes_row_major(tmp_path: Path) -> None:
    path = tmp_path / "b.bin"
    path.write_bytes(batch_bytes(3))
    x, t = read_cifar_batch(path)
    assert x.shape == (RECORDS, 3, 32, 32) and t.shape == (RECORDS,)
    assert x.dtype == t.dtype == np.uint8
    raw = np.frombuffer(path.read_bytes(), np.uint8).reshape(RECORDS, 3073)
    np.testing.assert_array_equal(t, raw[:, 0])
    n, c, h, w = 7, 2, 5, 30
    assert x[n, c, h, w] == raw[n, 1 + c * 1024 + h * 32 + w]
    assert not x.flags.writeable


def test_load_dataset_reads_the_six_batches_in_order(tmp_path: Path) -> None:
    write_batches(tmp_path / "data" / "cifar10")
    ds = load_dataset("cifar10", tmp_path / "data", download=False)
    assert ds.x_train.shape == (5 * RECORDS, 3, 32, 32) and ds.x_test.shape == (RECORDS, 3, 32, 32)
    assert ds.class_names == CLASS_NAMES["cifar10"] == DATASETS["cifar10"].class_names
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
    x3, t3 = read_cifar_batch(tmp_path / "data" / "cifar10" / "data_batch_3.bin")
    np.testing.assert_array_equal(ds.x_train[2 * RECORDS : 3 * RECORDS], x3)
    np.testing.assert_array_equal(ds.t_train[2 * RECORDS : 3 * RECORDS], t3)
    x, t = read_cifar_batch(tmp_path / "data" / "cifar10" / "test_batch.bin")
    np.testing.assert_array_equal(ds.x_test, x)
    np.testing.assert_array_equal(ds.t_test, t)
    assert not ds.x_train.flags.writeable and not ds.t_test.flags.writeable


@pytest.mark.parametrize("sub", ["cifar10", FOLDER, ""], ids=["name", "archive-folder", "flat"])
def test_the_files_are_found_in_each_accepted_folder(tmp_path: Path, sub: str) -> None:
    write_batches(tmp_path / "d" / sub)
    assert load_dataset("CIFAR-10", tmp_path / "d", download=False).name == "cifar10"


def test_environment_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_batches(cache_dir("cifar10"), n=RECORDS)
    assert load_dataset("cifar10", download=False).source == str(cache_dir("cifar10"))
    write_batches(tmp_path / "env" / FOLDER)
    monkeypatch.setenv("XPCNN_DATA", str(tmp_path / "env"))
    assert load_dataset("cifar10", download=False).source == str(tmp_path / "env" / FOLDER)


def test_missing_files_are_named(tmp_path: Path) -> None:
    folder = write_batches(tmp_path / "d")
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", folder)
    msg = str(e.value)
    assert "data_batch_4.bin" in msg and "\n" not in msg
    assert str(folder / FOLDER) in msg and str(folder / "cifar10") in msg
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", download=False)
    assert "cifar-10-batches-bin/" in str(e.value) and ARCHIVE in str(e.value)


@pytest.mark.parametrize(
    ("size", "fragments"),
    [
        (RECORDS * 3073 - 100, ["19 records and 2973 bytes", "truncated"]),
        (RECORDS * 3073 + 3073, ["21 records", "expected 61,460"]),
        (0, ["0 bytes"]),
    ],
    ids=["truncated", "one-record-too-many", "empty"],
)
def test_a_file_of_the_wrong_size_is_named_in_one_line(
    tmp_path: Path, size: int, fragments: list[str]
) -> None:
    folder = write_batches(tmp_path / "d")
    bad = folder / "data_batch_2.bin"
    bad.write_bytes((batch_bytes(9, RECORDS + 1) + bytes(3073))[:size])
    with pytest.raises(CIFARError) as e:
        load_dataset("cifar10", folder)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: ") and "\n" not in msg
    for f in fragments:
        assert f in msg, msg


def test_a_label_outside_0_to_9_is_refused(tmp_path: Path) -> None:
    folder = write_batches(tmp_path / "d")
    raw = bytearray((folder / "test_batch.bin").read_bytes())
    raw[5 * 3073] = 42
    (folder / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(CIFARError, match="record 5 has label 42, but CIFAR-10 labels are 0-9"):
        load_dataset("cifar10", folder)


def test_cli_wrong_size_file_is_one_line_exit_2_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xpcnn.cli import main

    folder = write_batches(tmp_path / "d")
    (folder / "test_batch.bin").write_bytes(batch_bytes(1)[:-1])
    out = tmp_path / "run"
    argv = ["train", "--dataset", "cifar10", "--data-dir", str(folder), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xpcnn train: error: ")
    assert "test_batch.bin: 61,459 bytes" in err
    assert not out.exists()


# -- the download and its archive ---------------------------------------------------------


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buf.getvalue()


def member(name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE) -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
    return info, data


def release(*extra: tuple, drop: str = "", prefix: str = "") -> bytes:
    """An archive laid out as the release: the folder, the six batches, the two
    text files; ``extra`` members added, ``drop`` left out."""
    members = [member(prefix + FOLDER, kind=tarfile.DIRTYPE)]
    members += [
        member(f"{prefix}{FOLDER}/{name}", batch_bytes(seed))
        for seed, name in enumerate(BATCHES)
        if name != drop
    ]
    members += [member(f"{FOLDER}/{n}", b"text\n") for n in ("batches.meta.txt", "readme.html")]
    return tar_gz([*members, *extra])


class FakeResponse(io.BytesIO):
    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self.headers = {"Content-Length": str(len(body))}


def serve(monkeypatch: pytest.MonkeyPatch, body: bytes, md5: str | None = None) -> list[str]:
    """``urlopen`` answers every URL with ``body``; CIFAR-10's MD5 becomes ``md5``
    (default: the body's own). Returns the URLs asked for."""
    urls: list[str] = []

    def urlopen(request: urllib.request.Request, timeout: float) -> FakeResponse:
        urls.append(request.full_url)
        return FakeResponse(body)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    digest = md5 or hashlib.md5(body, usedforsecurity=False).hexdigest()
    monkeypatch.setitem(MD5, "cifar10", {ARCHIVE: digest})
    return urls


def test_the_registered_download_is_the_release_with_its_md5() -> None:
    info = DATASETS["cifar10"]
    assert info.archive == ARCHIVE and info.mirrors == ("https://www.cs.toronto.edu/~kriz/",)
    assert info.md5 == {ARCHIVE: "c32a1d4ab5d03f1284b67883e8d87530"}


@pytest.mark.parametrize("prefix", ["", "./"], ids=["plain", "dot-slash"])
def test_download_unpacks_the_batches_into_the_cache(
    monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    urls = serve(monkeypatch, release(prefix=prefix))
    ds = load_dataset("cifar10", progress=False)
    assert urls == [f"https://www.cs.toronto.edu/~kriz/{ARCHIVE}"]
    cache = cache_dir("cifar10")
    assert sorted(p.name for p in cache.iterdir()) == sorted(BATCHES)  # no archive, no text
    assert ds.x_train.shape == (5 * RECORDS, 3, 32, 32)
    np.testing.assert_array_equal(ds.t_test, read_cifar_batch(cache / "test_batch.bin")[1])
    urls.clear()
    load_dataset("cifar10", progress=False)
    assert urls == []  # from the cache


def test_download_function_unpacks_into_a_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    serve(monkeypatch, release())
    dest = download("cifar10", tmp_path / "here", progress=False)
    assert sorted(p.name for p in dest.iterdir()) == sorted(BATCHES)


def test_a_tampered_archive_fails_its_md5_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = release()
    good = hashlib.md5(body, usedforsecurity=False).hexdigest()
    tampered = body[:-10] + bytes(10)
    serve(monkeypatch, tampered, md5=good)
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", progress=False)
    msg = str(e.value)
    assert f"MD5 mismatch: expected {good}" in msg and "\n" not in msg
    assert list(cache_dir("cifar10").iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "drop", "fragments"),
    [
        ([member("cifar-10-batches-bin/../../evil.bin", b"x")], "", ["unexpected member", "../"]),
        ([member("/tmp/evil.bin", b"x")], "", ["unexpected member '/tmp/evil.bin'"]),
        ([member("other/data_batch_1.bin", b"x")], "", ["unexpected member 'other/"]),
        (
            [member(f"{FOLDER}/data_batch_1.bin", kind=tarfile.SYMTYPE)],
            "data_batch_1.bin",
            ["symbolic link", "not a regular file"],
        ),
        (
            [member(f"{FOLDER}/test_batch.bin", kind=tarfile.LNKTYPE)],
            "test_batch.bin",
            ["hard link"],
        ),
        ([member(f"{FOLDER}/data_batch_2.bin", b"short")], "data_batch_2.bin", ["5 bytes"]),
        ([], "data_batch_5.bin", ["lacks cifar-10-batches-bin/data_batch_5.bin"]),
    ],
    ids=["dot-dot", "absolute", "other-folder", "symlink", "hard-link", "wrong-size", "missing"],
)
def test_an_unsafe_or_unexpected_archive_is_refused_and_nothing_is_written(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    extra: list[tuple],
    drop: str,
    fragments: list[str],
) -> None:
    if "symbolic" in fragments[0]:
        extra[0][0].linkname = "/etc/passwd"
    if "hard link" in fragments[0]:
        extra[0][0].linkname = f"{FOLDER}/readme.html"
    serve(monkeypatch, release(*extra, drop=drop))
    with pytest.raises(CIFARError) as e:
        load_dataset("cifar10", progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    assert list(cache_dir("cifar10").iterdir()) == []  # no batch, no archive, no staging
    assert not (tmp_path / "evil.bin").exists() and not Path("/tmp/evil.bin").exists()


def test_a_corrupt_archive_with_a_matching_md5_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    serve(monkeypatch, release()[: 3 * 3073])  # truncated gzip stream
    with pytest.raises(CIFARError, match="corrupt or truncated archive"):
        load_dataset("cifar10", progress=False)
    assert list(cache_dir("cifar10").iterdir()) == []


# -- every named net on 3x32x32, and the command line on CIFAR-10 ---------------------------


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_named_net_builds_and_trains_on_cifar_images(model):
    net = MODELS[model].for_input((3, 32, 32), output_size=10, seed=0)
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    grads = net.gradient(x, np.array([3, 7]))
    assert net.predict(x).shape == (2, 10)
    assert grads["W1"].shape[1] == 3  # the first convolution takes the three colours
    assert all(np.isfinite(g).all() for g in grads.values())


@pytest.fixture
def cifar_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, str]:
    """A small CIFAR-10-like folder, a one-epoch run on it with augmentation, and
    what the run wrote on stderr."""
    from xpcnn.cli import main

    folder = write_batches(tmp_path / "data" / FOLDER)
    out = tmp_path / "run"
    argv = ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--epochs",
            "1", "--augment", "crop,flip", "--out", str(out), "--no-progress", "--seed", "2"]  # fmt: skip
    assert main(argv) == 0
    return folder.parent, out, capsys.readouterr().err


def test_cli_trains_evaluates_visualizes_and_predicts_with_class_names(
    cifar_run: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from xpcnn.checkpoint import load_checkpoint
    from xpcnn.cli import main

    data, out, err = cifar_run
    _, meta = load_checkpoint(out / "checkpoint.npz")
    assert meta["run"]["dataset"] == "cifar10" and meta["run"]["augment"] == "crop,flip"
    assert meta["model"]["input_dim"] == [3, 32, 32]
    assert "training simple on cifar10 (100 train / 20 test)" in err and "augment crop,flip" in err

    ckpt = str(out / "checkpoint.npz")
    assert main(["evaluate", ckpt, "--data-dir", str(data)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("cifar10 test accuracy ") and "(20 images, float32)" in lines[0]
    assert [line.split(":")[0].strip() for line in lines[1:]] == list(CLASS_NAMES["cifar10"])

    assert main(["visualize", ckpt, "--data-dir", str(data), "--out", str(tmp_path / "v")]) == 0
    assert len(list((tmp_path / "v").glob("*.png"))) == 7
    capsys.readouterr()

    Image.new("RGB", (50, 40), (200, 30, 30)).save(tmp_path / "red.png")
    assert main(["predict", ckpt, str(tmp_path / "red.png"), "--top", "10", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert sorted(t["class"] for t in top) == sorted(CLASS_NAMES["cifar10"])
    assert main(["evaluate", ckpt, "--data-dir", str(data), "--dtype", "float16"]) == 0
    assert "(20 images, float16)" in capsys.readouterr().out


def test_cli_resume_keeps_the_augmentation_and_refuses_another(
    cifar_run: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from xpcnn.cli import main

    data, out, _ = cifar_run
    ckpt = str(out / "checkpoint.npz")
    base = ["train", "--resume", ckpt, "--data-dir", str(data), "--epochs", "2", "--no-progress"]
    assert main([*base, "--augment", "crop"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "xpcnn train: error: --augment crop differs from the resumed run's crop,flip"
    )
    assert main(base) == 0
    assert "augment crop,flip" in capsys.readouterr().err
