"""The `xpcnn` command line, end to end on the bundled sample, and its one-line errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xpcnn.checkpoint import load_checkpoint
from xpcnn.cli import main


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(err, *fragments):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("xpcnn ") and "error:" in lines[0]
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    status = main(["train", "--epochs", "1", "--out", str(out), "--no-progress", "--seed", "3"])
    assert status == 0
    return out


def test_train_writes_checkpoint_history_and_curves(trained):
    assert (trained / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((trained / "history.json").read_text())
    assert history["config"]["model"] == "simple"
    assert history["config"]["dataset"] == "mnist-sample"
    assert history["config"]["seed"] == 3
    assert len(history["test_acc"]) == 1
    assert 0.5 < history["final_test_accuracy"] <= 1.0
    arrays, meta = load_checkpoint(trained / "checkpoint.npz")
    assert meta["trainer"]["epoch"] == 1
    assert arrays["params/W1"].shape == (30, 1, 5, 5)


def test_evaluate_reports_overall_and_per_class_accuracy(trained, capsys):
    status, out, _ = run(capsys, "evaluate", str(trained / "checkpoint.npz"))
    assert status == 0
    history = json.loads((trained / "history.json").read_text())
    first, *per_class = out.strip().splitlines()
    assert f"test accuracy {history['final_test_accuracy']:.4f}" in first
    assert len(per_class) == 10 and all("(100)" in line for line in per_class)


def test_final_accuracy_covers_the_whole_test_set_when_epochs_evaluate_a_part(tmp_path, capsys):
    # Per epoch only 50 images are evaluated; the final line must still count all of them
    # (with the default, the last epoch's full evaluation is reused instead of repeated).
    status, _, _ = run(
        capsys, "train", "--epochs", "1", "--eval-samples", "50", "--out", str(tmp_path),
        "--no-progress", "--seed", "3", "--train-size", "500",
    )  # fmt: skip
    assert status == 0
    history = json.loads((tmp_path / "history.json").read_text())
    status, out, _ = run(capsys, "evaluate", str(tmp_path / "checkpoint.npz"))
    assert status == 0
    assert f"test accuracy {history['final_test_accuracy']:.4f}" in out.splitlines()[0]


def test_visualize_writes_every_figure(trained, tmp_path, capsys):
    status, out, _ = run(
        capsys, "visualize", str(trained / "checkpoint.npz"), "--out", str(tmp_path)
    )
    assert status == 0
    names = {
        "filters_before.png",
        "filters_after.png",
        "filter_responses.png",
        "feature_maps.png",
        "curves.png",
        "misclassified.png",
        "confusion_matrix.png",
    }
    assert {p.name for p in tmp_path.glob("*.png")} == names
    assert (tmp_path / "filters_before.png").read_bytes() != (
        tmp_path / "filters_after.png"
    ).read_bytes()
    assert len(out.strip().splitlines()) == len(names)


def test_resume_continues_to_the_same_parameters(tmp_path, capsys):
    # float32 and bit-identical: the Trainer test checks float64 to 1e-12.
    common = ["--no-progress", "--seed", "5", "--batch-size", "250", "--eval-samples", "100"]
    assert main(["train", "--epochs", "2", "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "b"), *common]) == 0
    capsys.readouterr()
    resume = [
        "train",
        "--resume",
        str(tmp_path / "b" / "checkpoint.npz"),
        "--epochs",
        "2",
        "--no-progress",
    ]
    status, out, err = run(capsys, *resume)
    assert status == 0
    assert "resuming" in err and "at epoch 1, step 0" in err
    # One line per epoch even without a progress bar, then the final accuracy.
    assert "epoch   2/2  loss" in out and "epoch   1/2" not in out
    assert "test accuracy" in out.splitlines()[-1]
    a, _ = load_checkpoint(tmp_path / "a" / "checkpoint.npz")
    b, meta = load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    assert meta["trainer"]["epoch"] == 2
    for k in a:
        if k.startswith("params/"):
            np.testing.assert_array_equal(b[k], a[k], err_msg=k)


def test_resume_refuses_a_conflicting_option(trained, capsys):
    status, _, err = run(
        capsys, "train", "--resume", str(trained / "checkpoint.npz"), "--lr", "0.5"
    )
    assert status == 2
    assert_one_line_error(err, "--lr 0.5 differs")


QUICK = ["--train-size", "200", "--epochs", "1", "--eval-samples", "100", "--no-progress"]


def _other_lines(err):
    """stderr without the header lines every run prints."""
    header = ("threads: ", "training ")
    return [line for line in err.splitlines() if line.strip() and not line.startswith(header)]


def test_train_keeps_a_run_in_out_unless_overwrite(trained, tmp_path, capsys):
    kept = (trained / "checkpoint.npz").read_bytes()
    (tmp_path / "checkpoint.npz").write_bytes(kept)
    status, _, err = run(capsys, "train", "--out", str(tmp_path), *QUICK)
    assert status == 2
    assert_one_line_error(err, f"{tmp_path} already holds a run", "--resume", "--overwrite")
    assert (tmp_path / "checkpoint.npz").read_bytes() == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]
    status, _, _ = run(capsys, "train", "--out", str(tmp_path), *QUICK, "--overwrite")
    assert status == 0
    assert load_checkpoint(tmp_path / "checkpoint.npz")[1]["run"]["train_size"] == 200


@pytest.mark.parametrize("epochs", [[], ["--epochs", "1"]])
def test_resuming_a_finished_run_says_so_and_writes_nothing(trained, epochs, capsys):
    files = {p.name: p.read_bytes() for p in trained.iterdir()}
    ckpt = str(trained / "checkpoint.npz")
    status, _, err = run(capsys, "train", "--resume", ckpt, *epochs, "--no-progress")
    assert status == 2
    assert_one_line_error(
        err, f"{ckpt} has already trained 1 epoch;", "pass --epochs M with M > 1 to continue"
    )
    assert {p.name: p.read_bytes() for p in trained.iterdir()} == files


def test_overflow_is_one_divergence_line_and_leaves_no_empty_folder(tmp_path, capsys):
    import warnings

    out = tmp_path / "new" / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, _, err = run(capsys, "train", "--lr", "1e30", "--out", str(out), *QUICK)
    assert status == 3
    assert [str(w.message) for w in caught] == []  # NumPy's overflow warnings, once printed
    lines = _other_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("xpcnn train: error: training diverged: the loss became nan")
    assert lines[0].endswith("no checkpoint was written")
    assert list(tmp_path.iterdir()) == []  # neither run/ nor new/ is left behind


def test_a_run_that_ends_at_chance_says_so(tmp_path, capsys):
    # lr 1e6: two Adam steps blow the weights up (finite loss ~3e22), test accuracy 0.100.
    status, out, err = run(capsys, "train", "--lr", "1e6", "--out", str(tmp_path), *QUICK)
    assert status == 0
    assert "test accuracy 0.1000" in out
    lines = _other_lines(err)
    assert lines == [
        "xpcnn train: warning: test accuracy 0.1000 is chance level for 10 classes: "
        "the network learnt nothing; try a lower --lr (now 1e+06)"
    ], err


@pytest.mark.parametrize(
    "test_acc, losses, expected",
    [
        (0.15, [2.0, 2.0, 1.0, 1.0], "test accuracy 0.1500 is chance level for 10 classes"),
        (0.16, [2.0, 2.0, 1.0, 1.0], None),
        (0.9, [1.0, 1.0, 1.0, 3.5], "the last epoch's mean loss 2.25 is above the first epoch's 1"),
        (0.9, [1.0, 1.0, 1.0, 1.0], None),  # equal is not above
        (0.9, [1.0, 1.0, 3.0], None),  # one epoch and a step: nothing to compare
    ],
)
def test_poor_result_detects_chance_accuracy_and_a_rising_loss(test_acc, losses, expected):
    from xpcnn.run import poor_result

    got = poor_result(test_acc, 10, losses, steps_per_epoch=2)
    assert got == expected if expected is None else got.startswith(expected), got


def test_train_size_above_the_data_says_what_it_used(monkeypatch, tmp_path, capsys):
    import xpcnn.run

    seen = []
    monkeypatch.setattr(xpcnn.run, "_fit", lambda trainer, checkpoint: seen.append(trainer) or 0)
    status, _, err = run(capsys, "train", "--train-size", "99999", "--out", str(tmp_path / "o"))
    assert status == 0 and seen[0].x_train.shape[0] == 5000
    assert _other_lines(err) == [
        "--train-size 99999 is more than the 5,000 training images of mnist-sample; using all 5,000"
    ], err
    assert "(5000 train / 1000 test)" in err
    assert not (tmp_path / "o").exists()  # nothing written: no empty folder either


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_device_cuda_without_cupy(capsys, tmp_path):
    status, _, err = run(capsys, "train", "--device", "cuda", "--out", str(tmp_path))
    assert status == 2
    assert_one_line_error(err, "needs CuPy", "pip install cupy-cuda12x", "--backend torch / jax")


def test_unknown_device(capsys, tmp_path):
    status, _, err = run(capsys, "train", "--device", "tpu", "--out", str(tmp_path))
    assert status == 2
    assert_one_line_error(err, "unknown device 'tpu'")


def test_missing_dataset_folder(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    status, _, err = run(
        capsys,
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        str(empty),
        "--out",
        str(tmp_path / "o"),
    )
    assert status == 2
    assert_one_line_error(err, str(empty))


def test_damaged_dataset(capsys, tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (d / name).write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05")  # header cut short
    status, _, err = run(
        capsys,
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
    )
    assert status == 2
    assert_one_line_error(err, "idx")


def test_unwritable_out(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    status, _, err = run(capsys, "train", "--out", str(blocker / "sub"))
    assert status == 2
    assert_one_line_error(err, "cannot write to output folder")


def test_damaged_checkpoint_is_refused(trained, capsys, tmp_path):
    cut = tmp_path / "cut.npz"
    data = (trained / "checkpoint.npz").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    status, _, err = run(capsys, "evaluate", str(cut))
    assert status == 2
    assert_one_line_error(err, str(cut))
    assert cut.read_bytes() == data[: len(data) // 2]  # nothing overwritten
    status, _, err = run(capsys, "evaluate", str(tmp_path / "missing.npz"))
    assert status == 2
    assert_one_line_error(err, "missing.npz")


def test_unknown_option_value_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--optimizer", "adamw"])
    assert exc.value.code == 2
    assert "invalid choice: 'adamw'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, option, expected",
    [
        (["train", "--seed", "-1"], "--seed", "expected a non-negative integer, got -1"),
        (["train", "--epochs", "0"], "--epochs", "expected a positive integer, got 0"),
        (["train", "--lr", "inf"], "--lr", "expected a positive number, got inf"),
        (["visualize", "c.npz", "--out", "d", "--filters", "1,x"], "--filters", "integers"),
    ],
)
def test_bad_option_values_name_the_option(argv, option, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"xpcnn {argv[0]}: error: argument {option}: ") and expected in last


def test_info_lists_versions(capsys, monkeypatch):
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    status, out, _ = run(capsys, "info")
    assert status == 0
    assert f"numpy             {np.__version__}" in out
    assert "  numpy             cpu\n" in out  # backends and their devices
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    assert f"numpy BLAS: {blas['name']}" in out
    assert "OPENBLAS_CORETYPE" not in out


@pytest.mark.parametrize(("core", "hint"), [("Haswell", True), ("SkylakeX", False)])
def test_info_says_when_openblas_kernels_are_forced(capsys, monkeypatch, core, hint):
    monkeypatch.setenv("OPENBLAS_CORETYPE", core)
    _, out, _ = run(capsys, "info")
    assert f"OPENBLAS_CORETYPE={core} is set and forces that core's kernels" in out
    assert ("unset it for about twice the GEMM speed" in out) == hint


def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "xpcnn", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    assert "train" in proc.stdout and "evaluate" in proc.stdout


@pytest.mark.parametrize("model", ["lenet", "deep", "alexnet"])
def test_every_model_trains_evaluates_and_visualizes(model, tmp_path, capsys):
    out = tmp_path / model
    status, _, _ = run(
        capsys,
        "train",
        "--model",
        model,
        "--epochs",
        "1",
        "--train-size",
        "100",
        "--eval-samples",
        "100",
        "--out",
        str(out),
        "--no-progress",
    )
    assert status == 0
    _, meta = load_checkpoint(out / "checkpoint.npz")
    assert meta["model"]["model"] == model  # the architecture travels with the checkpoint
    status, text, _ = run(capsys, "evaluate", str(out / "checkpoint.npz"))
    assert status == 0 and "test accuracy" in text
    status, _, _ = run(
        capsys,
        "visualize",
        str(out / "checkpoint.npz"),
        "--out",
        str(tmp_path / "viz"),
        "--what",
        "filters,features",
    )
    assert status == 0
    assert (tmp_path / "viz" / "filters_after.png").exists() and (
        tmp_path / "viz" / "feature_maps.png"
    ).exists()


def test_visualize_chosen_filters_and_bad_choices(trained, tmp_path, capsys):
    ck = str(trained / "checkpoint.npz")
    status, _, _ = run(
        capsys,
        "visualize",
        ck,
        "--out",
        str(tmp_path / "a"),
        "--what",
        "responses",
        "--filters",
        "0,1",
    )
    assert status == 0
    status, _, _ = run(
        capsys,
        "visualize",
        ck,
        "--out",
        str(tmp_path / "b"),
        "--what",
        "responses",
        "--filters",
        "2,3",
    )
    assert status == 0
    a = (tmp_path / "a" / "filter_responses.png").read_bytes()
    assert a != (tmp_path / "b" / "filter_responses.png").read_bytes()  # the choice shows
    status, _, err = run(capsys, "visualize", ck, "--out", str(tmp_path / "c"), "--filters", "0,99")
    assert status == 2
    assert_one_line_error(err, "--filters [99]")
    status, _, err = run(
        capsys, "visualize", ck, "--out", str(tmp_path / "c"), "--what", "filters,nonsense"
    )
    assert status == 2
    assert_one_line_error(err, "nonsense")


# -- errors: the project's are one line, a bug keeps its traceback ----------------------


def test_a_project_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys, tmp_path):
    import xpcnn.run
    from xpcnn.errors import ConfigError

    def config_error(*args, **kw):
        raise ConfigError("--x 3 is too large; use at most 2")

    monkeypatch.setattr(xpcnn.run, "load_dataset", config_error)
    status, _, err = run(capsys, "train", "--out", str(tmp_path))
    assert status == 2
    assert_one_line_error(err, "--x 3 is too large")

    def bug(*args, **kw):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(xpcnn.run, "load_dataset", bug)
    with pytest.raises(ValueError, match="could not be broadcast"):
        main(["train", "--out", str(tmp_path)])


def test_checkpoint_errors_are_project_errors():
    from xpcnn.checkpoint import CheckpointError
    from xpcnn.errors import XpcnnError

    assert issubclass(CheckpointError, XpcnnError) and issubclass(CheckpointError, ValueError)


# -- output: epoch lines reach a pipe as they happen ---------------------------------------


def _signal_after_first_epoch(sig: int, out: Path) -> tuple[subprocess.Popen[str], str]:
    """``xpcnn train`` in a child whose stdout is a pipe (block-buffered, as for
    ``> log``): once its first epoch line arrives, it gets ``sig``. Returns the
    finished process and its stderr."""
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("PYTHONUNBUFFERED", None)
    argv = ["train", "--epochs", "20", "--train-size", "500", "--eval-samples", "100"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "xpcnn", *argv, "--no-progress", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("epoch   1/20  loss"), first
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc, err


def test_epoch_lines_reach_a_redirected_stdout_as_they_happen(tmp_path):
    """`xpcnn train > log`: the first epoch's line must arrive while training
    goes on, not in a block at exit. The child is still training when the
    line is read, so a Ctrl-C then stops it as an interrupted run."""
    import signal

    proc, err = _signal_after_first_epoch(signal.SIGINT, tmp_path)
    assert proc.returncode == 130, err
    assert "interrupted: checkpoint saved" in err
    assert load_checkpoint(tmp_path / "checkpoint.npz")[1]["trainer"]["epoch"] < 20


# -- --threads -------------------------------------------------------------------------------


def _blas_threads():
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


@pytest.mark.parametrize("threads", [None, 1, 3, "env"])
def test_threads_option_sets_xpcnns_threads_and_one_blas_thread_and_says_so(
    threads, monkeypatch, capsys, tmp_path
):
    """On NumPy ``--threads N`` runs the fast paths on N threads with one BLAS thread
    each; the default is every CPU the process may use; a thread count set in the
    environment (``OPENBLAS_NUM_THREADS``) leaves BLAS alone and xpcnn at its default
    (every CPU, for the kernels that never call BLAS)."""
    import xpcnn.run
    from xpcnn._fast import _threads
    from xpcnn.distributed import cores_per_rank

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    expected = {None: cores_per_rank(), 1: 1, 3: 3, "env": _threads.cpus()}[threads]
    if threads == "env":
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    before, xpcnn_threads = _blas_threads(), _threads.num_threads()
    assert before, "NumPy's BLAS is not visible to threadpoolctl"
    during = []
    fit = xpcnn.run._fit

    def spy(trainer, checkpoint):
        during.append((_threads.num_threads(), _blas_threads()))
        return fit(trainer, checkpoint)

    monkeypatch.setattr(xpcnn.run, "_fit", spy)
    argv = ["train", "--epochs", "1", "--train-size", "100", "--eval-samples", "100"]
    argv += ["--no-progress", "--out", str(tmp_path)]
    status, _, err = run(capsys, *argv, *(["--threads", str(threads)] if threads in (1, 3) else []))
    assert status == 0
    blas = before if threads == "env" else [1] * len(before)
    assert during == [(expected, blas)]
    first = err.splitlines()[0]
    assert first.startswith(f"threads: xpcnn {expected}; BLAS ") and first.endswith(f" {blas[-1]}")
    assert _blas_threads() == before and _threads.num_threads() == xpcnn_threads  # restored


def test_sigterm_saves_a_checkpoint_says_so_in_one_line_and_exits_143(tmp_path):
    """A scheduler's SIGTERM (Slurm preemption, `kill`, a container stop) is handled
    like Ctrl-C: the current step ends, a checkpoint is saved, one line, status 143."""
    import signal

    proc, err = _signal_after_first_epoch(signal.SIGTERM, tmp_path)
    assert proc.returncode == 143, err
    lines = _other_lines(err)
    ckpt = tmp_path / "checkpoint.npz"
    assert lines == [
        f"terminated (interrupted by SIGTERM): checkpoint saved to {ckpt}; "
        f"continue with: xpcnn train --resume {ckpt}"
    ], err
    _, meta = load_checkpoint(ckpt)
    assert 1 <= meta["trainer"]["epoch"] < 20
    assert meta["history"]["stop_reason"] == "interrupted by SIGTERM"


def test_an_early_stop_is_in_the_end_line_and_the_history(monkeypatch, tmp_path, capsys):
    import xpcnn.run
    from xpcnn.train import Extension

    class Patience(Extension):
        def on_epoch_end(self, trainer):
            trainer.request_stop("test accuracy did not improve")

    make = xpcnn.run._make_trainer

    def with_patience(*args, **kw):
        trainer = make(*args, **kw)
        trainer.extensions.append(Patience())
        return trainer

    monkeypatch.setattr(xpcnn.run, "_make_trainer", with_patience)
    status, out, _ = run(capsys, "train", "--out", str(tmp_path), "--epochs", "3", *QUICK[:2])
    assert status == 0
    assert out.count("epoch ") == 1
    assert "; stopped early: test accuracy did not improve; wrote" in out.splitlines()[-1]
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["stop_reason"] == "test accuracy did not improve"
    assert len(history["test_acc"]) == 1


def test_the_resumed_checkpoint_is_read_once(trained, monkeypatch, tmp_path, capsys):
    import xpcnn.checkpoint
    import xpcnn.run
    import xpcnn.train.trainer

    reads = []

    def counting(path):
        reads.append(path)
        return xpcnn.checkpoint.load_checkpoint(path)

    monkeypatch.setattr(xpcnn.run, "load_checkpoint", counting)
    monkeypatch.setattr(xpcnn.train.trainer, "load_checkpoint", counting)
    resumed = tmp_path / "checkpoint.npz"
    resumed.write_bytes((trained / "checkpoint.npz").read_bytes())
    status, _, _ = run(capsys, "train", "--resume", str(resumed), "--epochs", "2", "--no-progress")
    assert status == 0
    assert reads == [resumed]


def test_array_api_strict_trains_on_sets_smaller_than_eval_samples(tmp_path, capsys):
    """The defect of issue 21: the per-epoch evaluation sliced past the end of a
    300-image training set (--eval-samples 10000), which strict refuses."""
    pytest.importorskip("array_api_strict")
    argv = ["train", "--backend", "array-api-strict", "--epochs", "1", "--train-size", "300"]
    status, out, err = run(capsys, *argv, "--no-progress", "--out", str(tmp_path))
    assert status == 0, err
    assert "(300 train / 1000 test) on array-api-strict:CPU_DEVICE" in err
    assert "test accuracy" in out.splitlines()[-1]


def test_every_subcommand_is_one_module_in_the_registry():
    """A subcommand is one module of xpcnn/cli with add_parser and run, listed once
    in COMMANDS; the parser is built from that list and nothing else."""
    from pathlib import Path

    import xpcnn.cli as cli

    modules = {p.stem for p in Path(cli.__file__).parent.glob("*.py") if not p.stem.startswith("_")}
    assert {m.__name__.rpartition(".")[2] for m in cli.COMMANDS} == modules
    assert all(callable(m.add_parser) and callable(m.run) for m in cli.COMMANDS)
    parser = cli.build_parser()
    names = list(parser._subparsers._group_actions[0].choices)
    assert names == [m.__name__.rpartition(".")[2] for m in cli.COMMANDS]
    assert [m for m in cli.COMMANDS if getattr(m, "EVERY_RANK", False)] == [cli.train]


@pytest.mark.parametrize("flag", [False, True])
def test_no_flush_subnormals_option_reaches_the_trainer(flag, monkeypatch, capsys, tmp_path):
    import xpcnn.run

    seen = []
    fit = xpcnn.run._fit

    def spy(trainer, checkpoint):
        seen.append(trainer.flush_subnormals)
        return fit(trainer, checkpoint)

    monkeypatch.setattr(xpcnn.run, "_fit", spy)
    argv = ["train", "--epochs", "1", "--train-size", "100", "--eval-samples", "100"]
    argv += ["--no-progress", "--out", str(tmp_path)]
    status, _, _ = run(capsys, *argv, *(["--no-flush-subnormals"] if flag else []))
    assert status == 0 and seen == [not flag]


def test_train_keeps_freed_memory_before_training(monkeypatch, capsys, tmp_path):
    """xpcnn train raises malloc's thresholds (xpcnn._fast._heap) before the run starts."""
    import xpcnn.cli.train
    import xpcnn.run

    events = []
    monkeypatch.setattr(xpcnn.cli.train, "keep_freed_memory", lambda: events.append("heap"))
    fit = xpcnn.run._fit
    monkeypatch.setattr(xpcnn.run, "_fit", lambda *a: events.append("fit") or fit(*a))
    argv = ["train", "--epochs", "1", "--train-size", "100", "--eval-samples", "100"]
    status, _, _ = run(capsys, *argv, "--no-progress", "--out", str(tmp_path))
    assert status == 0 and events == ["heap", "fit"]
