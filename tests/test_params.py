"""The book's ``save_params`` / ``load_params`` (as .npz, never pickle) and the public
``xpcnn.load_network``."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from helpers import backend_device

import xpcnn
from xpcnn.backend import to_numpy
from xpcnn.checkpoint import CheckpointError
from xpcnn.data import load_dataset
from xpcnn.models import DeepConvNet, NetBuilder, SimpleConvNet
from xpcnn.train import Trainer

SMALL = {
    "conv_param": {"filter_num": 3, "filter_size": 5, "pad": 0, "stride": 1},
    "hidden_size": 8,
}


def test_save_params_then_load_params_restores_every_parameter(backend, tmp_path):
    net = SimpleConvNet(**SMALL, dtype="float64", device=backend_device(backend), seed=0)
    path = net.save_params(tmp_path / "params.npz")
    other = SimpleConvNet(**SMALL, dtype="float64", device=backend_device(backend), seed=1)
    assert not np.array_equal(to_numpy(other.params["W1"]), to_numpy(net.params["W1"]))
    other.load_params(path)
    for k in net.params:
        np.testing.assert_array_equal(to_numpy(other.params[k]), to_numpy(net.params[k]))
    x = np.random.default_rng(0).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(to_numpy(other.predict(x)), to_numpy(net.predict(x)))


def test_params_file_is_plain_npz_without_objects(tmp_path):
    net = SimpleConvNet(**SMALL, seed=0)
    path = net.save_params(tmp_path / "params.npz")
    with np.load(path, allow_pickle=False) as f:  # would raise on any pickled member
        np.testing.assert_array_equal(f["params/W1"], net.params["W1"])
        assert {k for k in f.files if k.startswith("params/")} == {
            f"params/{k}" for k in net.params
        }
    assert zipfile.is_zipfile(path)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file


def test_load_params_casts_to_the_networks_dtype_and_keeps_buffers(tmp_path):
    net = DeepConvNet(seed=0, dtype="float64")
    path = net.save_params(tmp_path / "deep.npz")
    other = DeepConvNet(seed=3)  # float32
    other.load_params(path)
    assert other.params["W1"].dtype == np.float32
    np.testing.assert_array_equal(other.params["W1"], net.params["W1"].astype(np.float32))


def test_load_params_of_another_architecture_is_refused(tmp_path):
    path = SimpleConvNet(**SMALL, seed=0).save_params(tmp_path / "p.npz")
    with pytest.raises(CheckpointError, match="W1"):
        SimpleConvNet(seed=0).load_params(path)


def test_load_params_reads_a_training_checkpoint(tmp_path):
    d = load_dataset("mnist-sample")
    net = SimpleConvNet(**SMALL, seed=0)
    x, t = d.x_train[:100], d.t_train[:100]
    trainer = Trainer(net, x, t, x, t, epochs=1, verbose=False)
    trainer.train()
    trainer.save_checkpoint(tmp_path / "checkpoint.npz")
    fresh = SimpleConvNet(**SMALL, seed=1)
    fresh.load_params(tmp_path / "checkpoint.npz")
    np.testing.assert_array_equal(fresh.params["W2"], net.params["W2"])


def test_public_load_network_rebuilds_a_saved_named_network(tmp_path):
    net = SimpleConvNet(**SMALL, seed=0)
    path = net.save_params(tmp_path / "p.npz")
    loaded = xpcnn.load_network(path, device="cpu")
    assert type(loaded) is SimpleConvNet and loaded.config == net.config
    x = np.random.default_rng(1).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(loaded.predict(x), net.predict(x))


def test_load_network_of_a_builder_network_says_to_use_load_params(tmp_path):
    net = NetBuilder((1, 8, 8), seed=0).conv(2, 3).affine(3).build()
    path = net.save_params(tmp_path / "p.npz")
    with pytest.raises(ValueError, match=r"call net\.load_params\(path\)"):
        xpcnn.load_network(path)
    same = NetBuilder((1, 8, 8), seed=9).conv(2, 3).affine(3).build()
    same.load_params(path)
    np.testing.assert_array_equal(same.params["W1"], net.params["W1"])
