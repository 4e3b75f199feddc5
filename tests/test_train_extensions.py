"""The Trainer's validation split, early stopping, learning-rate schedules and logs:
each on its own, together, resumed mid-run (equal to an uninterrupted run), on ranks
run as threads, and with bad values."""

from __future__ import annotations

import csv
import math
import struct

import numpy as np
import pytest
from test_train import SMALL, StopAt, run_ranks

from xpcnn.checkpoint import CheckpointError, load_checkpoint
from xpcnn.data import load_dataset
from xpcnn.errors import ConfigError, XpcnnError
from xpcnn.metrics import count_correct_and_loss
from xpcnn.models import SimpleConvNet
from xpcnn.optim import OPTIMIZERS
from xpcnn.train import (
    CosineLR,
    CSVLog,
    EarlyStopping,
    Extension,
    ReduceLROnPlateau,
    StepLR,
    TensorBoardLog,
    Trainer,
    epoch_rows,
    validation_split,
)
from xpcnn.train.split import split_sizes


@pytest.fixture(scope="module")
def data():
    d = load_dataset("mnist-sample")
    return d.x_train[:300], d.t_train[:300], d.x_test[:100], d.t_test[:100]


def make_trainer(data, epochs, comm=None, **kw):
    net = SimpleConvNet(**SMALL, dtype="float64", seed=0)
    kw.setdefault("mini_batch_size", 50)
    kw.setdefault("val_split", 0.2)
    return Trainer(net, *data, epochs=epochs, verbose=False, seed=1, comm=comm, **kw)


def params_of(trainer):
    return {k: np.asarray(v) for k, v in trainer.network.params.items()}


class Script(Extension):
    """Replaces each epoch's measured ``key`` by ``values[epoch - 1]``: a metric
    sequence chosen by the test, placed after Evaluate and before the monitors."""

    def __init__(self, key, values):
        self.key, self.values = key, values

    def on_epoch_end(self, trainer):
        getattr(trainer, f"{self.key}_list")[-1] = self.values[trainer.epoch - 1]


# -- the split ------------------------------------------------------------------------


def test_validation_split_is_seeded_disjoint_and_sorted():
    keep, held = validation_split(300, 0.2, seed=7)
    assert len(held) == 60 and len(keep) == 240
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(300))
    assert np.all(np.diff(keep) > 0) and np.all(np.diff(held) > 0)
    again = validation_split(300, 0.2, seed=7)
    assert np.array_equal(again[1], held)
    assert not np.array_equal(validation_split(300, 0.2, seed=8)[1], held)
    # Its own stream: not the first shuffle of default_rng(seed), which the batches use.
    assert not np.array_equal(np.sort(np.random.default_rng(7).permutation(300)[:60]), held)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, True, "0.1", 0.001, 0.999])
def test_split_of_no_image_on_one_side_is_refused(fraction):
    with pytest.raises(ConfigError, match="validation split"):
        split_sizes(300, fraction)


def test_trainer_holds_out_the_split_and_measures_it(data):
    tr = make_trainer(data, epochs=2)
    assert tr.x_train.shape[0] == 240 and tr.x_val.shape[0] == 60
    keep, held = validation_split(300, 0.2, seed=1)
    assert np.array_equal(np.asarray(tr.x_val), data[0][held])
    assert np.array_equal(np.asarray(tr.t_train), data[1][keep])
    # The shuffles are those of a run without a split: the split has its own stream.
    assert tr.rng.bit_generator.state == np.random.default_rng(1).bit_generator.state
    h = tr.train()
    assert len(h["val_loss"]) == len(h["val_acc"]) == len(h["train_acc"]) == 2
    assert h["test_acc"] == []  # the test set waits for the end
    assert h["lr"] == [0.001, 0.001]
    both = make_trainer(data, epochs=1, test_each_epoch=True).train()
    assert len(both["test_acc"]) == 1 and len(both["val_acc"]) == 1
    assert make_trainer(data, epochs=1, val_split=None).train()["val_acc"] == []


def test_validation_loss_and_accuracy_match_a_numpy_reference(data):
    tr = make_trainer(data, epochs=1)
    tr.train()
    x, t = np.asarray(tr.x_val), np.asarray(tr.t_val)
    scores = np.asarray(tr.network.predict(x)).astype(np.float64)
    z = scores - scores.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(len(t)), t].mean()
    acc = np.mean(scores.argmax(axis=1) == t)
    assert tr.val_loss_list[-1] == pytest.approx(loss, rel=1e-12)
    assert tr.val_acc_list[-1] == acc
    # Batched sums equal one pass; one-hot labels give the same loss.
    correct, summed = count_correct_and_loss(tr.network, x, t, batch_size=7)
    assert correct == round(acc * len(t)) and summed / len(t) == pytest.approx(loss, rel=1e-12)
    onehot = np.eye(10)[t]
    assert count_correct_and_loss(tr.network, x, onehot, batch_size=7)[1] == pytest.approx(summed)


