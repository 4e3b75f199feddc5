"""xpcnn.distributed: the one-process communicator here, the MPI one under ``mpiexec -n 2``.

The MPI tests launch ``mpiexec`` in a subprocess (tests/mpi_worker.py), each bounded by
a timeout so that a hang fails; they are skipped, with the reason, when mpi4py or
``mpiexec`` is missing (``pip install -e ".[mpi]"``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import numpy as np
import pytest
from helpers import mpi_available, run_mpi

from xpcnn import distributed
from xpcnn.distributed import (
    ConfigMismatchError,
    MPIUnavailableError,
    array_digest,
    check_same_config,
    rank_seed,
)
from xpcnn.train import Communicator, SingleProcess

needs_mpi = pytest.mark.skipif(mpi_available() is not None, reason=str(mpi_available()))


# -- one process ------------------------------------------------------------------------


def test_get_communicator_without_a_launcher_is_single(monkeypatch):
    for var in distributed._SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(distributed, "_COMM", None)
    comm = distributed.get_communicator()
    assert isinstance(comm, SingleProcess) and isinstance(comm, Communicator)
    check_same_config({"seed": 1})  # nothing to compare with


def test_launched_by_mpiexec_without_mpi4py_is_refused(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setattr(distributed, "_COMM", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails
    with pytest.raises(
        MPIUnavailableError, match=r"one of 2 .*mpi4py is not installed.*pip install mpi4py mpich"
    ):
        distributed.get_communicator()


def test_rank_seed():
    assert rank_seed(7, 0) == 7 and rank_seed(7, 0, step=9) == 7  # rank 0: one-process stream
    assert rank_seed(None, 3) is None
    seeds = {rank_seed(7, r) for r in range(1, 64)} | {rank_seed(8, r) for r in range(1, 64)}
    seeds |= {rank_seed(7, r, step=100) for r in range(1, 64)}
    assert len(seeds) == 189 and 7 not in seeds  # distinct per (seed, rank, step)
    assert rank_seed(7, 5) == rank_seed(7, 5) == rank_seed(7, 5, step=0)
    with pytest.raises(ValueError, match="non-negative"):
        rank_seed(-1, 2)


def test_array_digest_sees_values_shape_and_dtype(backend):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    d = array_digest(backend.asarray(a), a[:, :2])
    assert d == array_digest(a, a[:, :2])
    b = a.copy()
    b[2, 3] += 1
    assert d != array_digest(b, a[:, :2])
    assert d != array_digest(a.reshape(4, 3), a[:, :2])
    assert d != array_digest(a.astype(np.int16), a[:, :2])
    # empty and 0-d arrays (a memoryview of an empty array cannot be cast to bytes)
    assert array_digest(np.zeros((0, 2))) != array_digest(np.zeros((0, 3)))
    assert array_digest(np.array(True)) != array_digest(np.array(False))


# -- two processes -------------------------------------------------------------------------


def _rank_results(tmp_path, n=2):
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(n)]


@pytest.fixture(scope="module")
def collectives_run(tmp_path_factory):
    if mpi_available() is not None:
        pytest.skip(mpi_available())
    out = tmp_path_factory.mktemp("mpi")
    proc = run_mpi(2, ["tests/mpi_worker.py", "collectives", str(out)])
    assert proc.returncode == 0, proc.stderr
    return _rank_results(out)


@needs_mpi
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_allreduce_and_bcast_over_two_ranks(collectives_run, backend, dtype):
    from mpi_worker import rank_input

    a, b = rank_input(0, dtype), rank_input(1, dtype)
    for rank, seen in enumerate(collectives_run):
        r = seen[f"{backend.name}/{dtype}"]
        # same namespace, device and dtype as the input
        for key in ("allreduce", "allreduce_in_place", "bcast"):
            for attr in ("namespace", "device", "dtype"):
                assert r[key][attr] == r["input"][attr], (rank, key, attr)
        assert r["input"]["dtype"].endswith(dtype)
        for key in ("allreduce", "allreduce_in_place"):
            got = np.array(r[key]["values"], dtype=dtype)
            np.testing.assert_array_equal(got, a + b)  # one addition: exact in any dtype
        np.testing.assert_array_equal(np.array(r["bcast"]["values"], dtype=dtype), b)


@needs_mpi
def test_in_place_allreduce_of_a_read_only_array(collectives_run):
    from mpi_worker import rank_input

    want = rank_input(0, "float64") + rank_input(1, "float64")
    for seen in collectives_run:
        np.testing.assert_array_equal(np.array(seen["read_only_in_place"]), want)


@needs_mpi
def test_bcast_object_and_local_rank(collectives_run):
    assert [s["object"] for s in collectives_run] == [{"rank": 1, "x": [1.5, "a"]}] * 2
    assert sorted(s["local_rank"] for s in collectives_run) == [0, 1]  # one node
    assert all(s["is_communicator"] for s in collectives_run)  # what Trainer(comm=) takes


@needs_mpi
@pytest.mark.parametrize(
    ("how", "status", "says"),
    [
        ("raise", 1, "rank 1 failed on purpose"),
        ("exit", 3, ""),
        ("kill", None, ""),
    ],
)
def test_a_failing_rank_ends_the_job(tmp_path, how, status, says):
    start = time.monotonic()
    proc = run_mpi(2, ["tests/mpi_worker.py", f"fault-{how}", str(tmp_path)], timeout=60)
    assert proc.returncode != 0
    if status is not None:
        assert proc.returncode == status
    assert says in proc.stderr
    assert time.monotonic() - start < 60


@needs_mpi
def test_dropout_masks_per_rank_and_batchnorm_statistics_of_rank_0(tmp_path):
    from mpi_worker import layer_net

    proc = run_mpi(2, ["tests/mpi_worker.py", "layers", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr
    rank0, rank1 = _rank_results(tmp_path)
    net = layer_net()  # one process, same seed: rank 0 draws its masks
    drop = next(layer for layer in net.layers if hasattr(layer, "seed_state"))
    single = drop.forward(np.ones((4, 8)), True).tolist()
    assert rank0["mask"] == single
    assert rank1["mask"] != single
    assert rank0["params"] == rank1["params"]  # the same step everywhere
    assert rank0["trained"] != rank1["trained"]  # statistics of each rank's own shares
    assert rank0["evaluated"] == rank1["evaluated"] == rank0["trained"]


@needs_mpi
def test_mismatched_configs_are_refused_on_every_rank(tmp_path):
    proc = run_mpi(2, ["tests/mpi_worker.py", "mismatch", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr
    for seen in _rank_results(tmp_path):
        assert seen["error"].startswith("the ranks were started with different options or data")
        assert "seed (rank 0 has 0, the other rank not)" in seen["error"]
        assert "lr (" not in seen["error"] and "data (" not in seen["error"]


def test_mismatch_error_is_collective():
    assert ConfigMismatchError.collective is True


def test_rank_device_gives_each_rank_of_a_node_its_gpu(monkeypatch):
    from types import SimpleNamespace

    from xpcnn import backend
    from xpcnn.distributed import rank_device

    monkeypatch.setattr(backend, "gpu_names", lambda: ["gpu a", "gpu b"])
    comm = SimpleNamespace(size=4, local_rank=3)
    assert rank_device("cuda", comm) == "cuda:1"  # local rank 3 of a node with 2 GPUs
    assert rank_device(" CUDA ", SimpleNamespace(size=4, local_rank=0)) == "cuda:0"
    assert rank_device("cuda:0", comm) == "cuda:0"  # an explicit GPU is kept
    assert rank_device("cpu", comm) == "cpu"
    assert rank_device("cuda", SimpleNamespace(size=1, local_rank=0)) == "cuda"
    monkeypatch.setattr(backend, "gpu_names", lambda: [])
    assert rank_device("cuda", comm) == "cuda"  # resolve_device then says there is no GPU


@needs_mpi
def test_ranks_share_the_cores_blas_threads(tmp_path):
    no_limits = {"OMP_NUM_THREADS": "", "OPENBLAS_NUM_THREADS": "", "MKL_NUM_THREADS": ""}
    proc = run_mpi(2, ["tests/mpi_worker.py", "threads", str(tmp_path)], env=no_limits)
    assert proc.returncode == 0, proc.stderr
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    for threads, blas in _rank_results(tmp_path):
        assert threads == share and blas and all(n == share for n in blas)


def test_cores_per_rank_shares_the_cpus_and_leaves_chosen_limits_alone(monkeypatch):
    from types import SimpleNamespace

    from xpcnn.distributed import cores_per_rank

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert cores_per_rank(SingleProcess()) == 16
    assert cores_per_rank(SimpleNamespace(size=8, local_size=4)) == 4
    assert cores_per_rank(SimpleNamespace(size=64, local_size=32)) == 1
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    assert cores_per_rank(SimpleNamespace(size=2, local_size=2)) is None


def test_info_of_one_process_names_the_mpi_library_or_the_extra(capsys, monkeypatch):
    from xpcnn.cli import main

    for var in distributed._SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(distributed, "_COMM", None)
    assert main(["info"]) == 0
    line = next(li for li in capsys.readouterr().out.splitlines() if li.startswith("MPI: "))
    if importlib.util.find_spec("mpi4py") is not None:
        assert line.endswith("; world size 1") and "mpi4py 4." in line
    else:
        assert "not installed (install mpi4py and an MPI with `pip install mpi4py mpich`" in line
        assert "xpcnn[mpi]" not in line  # not a published package
