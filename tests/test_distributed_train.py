"""``mpiexec -n 2 xpcnn train``: the same computation as one process, resumable on any
number of ranks, one writer, and no hang when a rank fails.

Each test launches ``mpiexec`` in a subprocess with a timeout (a hang fails the test)
and is skipped, with the reason, when mpi4py or ``mpiexec`` is missing. The runs are
tiny: 110 images of the bundled sample in global batches of 25 (shares of 13 and 12
images, and a last batch of 10), float64, so that sums in another order agree to 1e-9.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, mpi_available, run_mpi

from xpcnn.checkpoint import load_checkpoint
from xpcnn.cli import main

pytestmark = pytest.mark.skipif(mpi_available() is not None, reason=str(mpi_available()))

ARGS = [
    "train", "--train-size", "110", "--batch-size", "25", "--epochs", "1",
    "--eval-samples", "60", "--dtype", "float64", "--seed", "3", "--no-progress",
]  # fmt: skip
XPCNN = ["-m", "xpcnn"]


def assert_same_state(a: Path, b: Path) -> None:
    """Parameters and optimizer state of two checkpoints agree to 1e-9; progress is equal."""
    (arr_a, meta_a), (arr_b, meta_b) = load_checkpoint(a), load_checkpoint(b)
    assert sorted(arr_a) == sorted(arr_b)
    assert any(k.startswith("optim/") for k in arr_a)
    for k in arr_a:
        if k.startswith(("params/", "buffers/", "optim/")):
            np.testing.assert_allclose(arr_a[k], arr_b[k], rtol=0, atol=1e-9, err_msg=k)
    for key in ("epoch", "step_in_epoch", "rng"):
        assert meta_a["trainer"][key] == meta_b["trainer"][key], key
    assert meta_a["optimizer"]["iter"] == meta_b["optimizer"]["iter"]
    np.testing.assert_allclose(
        meta_a["history"]["train_loss"], meta_b["history"]["train_loss"], rtol=0, atol=1e-9
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One epoch in one process (in this process) and under ``mpiexec -n 2``."""
    root = tmp_path_factory.mktemp("mpi-train")
    assert main([*ARGS, "--out", str(root / "single")]) == 0
    proc = run_mpi(2, [*XPCNN, *ARGS, "--out", str(root / "mpi")])
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "mpi": proc}


def test_two_ranks_compute_what_one_process_does(runs):
    root = runs["root"]
    assert_same_state(root / "single" / "checkpoint.npz", root / "mpi" / "checkpoint.npz")
    single = json.loads((root / "single" / "history.json").read_text())
    mpi = json.loads((root / "mpi" / "history.json").read_text())
    assert (single["config"]["world_size"], mpi["config"]["world_size"]) == (1, 2)
    assert mpi["final_test_accuracy"] == single["final_test_accuracy"]
    assert mpi["test_acc"] == single["test_acc"] and mpi["train_acc"] == single["train_acc"]


def test_only_rank_0_prints_and_writes(runs):
    out = runs["root"] / "mpi"
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.npz",
        "curves.png",
        "history.csv",
        "history.json",
    ]
    stdout, stderr = runs["mpi"].stdout, runs["mpi"].stderr
    assert stdout.count("epoch   1/1") == 1 and stdout.count("test accuracy") == 1, stdout
    assert stderr.count("training simple on mnist-sample") == 1, stderr
    assert "x 2 ranks (MPI)" in stderr
    # mpiexec's default leaves the ranks unbound: the first lines say how to bind them.
    unbound = len(os.sched_getaffinity(0)) > 1
    assert stderr.count("note: each rank may run on any of") == unbound, stderr


def test_ranks_bound_to_cores_train_and_get_no_binding_note(tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to bind two ranks")
    version = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True).stdout
    if "HYDRA" not in version:
        pytest.skip("`-bind-to core` is the option of MPICH's launcher (Hydra)")
    proc = run_mpi(2, [*XPCNN, *ARGS, "--out", str(tmp_path)], launcher=["-bind-to", "core"])
    assert proc.returncode == 0, proc.stderr
    assert "x 2 ranks (MPI)" in proc.stderr and "note: each rank" not in proc.stderr


