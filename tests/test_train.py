"""Trainer: shuffling, learning, checkpoints, exact resume, Ctrl-C and divergence."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from xpcnn.backend import to_numpy
from xpcnn.checkpoint import CheckpointError, load_checkpoint
from xpcnn.data import load_dataset
from xpcnn.models import SimpleConvNet
from xpcnn.train import Trainer, TrainingDiverged, TrainingInterrupted, load_network

SMALL = {
    "conv_param": {"filter_num": 4, "filter_size": 5, "pad": 0, "stride": 1},
    "hidden_size": 16,
}


@pytest.fixture(scope="module")
def data():
    d = load_dataset("mnist-sample")
    return d.x_train[:300], d.t_train[:300], d.x_test[:100], d.t_test[:100]


def make_trainer(data, epochs, dtype="float64", **kw):
    net = SimpleConvNet(**SMALL, dtype=dtype, seed=0)
    kw.setdefault("mini_batch_size", 50)
    return Trainer(net, *data, epochs=epochs, verbose=False, seed=1, **kw)


def params_of(trainer):
    return {k: np.asarray(v) for k, v in trainer.network.params.items()}


def test_each_epoch_visits_every_example_once(data):
    tr = make_trainer(data, epochs=1, mini_batch_size=64)  # 300 = 4*64 + 44: a partial last batch
    seen = []
    step = tr.train_step

    def spy(x, t):
        seen.append(np.asarray(t))
        return step(x, t)

    tr.train_step = spy
    tr.train()
    labels = np.concatenate(seen)
    assert len(seen) == tr.steps_per_epoch == 5
    assert np.array_equal(np.sort(labels), np.sort(data[1]))  # without replacement


def test_history_lengths_and_learning(data):
    tr = make_trainer(
        data, epochs=4, mini_batch_size=30, dtype="float32", optimizer_param={"lr": 0.01}
    )
    h = tr.train()
    assert len(h["train_loss"]) == 4 * 10
    assert len(h["train_acc"]) == len(h["test_acc"]) == 4
    assert np.mean(h["train_loss"][-5:]) < np.mean(h["train_loss"][:5])
    assert h["train_acc"][-1] > 0.5


def test_resume_equals_uninterrupted_training(data, tmp_path):
    straight = make_trainer(data, epochs=4)
    straight.train()

    first = make_trainer(data, epochs=2)
    first.train()
    first.save_checkpoint(tmp_path / "ck.npz")
    resumed = make_trainer(data, epochs=4)
    resumed.load_checkpoint(tmp_path / "ck.npz")
    assert resumed.epoch == 2
    resumed.train()

    a, b = params_of(straight), params_of(resumed)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-12, err_msg=k)
    assert resumed.train_loss_list == pytest.approx(straight.train_loss_list, abs=1e-12)
    assert resumed.test_acc_list == straight.test_acc_list


def test_ctrl_c_stops_after_a_whole_step_and_resumes_exactly(data, tmp_path):
    straight = make_trainer(data, epochs=2)
    straight.train()

    tr = make_trainer(data, epochs=2)
    step = tr.train_step
    calls = []

    def step_then_ctrl_c(x, t):
        out = step(x, t)
        calls.append(1)
        if len(calls) == 8:  # mid-way through epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return out

    tr.train_step = step_then_ctrl_c
    with pytest.raises(TrainingInterrupted):
        tr.train()
    assert (tr.epoch, tr.step_in_epoch) == (1, 2)
    tr.save_checkpoint(tmp_path / "ck.npz")

    resumed = make_trainer(data, epochs=2)
    resumed.load_checkpoint(tmp_path / "ck.npz")
    resumed.train()
    a, b = params_of(straight), params_of(resumed)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-12, err_msg=k)


def test_divergence_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    path = tmp_path / "ck.npz"

    def save_then_explode(trainer):
        trainer.save_checkpoint(path)
        # Simulate a blow-up in the next epoch: a NaN weight makes every loss NaN.
        trainer.network.params["W3"] = trainer.network.params["W3"] * float("nan")

    tr = make_trainer(
        data,
        epochs=3,
        optimizer="SGD",
        optimizer_param={"lr": 0.01},
        on_epoch_end=save_then_explode,
        log_every=2,
    )
    with pytest.raises(TrainingDiverged, match=r"diverged.*lower the learning rate"):
        tr.train()
    arrays, meta = load_checkpoint(path)
    assert meta["trainer"]["epoch"] == 1
    assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")


def test_checkpoint_of_another_architecture_is_refused(data, tmp_path):
    tr = make_trainer(data, epochs=1)
    tr.train()
    tr.save_checkpoint(tmp_path / "ck.npz")
    other = Trainer(SimpleConvNet(hidden_size=8, seed=0), *data, epochs=1, verbose=False)
    before = params_of(other)
    with pytest.raises(CheckpointError, match="W1"):
        other.load_checkpoint(tmp_path / "ck.npz")
    after = params_of(other)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing half-loaded


def test_load_network_rebuilds_the_trained_model(data, tmp_path):
    tr = make_trainer(data, epochs=1, dtype="float32")
    tr.train()
    tr.save_checkpoint(tmp_path / "ck.npz")
    net, meta = load_network(tmp_path / "ck.npz")
    x = data[0][:20].astype(np.float32) / 255
    np.testing.assert_array_equal(np.asarray(net.predict(x)), np.asarray(tr.network.predict(x)))
    assert meta["model"]["model"] == "simple"


def test_bad_trainer_arguments(data):
    with pytest.raises(ValueError, match="mini_batch_size must be a positive integer"):
        make_trainer(data, epochs=1, mini_batch_size=0)
    with pytest.raises(ValueError, match="differ in length"):
        Trainer(SimpleConvNet(**SMALL), data[0], data[1][:10], data[2], data[3])
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_trainer(data, epochs=1, optimizer="adamw")
    with pytest.raises(ValueError, match="lr must be a positive number"):
        make_trainer(data, epochs=1, optimizer_param={"lr": -1.0})


def test_trainer_runs_on_every_backend(backend, data, tmp_path):
    """The whole loop (device-side batching with take, uint8 -> float on the
    device, evaluation, checkpoint) on each backend, including strict's GPU-like
    device1, which refuses implicit host copies."""
    from xpcnn.backend import Device

    dev = Device(backend.name, backend.xp, backend.device)
    net = SimpleConvNet(**SMALL, dtype="float32", device=dev, seed=0)
    tr = Trainer(net, *data, epochs=1, mini_batch_size=64, verbose=False, seed=1)
    h = tr.train()
    assert len(h["train_loss"]) == tr.steps_per_epoch == 5  # partial last batch included
    assert all(np.isfinite(h["train_loss"]))
    assert 0.0 <= tr.test_accuracy() <= 1.0
    tr.save_checkpoint(tmp_path / "ck.npz")
    net_cpu, _ = load_network(tmp_path / "ck.npz", "cpu")  # trained anywhere, evaluated on the CPU
    np.testing.assert_allclose(
        np.asarray(net_cpu.params["W1"]), backend.to_numpy(net.params["W1"]), rtol=0, atol=0
    )


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_resume_of_a_dropout_net_draws_the_same_masks(data, tmp_path, backend_name):
    """Dropout generators travel in the checkpoint: resuming a net with dropout
    gives the parameters of an uninterrupted run."""
    from xpcnn.backend import Device
    from xpcnn.models import NetBuilder

    if backend_name == "torch":
        xp = pytest.importorskip("array_api_compat.torch")
        dev = Device("torch", xp, "cpu")
    else:
        dev = "cpu"

    def make(epochs):
        b = NetBuilder((1, 28, 28), seed=0, dtype="float64", device=dev, weight_init="he")
        net = b.conv(3, 5).relu().pool(2).affine(16).relu().dropout(0.5).affine(10).build()
        return Trainer(net, *data, epochs=epochs, mini_batch_size=50, verbose=False, seed=1)

    straight = make(3)
    straight.train()
    first = make(1)
    first.train()
    first.save_checkpoint(tmp_path / "ck.npz")
    resumed = make(3)
    resumed.load_checkpoint(tmp_path / "ck.npz")
    resumed.train()
    for k, v in straight.network.params.items():
        np.testing.assert_allclose(
            to_numpy(resumed.network.params[k]), to_numpy(v), rtol=0, atol=1e-12, err_msg=k
        )
