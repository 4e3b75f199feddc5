"""`xpcnn train` with a validation split, early stopping, learning-rate schedules and
logs: each option on its own and together, resumed, under ``mpiexec -n 2``, and with
bad values (one line, exit status 2, nothing written)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from helpers import mpi_available, run_mpi
from test_train_extensions import Script, read_scalars

from xpcnn.checkpoint import load_checkpoint
from xpcnn.cli import main
from xpcnn.data import load_dataset
from xpcnn.metrics import accuracy
from xpcnn.train import Evaluate, load_network

QUICK = [
    "--train-size",
    "300",
    "--batch-size",
    "50",
    "--eval-samples",
    "200",
    "--seed",
    "2",
    "--no-progress",
]  # fmt: skip (float32: resumed runs are bit-identical, as in test_cli)
VAL = ["--val-split", "0.2"]


def train(capsys, out, *argv):
    status = main(["train", "--out", str(out), *QUICK, *argv])
    stdout, stderr = capsys.readouterr()
    return status, stdout, stderr


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def scripted(monkeypatch):
    """``scripted(key, values)``: the runs of this test measure ``values`` as ``key``."""
    import xpcnn.run

    make = xpcnn.run._make_trainer

    def set_script(key, values):
        def with_script(*args, **kw):
            trainer = make(*args, **kw)
            at = next(i for i, e in enumerate(trainer.extensions) if isinstance(e, Evaluate))
            trainer.extensions.insert(at + 1, Script(key, values))
            return trainer

        monkeypatch.setattr(xpcnn.run, "_make_trainer", with_script)

    return set_script


# -- each option ----------------------------------------------------------------------


def test_val_split_measures_validation_each_epoch_and_test_at_the_end(tmp_path, capsys):
    status, out, err = train(capsys, tmp_path / "a", "--epochs", "2", *VAL)
    assert status == 0, err
    assert "(240 train / 60 validation / 1000 test)" in err
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and all("val loss" in x and "val acc" in x for x in lines)
    assert not any("test acc" in x or " lr " in x for x in lines)
    h = json.loads((tmp_path / "a" / "history.json").read_text())
    assert len(h["val_acc"]) == len(h["val_loss"]) == 2 and h["test_acc"] == []
    assert h["lr"] == [0.001, 0.001] and 0 < h["final_test_accuracy"] <= 1
    assert f"test accuracy {h['final_test_accuracy']:.4f} (1000 images)" in out.splitlines()[-1]
    rows = read_csv(tmp_path / "a" / "history.csv")
    assert len(rows) == 2 and "test_acc" not in rows[0]
    assert float(rows[1]["val_acc"]) == h["val_acc"][1]
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["checkpoint.npz", "curves.png", "history.csv", "history.json"]

    status, out, _ = train(capsys, tmp_path / "b", "--epochs", "2", *VAL, "--test-each-epoch")
    assert status == 0 and out.count("  test acc ") == 2
    h = json.loads((tmp_path / "b" / "history.json").read_text())
    assert len(h["test_acc"]) == 2 and "test_acc" in read_csv(tmp_path / "b" / "history.csv")[0]


def test_without_a_split_the_csv_has_the_books_per_epoch_test_accuracy(tmp_path, capsys):
    status, out, _ = train(capsys, tmp_path, "--epochs", "2")
    assert status == 0 and out.count("  test acc ") == 2
    rows = read_csv(tmp_path / "history.csv")
    assert list(rows[0]) == [
        "epoch", "lr", "train_loss", "train_acc", "test_acc", "epoch_seconds", "images_per_sec",
    ]  # fmt: skip


def test_early_stopping_keeps_the_best_epoch_and_reports_its_test_accuracy(
    tmp_path, capsys, scripted
):
    scripted("val_acc", [0.5, 0.7, 0.6, 0.7, 0.9, 0.9])
    status, out, _ = train(capsys, tmp_path, "--epochs", "6", *VAL, "--early-stopping", "2")
    assert status == 0
    assert sum(line.startswith("epoch ") for line in out.splitlines()) == 4
    last = out.splitlines()[-1]
    assert (
        "(1000 images, best epoch 2); stopped early: val_acc did not improve for 2 epochs " in last
    )
    assert "(patience exhausted at epoch 4); best epoch 2, val_acc 0.7000; wrote" in last
    assert f"{tmp_path / 'best.npz'}, " in last
    h = json.loads((tmp_path / "history.json").read_text())
    assert h["best_epoch"] == 2 and len(h["val_acc"]) == 4
    # The reported accuracy is the best epoch's network's, on the whole test set.
    test = load_dataset("mnist-sample")
    best = load_network(tmp_path / "best.npz")
    assert h["final_test_accuracy"] == accuracy(best, test.x_test, test.t_test)
    assert load_checkpoint(tmp_path / "best.npz")[1]["trainer"]["epoch"] == 2
    assert load_checkpoint(tmp_path / "checkpoint.npz")[1]["trainer"]["epoch"] == 4
    status, out, _ = run_cli(capsys, "evaluate", str(tmp_path / "best.npz"))
    assert status == 0 and f"{h['final_test_accuracy']:.4f}" in out  # it is a whole checkpoint


def run_cli(capsys, *argv):
    status = main(list(argv))
    stdout, stderr = capsys.readouterr()
    return status, stdout, stderr


@pytest.mark.parametrize(
    "options, expected",
    [
        (
            ["--lr-schedule", "step", "--lr-step-size", "1", "--lr-gamma", "0.5"],
            [1e-3, 5e-4, 2.5e-4],
        ),
        (
            ["--lr-schedule", "cosine", "--lr-min", "0.0001"],
            [1e-4 + 9e-4 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)],
        ),
        (["--lr-schedule", "plateau", "--lr-patience", "1", "--lr-gamma", "0.5", *VAL], None),
    ],
    ids=["step", "cosine", "plateau"],
)
def test_each_schedule_sets_and_records_the_lr_of_each_epoch(tmp_path, capsys, options, expected):
    status, out, err = train(capsys, tmp_path, "--epochs", "3", *options)
    assert status == 0, err
    h = json.loads((tmp_path / "history.json").read_text())
    if expected is None:  # plateau: a decay by 0.5 after each epoch without improvement
        expected = [1e-3]
        for e in range(2):  # epoch e's value sets epoch e + 1's rate; the first is the best
            better = e == 0 or h["val_acc"][e] > max(h["val_acc"][:e])
            expected.append(expected[-1] * (1 if better else 0.5))
    assert h["lr"] == pytest.approx(expected, rel=1e-12)
    assert [f"lr {v:.3g}  " in out for v in h["lr"]] == [True] * 3
    assert [float(r["lr"]) for r in read_csv(tmp_path / "history.csv")] == h["lr"]
    assert "lr " in err.splitlines()[2]  # the schedule is announced


def test_tensorboard_writes_event_files_from_the_history(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    status, _, err = train(capsys, tmp_path, "--epochs", "2", *VAL, "--tensorboard")
    assert status == 0, err
    assert f"TensorBoard logs in {tmp_path / 'tensorboard'}" in err
    scalars = read_scalars(tmp_path / "tensorboard")
    h = json.loads((tmp_path / "history.json").read_text())
    assert sorted(scalars["accuracy/val"]) == [1, 2]
    assert [scalars["lr"][e] for e in (1, 2)] == pytest.approx(h["lr"])
    assert [scalars["accuracy/train"][e] for e in (1, 2)] == pytest.approx(h["train_acc"])


# -- together, resumed -----------------------------------------------------------------

ALL = [
    *VAL, "--early-stopping", "5", "--lr-schedule", "cosine", "--lr-decay-epochs", "3",
    "--tensorboard",
]  # fmt: skip


def test_every_option_together_resumes_to_the_uninterrupted_run(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    assert train(capsys, tmp_path / "a", "--epochs", "3", *ALL)[0] == 0
    assert train(capsys, tmp_path / "b", "--epochs", "1", *ALL)[0] == 0
    ckpt = tmp_path / "b" / "checkpoint.npz"
    status, _, err = run_cli(
        capsys, "train", "--resume", str(ckpt), "--epochs", "3", "--no-progress"
    )
    assert status == 0, err
    a, meta_a = load_checkpoint(tmp_path / "a" / "checkpoint.npz")
    b, meta_b = load_checkpoint(ckpt)
    for k in a:
        if k.startswith(("params/", "optim/")):
            np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    ha, hb = meta_a["history"], meta_b["history"]
    for key in ("lr", "train_loss", "train_acc", "val_loss", "val_acc"):
        assert hb[key] == ha[key], key
    assert meta_b["extensions"] == meta_a["extensions"]  # schedule and patience state
    rows_a, rows_b = (
        read_csv(tmp_path / "a" / "history.csv"),
        read_csv(tmp_path / "b" / "history.csv"),
    )
    timing = ("epoch_seconds", "images_per_sec")
    strip = [{k: v for k, v in r.items() if k not in timing} for r in rows_a]
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows_b] == strip
    assert sorted(read_scalars(tmp_path / "b" / "tensorboard")["accuracy/val"]) == [1, 2, 3]
    files = [
        "best.npz",
        "checkpoint.npz",
        "curves.png",
        "history.csv",
        "history.json",
        "tensorboard",
    ]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == files


def test_resumed_early_stopping_keeps_its_count(tmp_path, capsys, scripted):
    scripted("val_acc", [0.5, 0.7, 0.6, 0.6, 0.6])  # a count restarted at 0 would not stop
    options = [*VAL, "--early-stopping", "3"]
    assert train(capsys, tmp_path / "a", "--epochs", "5", *options)[0] == 0
    assert train(capsys, tmp_path / "b", "--epochs", "3", *options)[0] == 0
    ckpt = tmp_path / "b" / "checkpoint.npz"
    status, out, _ = run_cli(
        capsys, "train", "--resume", str(ckpt), "--epochs", "5", "--no-progress"
    )
    assert status == 0 and "(patience exhausted at epoch 5); best epoch 2" in out.splitlines()[-1]
    for name in ("checkpoint.npz", "best.npz"):
        a, b = load_checkpoint(tmp_path / "a" / name)[0], load_checkpoint(tmp_path / "b" / name)[0]
        for k in a:
            np.testing.assert_array_equal(b[k], a[k], err_msg=f"{name} {k}")


def test_a_resume_keeps_the_split_and_the_schedule(tmp_path, capsys):
    assert train(capsys, tmp_path, "--epochs", "1", *VAL, "--lr-schedule", "step")[0] == 0
    ckpt = str(tmp_path / "checkpoint.npz")
    for option in (["--val-split", "0.3"], ["--lr-schedule", "cosine"], ["--lr-gamma", "0.5"]):
        status, _, err = run_cli(capsys, "train", "--resume", ckpt, "--epochs", "2", *option)
        assert status == 2 and f"{option[0]} {option[1]} differs from the resumed run's" in err
        assert len(err.strip().splitlines()) == 1


# -- bad values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, option, expected",
    [
        (["--early-stopping", "-1"], "--early-stopping", "expected a positive integer, got -1"),
        (["--early-stopping", "0"], "--early-stopping", "expected a positive integer, got 0"),
        (["--val-split", "0"], "--val-split", "strictly between 0 and 1, got 0"),
        (["--val-split", "1"], "--val-split", "strictly between 0 and 1, got 1"),
        (["--val-split", "1.5"], "--val-split", "strictly between 0 and 1, got 1.5"),
        (["--lr-schedule", "exponential"], "--lr-schedule", "invalid choice: 'exponential'"),
        (["--lr-gamma", "1"], "--lr-gamma", "strictly between 0 and 1, got 1"),
        (["--lr-step-size", "0"], "--lr-step-size", "expected a positive integer, got 0"),
        (["--lr-min", "-0.1"], "--lr-min", "expected a number >= 0, got -0.1"),
        (["--lr-patience", "0"], "--lr-patience", "expected a positive integer, got 0"),
        (["--lr-decay-epochs", "0"], "--lr-decay-epochs", "expected a positive integer"),
        (["--min-delta", "nan"], "--min-delta", "expected a number >= 0, got nan"),
        (["--monitor", "test_acc"], "--monitor", "invalid choice: 'test_acc'"),
    ],
)
def test_bad_option_values_name_the_option_and_write_nothing(
    tmp_path, capsys, argv, option, expected
):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path / "run"), *argv])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"xpcnn train: error: argument {option}: ") and expected in last
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["--early-stopping", "2"],
            "--early-stopping monitors a validation metric (val_acc): add --val-split F",
        ),
        (["--lr-schedule", "plateau"], "--lr-schedule plateau monitors a validation metric"),
        (
            [*VAL, "--lr-schedule", "cosine", "--lr-min", "0.01"],
            "--lr-min 0.01 must be below --lr 0.001",
        ),
        (["--lr-step-size", "3"], "--lr-step-size applies to --lr-schedule step only"),
        (
            ["--lr-schedule", "cosine", "--lr-patience", "3"],
            "--lr-patience applies to --lr-schedule plateau only",
        ),
        (
            [*VAL, "--monitor", "val_loss"],
            "--monitor applies to --early-stopping or --lr-schedule plateau only",
        ),
        (
            ["--val-split", "0.001"],
            "a validation split of 0.001 of 300 training images holds out 0",
        ),
    ],
)
def test_options_that_do_not_fit_together_are_one_line(tmp_path, capsys, argv, expected):
    status, _, err = train(capsys, tmp_path / "run", "--epochs", "1", *argv)
    assert status == 2
    lines = [line for line in err.splitlines() if not line.startswith(("threads:", "training "))]
    assert len(lines) == 1 and lines[0].startswith("xpcnn train: error: "), err
    assert expected in lines[0]
    assert not (tmp_path / "run").exists()


def test_tensorboard_without_tensorboardx_names_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tensorboardX", None)  # import fails
    status, _, err = train(capsys, tmp_path / "run", "--epochs", "1", "--tensorboard")
    assert status == 2
    assert err.strip().splitlines() == [
        "xpcnn train: error: TensorBoard logs need tensorboardX: pip install tensorboardX "
        '(or pip install ".[tensorboard]" from a clone of xpcnn)'
    ]
    assert not (tmp_path / "run").exists()


# -- mpiexec -n 2 ---------------------------------------------------------------------------


@pytest.mark.skipif(mpi_available() is not None, reason=str(mpi_available()))
def test_two_ranks_split_stop_schedule_and_log_as_one_process(tmp_path, capsys):
    """Same split, metrics, schedule and stop as one process; rank 0 alone writes the
    CSV, best.npz and the TensorBoard files, and prints one line per epoch."""
    pytest.importorskip("tensorboardX")
    options = [
        "--train-size",
        "110",
        "--batch-size",
        "25",
        "--epochs",
        "4",
        "--eval-samples",
        "60",
        "--dtype",
        "float64",
        "--seed",
        "3",
        "--no-progress",
        *VAL,
        "--early-stopping",
        "1",
        "--lr-schedule",
        "plateau",
        "--lr-patience",
        "1",
        "--lr",
        "0.00002",
        "--tensorboard",
    ]  # fmt: skip (so small a rate that val_acc stalls: a stop after epoch 3, best epoch 2)
    assert main(["train", *options, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    proc = run_mpi(2, ["-m", "xpcnn", "train", *options, "--out", str(tmp_path / "two")])
    assert proc.returncode == 0, proc.stderr
    one = json.loads((tmp_path / "one" / "history.json").read_text())
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    assert one["best_epoch"] == 2 and "patience exhausted at epoch 3" in one["stop_reason"]
    for key in ("val_acc", "train_acc", "lr", "stop_reason", "best_epoch", "final_test_accuracy"):
        assert two[key] == one[key], key
    assert two["val_loss"] == pytest.approx(one["val_loss"], abs=1e-9)
    epochs = len(one["lr"])
    assert sum(x.startswith("epoch ") for x in proc.stdout.splitlines()) == epochs, proc.stdout
    assert len(read_csv(tmp_path / "two" / "history.csv")) == epochs
    assert len(list((tmp_path / "two" / "tensorboard").iterdir())) == 1
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())