def test_split_and_validation_metrics_on_every_backend(backend, data):
    """The split taken on the device, the loss summed there and copied once: the same
    split and, to float32 rounding, the same metrics as NumPy (strict's device1
    refuses implicit host copies)."""
    from helpers import backend_device

    def run(device):
        net = SimpleConvNet(**SMALL, dtype="float32", device=device, seed=0)
        tr = Trainer(
            net, *data, epochs=1, mini_batch_size=64, verbose=False, seed=1, val_split=0.25,
            extensions=[StepLR(1, 0.5)],
        )  # fmt: skip
        return tr, tr.train()

    tr, h = run(backend_device(backend))
    ref, h_ref = run("cpu")
    assert np.array_equal(backend.to_numpy(tr.t_val), np.asarray(ref.t_val))
    assert h["val_loss"] == pytest.approx(h_ref["val_loss"], rel=1e-4)
    assert abs(h["val_acc"][0] - h_ref["val_acc"][0]) <= 2 / 75 and h["lr"] == [0.001]


# -- early stopping -------------------------------------------------------------------


def test_early_stopping_stops_after_patience_and_keeps_the_best(data, tmp_path):
    snapshots = {}

    class Snapshot(Extension):
        def on_epoch_end(self, trainer):
            snapshots[trainer.epoch] = params_of(trainer)

    early = EarlyStopping(2, path=tmp_path / "best.npz")
    values = [0.5, 0.6, 0.6, 0.55, 0.9, 0.9]
    tr = make_trainer(data, epochs=6, extensions=[Script("val_acc", values), early, Snapshot()])
    h = tr.train()
    assert tr.epoch == 4
    assert h["stop_reason"] == (
        "val_acc did not improve for 2 epochs (patience exhausted at epoch 4); "
        "best epoch 2, val_acc 0.6000"
    )
    arrays, meta = load_checkpoint(tmp_path / "best.npz")
    assert meta["trainer"]["epoch"] == 2 and meta["extensions"]["EarlyStopping"]["best"] == 0.6
    for k, v in snapshots[2].items():
        assert np.array_equal(arrays[f"params/{k}"], v), k


@pytest.mark.parametrize(
    "monitor, min_delta, values, stopped",
    [
        ("val_acc", 0.05, [0.5, 0.54, 0.6, 0.64, 0.645], 5),  # +0.04 is no improvement
        ("val_loss", 0.0, [1.0, 0.9, 0.95, 0.9, 0.8], 4),  # lower is better; a tie is not
        ("val_loss", 0.0, [1.0, 0.9, 0.8, 0.7, 0.6], None),  # always better: every epoch
    ],
)
def test_early_stopping_monitors_either_metric_with_min_delta(
    data, monitor, min_delta, values, stopped
):
    early = EarlyStopping(2, monitor=monitor, min_delta=min_delta)
    tr = make_trainer(data, epochs=5, extensions=[Script(monitor, values), early])
    h = tr.train()
    assert tr.epoch == (stopped or 5)
    assert (h["stop_reason"] is None) == (stopped is None)


def test_early_stopping_resumes_its_patience_count(data, tmp_path):
    values = [0.5, 0.6, 0.6, 0.6, 0.6]  # patience 3 runs out at epoch 5

    def run(epochs, resume=None):
        exts = [Script("val_acc", values), EarlyStopping(3, path=tmp_path / f"best{epochs}.npz")]
        tr = make_trainer(data, epochs=epochs, extensions=exts)
        if resume:
            tr.load_checkpoint(resume)
        return tr, tr.train()

    straight, h = run(5)
    first, _ = run(3)  # 1 epoch without improvement so far
    first.save_checkpoint(tmp_path / "ck.npz")
    resumed, h2 = run(5, tmp_path / "ck.npz")  # a count restarted at 0 would not stop
    assert "patience exhausted at epoch 5" in h["stop_reason"]
    assert resumed.epoch == straight.epoch == 5 and h2["stop_reason"] == h["stop_reason"]
    assert resumed.extensions[-1].monitor.wait == straight.extensions[-1].monitor.wait == 3


