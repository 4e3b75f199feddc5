"""The bundled networks (``xpcnn.load_pretrained``, ``pretrained:NAME`` on the command
line): provenance and SHA-256 checks, accuracy on the bundled sample and, when the MNIST
files are present, on the whole test set at the issue's thresholds."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xpcnn
from xpcnn import pretrained
from xpcnn.checkpoint import CheckpointError, load_checkpoint
from xpcnn.cli import main
from xpcnn.data import load_dataset
from xpcnn.errors import ConfigError
from xpcnn.models import DeepConvNet, SimpleConvNet
from xpcnn.pretrained._bundle import bundle
from xpcnn.train import Trainer

# Issue 22: the book's accuracies (ch. 7: about 0.987; ch. 8: 0.9938), on all 10,000 images.
FULL_TEST_ACCURACY = {"simple": 0.987, "deep": 0.993}
CLASSES = {"simple": SimpleConvNet, "deep": DeepConvNet}
N_PARAMS = {"simple": 433_890, "deep": 123_552}  # gradient sizes of docs/distributed.md


@pytest.fixture(scope="module")
def sample():
    return load_dataset("mnist-sample")


def test_provenance_names_the_recipe_and_the_files_digest():
    records = pretrained.provenance()
    assert pretrained.NAMES == ("simple", "deep") == tuple(records)
    folder = Path(pretrained.__file__).parent
    for name, r in records.items():
        data = (folder / r["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
        assert f"--model {name}" in r["command"] and f"--seed {r['seed']}" in r["command"]
        assert len(r["code"]) == 40 and int(r["code"], 16) >= 0
        assert r["test_accuracy"] >= FULL_TEST_ACCURACY[name]
        assert len(r["source_sha256"]) == 64
        assert len(data) < 2_000_000  # parameters only, no optimizer state


@pytest.mark.parametrize("name", pretrained.NAMES)
def test_load_pretrained_returns_the_named_network(name, sample):
    net = xpcnn.load_pretrained(name)
    assert isinstance(net, CLASSES[name])
    assert str(net.dtype) == "float32"
    assert sum(int(np.prod(v.shape)) for v in net.params.values()) == N_PARAMS[name]
    # The sample's test images come from MNIST's test set: measured 0.990 and 0.995.
    assert net.accuracy(sample.x_test, sample.t_test) >= 0.985


@pytest.mark.parametrize("name", pretrained.NAMES)
def test_full_test_set_accuracy(name, mnist_dir):
    data = load_dataset("mnist", mnist_dir, download=False)
    acc = xpcnn.load_pretrained(name).accuracy(data.x_test, data.t_test)
    assert acc >= FULL_TEST_ACCURACY[name]
    # What the provenance file says, within three images (code paths round differently).
    assert abs(acc - pretrained.provenance()[name]["test_accuracy"]) <= 3e-4


def test_every_backend_gives_the_same_labels(backend, sample):
    x = sample.x_test[:20]
    expected = xpcnn.load_pretrained("simple").predict(x).argmax(axis=1)
    net = xpcnn.load_pretrained("simple", device=backend)
    assert net.device.backend == backend.backend
    np.testing.assert_array_equal(backend.to_numpy(net.predict(x)).argmax(axis=1), expected)


@pytest.fixture
def copied(tmp_path, monkeypatch):
    """The bundled files copied to ``tmp_path``, which the module then reads."""
    folder = Path(pretrained.__file__).parent
    for f in ["PROVENANCE.json", *(r["file"] for r in pretrained.provenance().values())]:
        shutil.copy(folder / f, tmp_path / f)
    monkeypatch.setattr(pretrained, "_resource", lambda name: tmp_path / name)
    return tmp_path


def test_altered_file_is_refused(copied):
    data = bytearray((copied / "deep.npz").read_bytes())
    data[len(data) // 2] ^= 1
    (copied / "deep.npz").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"'deep'.*SHA-256.*altered or damaged; reinstall"):
        xpcnn.load_pretrained("deep")
    assert isinstance(xpcnn.load_pretrained("simple"), SimpleConvNet)  # the other is fine


def test_missing_file_is_named(copied):
    (copied / "simple.npz").unlink()
    with pytest.raises(CheckpointError, match=r"'simple'.*cannot be read.*reinstall"):
        pretrained.checkpoint_path("simple")


def test_unknown_name_lists_the_choices():
    with pytest.raises(
        ConfigError, match=r"no pretrained network 'lenet': choose one of simple, deep"
    ):
        xpcnn.load_pretrained("lenet")


def test_resolve_checkpoint(tmp_path):
    assert pretrained.resolve_checkpoint("pretrained:deep") == pretrained.checkpoint_path("deep")
    assert pretrained.resolve_checkpoint(tmp_path / "c.npz") == tmp_path / "c.npz"
    assert pretrained.resolve_checkpoint("runs/x/checkpoint.npz") == Path("runs/x/checkpoint.npz")


def test_bundle_keeps_parameters_configuration_and_epoch_history(tmp_path, sample):
    net = SimpleConvNet(hidden_size=10, seed=0)
    trainer = Trainer(
        net, sample.x_train[:300], sample.t_train[:300], sample.x_test[:100],
        sample.t_test[:100], epochs=2, mini_batch_size=100, verbose=False,
    )  # fmt: skip
    trainer.train()
    source = trainer.save_checkpoint(tmp_path / "checkpoint.npz", extra={"run": {"seed": 0}})
    (tmp_path / "PROVENANCE.json").write_text(json.dumps({"tiny": {"command": "by hand"}}))
    out = bundle("tiny", source, tmp_path)
    arrays, meta = load_checkpoint(out)
    assert sorted(arrays) == sorted(f"params/{k}" for k in net.params)
    for k, v in net.params.items():
        np.testing.assert_array_equal(arrays[f"params/{k}"], np.asarray(v))
    assert meta["model"] == net.config and meta["run"] == {"seed": 0}
    history = trainer.history()
    assert meta["history"]["test_acc"] == history["test_acc"]
    steps = np.asarray(history["train_loss"]).reshape(2, -1)  # 3 steps per epoch
    np.testing.assert_allclose(meta["history"]["train_loss"], steps.mean(axis=1))
    record = json.loads((tmp_path / "PROVENANCE.json").read_text())["tiny"]
    assert record["command"] == "by hand" and record["file"] == "tiny.npz"
    assert record["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert record["source_sha256"] == hashlib.sha256(Path(source).read_bytes()).hexdigest()


# -- the command line: pretrained:NAME wherever a checkpoint goes ---------------------------


def test_cli_evaluate(capsys):
    assert main(["evaluate", "pretrained:simple", "--dataset", "mnist-sample"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mnist-sample test accuracy 0.9900 (1000 images, float32)")


def test_cli_predict(tmp_path, sample, capsys):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(255 - sample.x_test[i, 0]).resize((112, 112)).save(paths[-1])
    assert main(["predict", "pretrained:deep", *paths, "--json"]) == 0
    got = [r["top"][0]["label"] for r in json.loads(capsys.readouterr().out)]
    assert got == sample.t_test[:3].tolist()


def test_cli_visualize_draws_filters_before_and_after_and_curves(tmp_path, capsys):
    argv = ["visualize", "pretrained:simple", "--dataset", "mnist-sample", "--out", str(tmp_path)]
    assert main([*argv, "--what", "filters,curves"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["curves.png", "filters_after.png", "filters_before.png"]


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx is not installed")
def test_cli_export(tmp_path, capsys):
    assert main(["export", "pretrained:deep", str(tmp_path / "deep.onnx")]) == 0
    assert "input 'input' float32 (N, 1, 28, 28)" in capsys.readouterr().out


def test_cli_unknown_name_is_one_line(capsys):
    assert main(["evaluate", "pretrained:alexnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "xpcnn evaluate: error: no pretrained network 'alexnet': choose one of simple, deep "
        "(e.g. pretrained:simple)"
    )
