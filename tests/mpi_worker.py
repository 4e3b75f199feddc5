"""Run under ``mpiexec -n N`` by tests/test_distributed.py (not collected by pytest).

``python tests/mpi_worker.py SCENARIO OUT_DIR``: each rank writes what it saw to
``OUT_DIR/rank<r>.json``; the test process checks it against its own reference.
``python tests/mpi_worker.py cli-FAULT XPCNN_ARGS...``: the ``xpcnn`` command with a
fault injected on rank 1.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest's backends

from xpcnn.distributed import (
    ConfigMismatchError,
    abort_on_exception,
    check_same_config,
    get_communicator,
)
from xpcnn.train import Communicator


def rank_input(rank: int, dtype: str) -> np.ndarray:
    """Rank ``rank``'s input: the test process draws the same numbers."""
    a = np.random.default_rng(100 + rank).standard_normal((3, 4)) * 10
    return a.astype(dtype)


def collectives(comm, out: Path) -> None:
    from conftest import BACKENDS

    from xpcnn.testing import enable_jax_x64

    enable_jax_x64()  # as the pytest plugin does in the test process (float64 on JAX)
    seen = {}
    for b in BACKENDS:  # xpcnn.backend.Device objects
        for dtype in ("float32", "float64", "int64"):
            x = b.asarray(rank_input(comm.rank, dtype), dtype)
            s = comm.allreduce(x)
            c = comm.bcast(x, root=comm.size - 1)
            s_in_place = comm.allreduce(
                b.asarray(rank_input(comm.rank, dtype), dtype), in_place=True
            )
            seen[f"{b.name}/{dtype}"] = {
                "input": _describe(x),
                "allreduce": _describe(s),
                "allreduce_in_place": _describe(s_in_place),
                "bcast": _describe(c),
            }
    read_only = rank_input(comm.rank, "float64")
    read_only.flags.writeable = False  # in_place falls back to a copy, never fails
    seen["read_only_in_place"] = comm.allreduce(read_only, in_place=True).tolist()
    seen["object"] = comm.bcast_object({"rank": comm.rank, "x": [1.5, "a"]}, root=comm.size - 1)
    seen["local_rank"] = comm.local_rank
    seen["is_communicator"] = isinstance(comm, Communicator)
    comm.barrier()
    (out / f"rank{comm.rank}.json").write_text(json.dumps(seen))


def layer_net():
    """A tiny net with dropout and batch normalisation (the test process builds it too)."""
    from xpcnn.models import NetBuilder

    return NetBuilder((6,), seed=0).affine(8).batchnorm().relu().dropout(0.5).affine(3).build()


def layers(comm, out: Path) -> None:
    """Per-rank dropout masks after the start-of-training broadcast; BatchNorm running
    statistics: trained per rank, rank 0's once evaluated."""
    from xpcnn.train import Batch, Trainer

    net = layer_net()
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)
    trainer = Trainer(net, x, t, x, t, epochs=1, mini_batch_size=8, verbose=False,
                      seed=0, comm=comm)  # fmt: skip
    trainer.broadcast_state()
    drop = next(layer for layer in net.layers if hasattr(layer, "seed_state"))
    mask = drop.forward(np.ones((4, 8)), True).tolist()
    for step in range(1, 4):  # BatchNorm running statistics of this rank's shares (4 of 8)
        trainer.updater.update(Batch(step, np.arange(comm.rank * 4, comm.rank * 4 + 4), 8))
    trained = {k: v.tolist() for k, v in net.buffers.items()}
    trainer.test_accuracy()
    evaluated = {k: v.tolist() for k, v in net.buffers.items()}
    params = {k: v.tolist() for k, v in net.params.items()}
    (out / f"rank{comm.rank}.json").write_text(
        json.dumps({"mask": mask, "trained": trained, "evaluated": evaluated, "params": params})
    )


def _describe(x) -> dict:
    from array_api_compat import array_namespace, device

    from xpcnn.backend import to_numpy

    return {
        "values": to_numpy(x).tolist(),
        "dtype": str(x.dtype),
        "device": str(device(x)),
        "namespace": array_namespace(x).__name__,
    }


def fault(comm, how: str) -> None:
    """Rank 1 fails while rank 0 waits in a collective (which would hang forever)."""
    if comm.rank == 1:
        time.sleep(0.2)
        if how == "raise":
            raise RuntimeError("rank 1 failed on purpose")
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    comm.allreduce(np.ones(3))
    comm.barrier()


def mismatch(comm, out: Path) -> None:
    try:
        check_same_config({"seed": comm.rank, "lr": 0.001, "data": "same"})
    except ConfigMismatchError as exc:
        (out / f"rank{comm.rank}.json").write_text(json.dumps({"error": str(exc)}))
        return
    check_same_config({"seed": 0, "lr": 0.001})  # equal configurations pass
    (out / f"rank{comm.rank}.json").write_text(json.dumps({"error": None}))


def cli(comm, how: str, argv: list[str]) -> int:
    """``xpcnn`` on every rank, with a fault on rank 1: ``raise`` or ``kill`` in its
    7th training step, or ``lr``: started with another learning rate."""
    from xpcnn.cli import main
    from xpcnn.train import StandardUpdater

    if comm.rank == 1 and how in ("raise", "kill"):
        step = StandardUpdater.gradients
        calls = [0]

        def failing_step(self, *args):
            calls[0] += 1
            if calls[0] == 7:
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("rank 1 failed in step 7 on purpose")
            return step(self, *args)

        StandardUpdater.gradients = failing_step
    if comm.rank == 1 and how == "lr":
        argv = [*argv, "--lr", "0.002"]
    return main(argv)


def main() -> None:
    scenario = sys.argv[1]
    comm = get_communicator()
    if scenario.startswith("cli-"):  # the rest of the command line is xpcnn's
        sys.exit(cli(comm, scenario.removeprefix("cli-"), sys.argv[2:]))
    out = Path(sys.argv[2])
    with abort_on_exception(comm):
        if scenario == "collectives":
            collectives(comm, out)
        elif scenario.startswith("fault-"):
            fault(comm, scenario.removeprefix("fault-"))
        elif scenario == "threads":
            from threadpoolctl import threadpool_info, threadpool_limits

            from xpcnn.distributed import cores_per_rank

            threads = cores_per_rank(comm)
            threadpool_limits(threads, user_api="blas")
            blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
            (out / f"rank{comm.rank}.json").write_text(json.dumps([threads, blas]))
        elif scenario == "layers":
            layers(comm, out)
        elif scenario == "mismatch":
            mismatch(comm, out)
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main()