def test_monitors_need_a_validation_set(data):
    for ext in (EarlyStopping(2), ReduceLROnPlateau()):
        tr = make_trainer(data, epochs=1, val_split=None, extensions=[ext])
        with pytest.raises(ConfigError, match="val_split"):
            tr.train()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: EarlyStopping(0), "patience must be an integer >= 1"),
        (lambda: EarlyStopping(-1), "patience"),
        (lambda: EarlyStopping(2, monitor="test_acc"), "monitor must be one of val_acc, val_loss"),
        (lambda: EarlyStopping(2, min_delta=-0.1), "min_delta"),
        (lambda: StepLR(0), "step_size"),
        (lambda: StepLR(2, gamma=1.0), "gamma must be a number strictly between 0 and 1"),
        (lambda: CosineLR(0), "epochs"),
        (lambda: CosineLR(5, lr_min=-1), "lr_min"),
        (lambda: ReduceLROnPlateau(patience=0), "patience"),
        (lambda: ReduceLROnPlateau(gamma=0), "gamma"),
    ],
)
def test_bad_extension_values_are_refused(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


# -- schedules ------------------------------------------------------------------------


def lrs_seen_by_steps(tr):
    """The optimizer's lr at each update, grouped by epoch."""
    seen = {}
    apply = tr.updater.apply

    def spy(grads):
        seen.setdefault(tr.epoch, set()).add(tr.optimizer.lr)
        apply(grads)

    tr.updater.apply = spy
    return seen


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_step_schedule_sets_every_optimizers_lr_per_epoch(data, optimizer):
    tr = make_trainer(
        data, epochs=5, optimizer=optimizer, optimizer_param={"lr": 0.01},
        extensions=[StepLR(2, 0.5)],
    )  # fmt: skip
    seen = lrs_seen_by_steps(tr)
    h = tr.train()
    expected = [0.01, 0.01, 0.005, 0.005, 0.0025]
    assert h["lr"] == expected
    assert [seen[e] for e in range(5)] == [{v} for v in expected]  # every step of the epoch


def test_cosine_schedule_follows_the_formula_and_then_stays_at_lr_min(data):
    tr = make_trainer(data, epochs=6, optimizer_param={"lr": 0.01}, extensions=[CosineLR(4, 1e-4)])
    h = tr.train()
    e = np.minimum(np.arange(6), 4)
    expected = 1e-4 + (0.01 - 1e-4) * (1 + np.cos(np.pi * e / 4)) / 2
    np.testing.assert_allclose(h["lr"], expected, rtol=1e-15)
    assert h["lr"][4:] == [1e-4, 1e-4]


def test_plateau_schedule_decays_after_patience_down_to_lr_min(data):
    values = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.8]
    sched = ReduceLROnPlateau("val_loss", patience=2, gamma=0.5, lr_min=0.003)
    tr = make_trainer(
        data, epochs=7, optimizer_param={"lr": 0.01}, extensions=[Script("val_loss", values), sched]
    )
    h = tr.train()
    # Epochs 3 and 4 without improvement: epoch 5 at 0.005; 5, 6 again: epoch 7 at the floor.
    assert h["lr"] == [0.01, 0.01, 0.01, 0.01, 0.005, 0.005, 0.003]


SCHEDULES = {
    "plateau": lambda: ReduceLROnPlateau("val_loss", patience=1, gamma=0.5),
    "cosine": lambda: CosineLR(5, lr_min=1e-4),
    "step": lambda: StepLR(2, 0.5),
}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_a_resumed_run_continues_the_schedule_exactly(data, tmp_path, schedule):
    """Interrupted mid-epoch (step 2 of epoch 4, after a plateau decay), saved, resumed in a new trainer:
    the same parameters, lr sequence, split, validation metrics and extension states
    as one run."""

    def make(*more):
        exts = [
            Script("val_loss", [1.0, 0.9, 0.95, 0.95, 0.8]),
            SCHEDULES[schedule](),
            EarlyStopping(4, monitor="val_loss", path=tmp_path / "best.npz"),
            *more,
        ]
        return make_trainer(data, epochs=5, extensions=exts, optimizer="momentum")

    straight = make()
    h = straight.train()
    assert len(set(h["lr"])) > 1
    first = make(StopAt(4, step=2))
    first.train()
    first.save_checkpoint(tmp_path / "ck.npz")
    resumed = make()
    resumed.load_checkpoint(tmp_path / "ck.npz")
    h2 = resumed.train()
    a, b = params_of(straight), params_of(resumed)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-12, err_msg=k)
    assert h2["lr"] == h["lr"] and h2["val_acc"] == h["val_acc"]
    assert h2["val_loss"] == pytest.approx(h["val_loss"], abs=1e-12)
    for ext_a, ext_b in zip(straight.extensions, resumed.extensions, strict=True):
        assert ext_a.state_dict() == ext_b.state_dict()