def test_info_shows_the_mpi_library_and_world_size():
    proc = run_mpi(2, [*XPCNN, "info"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("MPI: ")]
    assert len(lines) == 1 and lines[0].endswith("; world size 2"), proc.stdout  # rank 0 only
    assert "MPICH" in lines[0] or "Open MPI" in lines[0]


def test_resume_across_world_sizes(runs):
    """1 epoch on 2 ranks + 1 on one process == 1 epoch on one process + 1 on 2 ranks."""
    root = runs["root"]
    more = ["--epochs", "2"]
    assert main([*ARGS, *more, "--resume", str(root / "mpi" / "checkpoint.npz"),
                 "--out", str(root / "2to1")]) == 0  # fmt: skip
    proc = run_mpi(2, [*XPCNN, *ARGS, *more, "--resume", str(root / "single" / "checkpoint.npz"),
                       "--out", str(root / "1to2")])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert_same_state(root / "2to1" / "checkpoint.npz", root / "1to2" / "checkpoint.npz")
    assert load_checkpoint(root / "1to2" / "checkpoint.npz")[1]["trainer"]["epoch"] == 2


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_rank_that_fails_mid_training_ends_the_job(tmp_path, how):
    """Rank 1 fails in epoch 2; rank 0, waiting in the step's allreduce, is ended too
    and its checkpoint of epoch 1 stays readable."""
    start = time.monotonic()
    argv = [*ARGS, "--epochs", "3", "--out", str(tmp_path)]
    proc = run_mpi(2, ["tests/mpi_worker.py", f"cli-{how}", *argv], timeout=90)
    assert proc.returncode != 0
    if how == "raise":
        assert "rank 1 failed in step 7 on purpose" in proc.stderr
    assert time.monotonic() - start < 90
    _, meta = load_checkpoint(tmp_path / "checkpoint.npz")
    assert meta["trainer"]["epoch"] == 1
    assert not (tmp_path / "history.json").exists()


def test_ranks_with_different_options_are_refused(tmp_path):
    proc = run_mpi(2, ["tests/mpi_worker.py", "cli-lr", *ARGS, "--out", str(tmp_path)])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        "xpcnn train: error: the ranks were started with different options or data: "
        "lr (rank 0 has 0.001, the other rank not)"
    )
    assert not (tmp_path / "checkpoint.npz").exists()


def test_an_out_holding_a_run_is_refused_on_every_rank(tmp_path):
    """Rank 0 decides and tells the others: one line, the same status everywhere."""
    (tmp_path / "checkpoint.npz").write_bytes(b"another run")
    proc = run_mpi(2, [*XPCNN, *ARGS, "--out", str(tmp_path)], timeout=90)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "MPI_Abort" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"xpcnn train: error: {tmp_path} already holds a run")
    assert (tmp_path / "checkpoint.npz").read_bytes() == b"another run"


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_one_checkpoint_and_stops_every_rank(tmp_path, signum, status):
    """SIGINT to mpiexec (a terminal's Ctrl-C) or SIGTERM (a scheduler's; mpiexec
    forwards both to every rank): every rank stops after the same step."""
    argv = [*ARGS, "--epochs", "1000", "--dtype", "float32", "--out", str(tmp_path)]
    cmd = ["mpiexec", "-n", "2", sys.executable, *XPCNN, *argv]
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as proc:  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            while not (tmp_path / "checkpoint.npz").exists():  # epoch 1 is done
                assert proc.poll() is None and time.monotonic() < deadline, "no epoch finished"
                time.sleep(0.2)
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == status, err
    # mpiexec forwards the signal to each rank at its own moment: rank 0's may come after
    # the step's exchange of stop flags, and rank 0 then learns of it from the other rank.
    if signum == signal.SIGINT:
        what = "interrupted"
    else:
        what = r"terminated \(interrupted by SIGTERM( on another rank)?\)"
    assert len(re.findall(f"{what}: checkpoint saved to", err)) == 1, err
    assert f"mpiexec -n 2 xpcnn train --resume {tmp_path / 'checkpoint.npz'}" in err
    assert "MPI_Abort" not in err and "Traceback" not in err, err
    _, meta = load_checkpoint(tmp_path / "checkpoint.npz")
    tr = meta["trainer"]
    assert tr["epoch"] >= 1 and tr["epoch"] * 5 + tr["step_in_epoch"] == meta["optimizer"]["iter"]


def test_two_ranks_augment_each_image_as_one_process_does(tmp_path):
    """The crops are drawn per example from (seed, epoch): any split of a batch over
    the ranks crops each image the same way."""
    args = [*ARGS, "--augment", "crop"]
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    proc = run_mpi(2, [*XPCNN, *args, "--out", str(tmp_path / "mpi")])
    assert proc.returncode == 0, proc.stderr
    assert_same_state(tmp_path / "single" / "checkpoint.npz", tmp_path / "mpi" / "checkpoint.npz")
    assert load_checkpoint(tmp_path / "mpi" / "checkpoint.npz")[1]["run"]["augment"] == "crop"