def test_a_checkpoint_of_another_split_or_extension_state_is_refused(data, tmp_path):
    tr = make_trainer(data, epochs=1, extensions=[EarlyStopping(2), StepLR(1)])
    tr.train()
    tr.save_checkpoint(tmp_path / "ck.npz")
    for other in (dict(val_split=0.3), dict(val_split=None)):
        with pytest.raises(CheckpointError, match=r"held out .* for validation"):
            make_trainer(data, epochs=2, **other).load_checkpoint(tmp_path / "ck.npz")
    # A state that does not fit: refused, and every extension left as it was.
    arrays, meta = load_checkpoint(tmp_path / "ck.npz")
    meta["extensions"]["StepLR"] = {"base_lr": -1}
    early, step = EarlyStopping(2), StepLR(1)
    fresh = make_trainer(data, epochs=2, extensions=[early, step])
    with pytest.raises(CheckpointError, match="extension StepLR does not fit"):
        fresh.load_state(arrays, meta)
    assert early.monitor.best is None and step.base_lr is None and fresh.epoch == 0


# -- logs -----------------------------------------------------------------------------


def test_epoch_rows_average_each_epochs_steps_and_align_late_fields():
    history = {
        "train_loss": [1.0, 3.0, 2.0, 4.0, 9.0],  # two epochs of 2 steps, then a partial one
        "train_acc": [0.5, 0.6],
        "lr": [0.1],  # recorded from the second epoch on (an older checkpoint resumed)
        "epoch_seconds": [1.0, 2.0],
    }
    assert epoch_rows(history, steps_per_epoch=2) == [
        {"epoch": 1, "train_loss": 2.0, "train_acc": 0.5, "epoch_seconds": 1.0},
        {"epoch": 2, "lr": 0.1, "train_loss": 3.0, "train_acc": 0.6, "epoch_seconds": 2.0},
    ]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_log_has_one_row_per_epoch_with_every_metric(data, tmp_path):
    tr = make_trainer(data, epochs=3, test_each_epoch=True, extensions=[CSVLog(tmp_path / "h.csv")])
    h = tr.train()
    rows = read_csv(tmp_path / "h.csv")
    assert list(rows[0]) == [
        "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc",
        "epoch_seconds", "images_per_sec",
    ]  # fmt: skip
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    steps = tr.steps_per_epoch
    for e, r in enumerate(rows):
        assert float(r["train_loss"]) == pytest.approx(
            np.mean(h["train_loss"][e * steps :][:steps])
        )
        for key in ("lr", "train_acc", "val_loss", "val_acc", "test_acc", "images_per_sec"):
            assert float(r[key]) == h[key][e], key  # repr: every digit


def read_scalars(logdir):
    """{tag: {step: value}} from TensorBoard event files (TFRecords of Event protos)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4  # length, its CRC, the record, its CRC
            for v in event.summary.value:
                out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def test_tensorboard_log_writes_each_epochs_scalars_and_resumes(data, tmp_path):
    pytest.importorskip("tensorboardX")
    logdir = tmp_path / "tb"
    tr = make_trainer(data, epochs=2, extensions=[TensorBoardLog(logdir)])
    tr.train()
    tr.save_checkpoint(tmp_path / "ck.npz")
    resumed = make_trainer(data, epochs=3, extensions=[TensorBoardLog(logdir)])
    resumed.load_checkpoint(tmp_path / "ck.npz")
    h = resumed.train()
    scalars = read_scalars(logdir)
    assert {"lr", "loss/train", "loss/val", "accuracy/train", "accuracy/val"} <= set(scalars)
    assert "accuracy/test" not in scalars  # not measured per epoch here
    assert sorted(scalars["accuracy/val"]) == [1, 2, 3]
    for e in range(3):
        assert scalars["accuracy/val"][e + 1] == pytest.approx(h["val_acc"][e], rel=1e-6)
        assert scalars["loss/val"][e + 1] == pytest.approx(h["val_loss"][e], rel=1e-6)


def test_tensorboard_without_tensorboardx_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "tensorboardX", None)  # import fails
    with pytest.raises(XpcnnError, match="pip install tensorboardX"):
        TensorBoardLog(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()


# -- ranks as threads -------------------------------------------------------------------


def test_three_ranks_split_evaluate_and_stop_like_one_process(data):
    """Every rank holds out the same split; the sharded validation metrics equal one
    process's (the accuracy exactly); rank 0's early stop stops every rank together."""
    values = [0.5, 0.4, 0.4]

    def make(comm=None):
        exts = [Script("val_acc", values), EarlyStopping(2), StepLR(1, 0.5)]
        return make_trainer(data, epochs=3, comm=comm, mini_batch_size=64, extensions=exts)

    straight = make()
    h = straight.train()
    ranks = run_ranks(3, make)
    for tr in ranks:
        assert np.array_equal(np.asarray(tr.x_val), np.asarray(straight.x_val))
        assert tr.epoch == straight.epoch == 3 and tr.lr_list == h["lr"]
        assert tr.stop_reason is not None
        assert tr.train_acc_list == h["train_acc"]
        assert tr.val_loss_list == pytest.approx(h["val_loss"], abs=1e-12)
        assert not math.isnan(tr.val_loss_list[0])
    assert ranks[0].stop_reason == h["stop_reason"]
