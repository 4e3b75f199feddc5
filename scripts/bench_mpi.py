"""Data-parallel scaling: images/s of `Trainer` over 1, 2, ... MPI ranks beside native PyTorch.

Usage (from the repository root; needs ``pip install -e ".[mpi]"`` and torch)::

    python scripts/bench_mpi.py                        # 1 and 2 ranks, SimpleConvNet
    python scripts/bench_mpi.py --ranks 1 2 4 --models simple deep --steps 60
    python scripts/bench_mpi.py --json mpi.json
    python scripts/bench_mpi.py --bind none          # ranks free to migrate between cores

For each model and each number of ranks R, in one run:

``xpcnn``   ``mpiexec -n R`` processes, each with ONE BLAS/OpenMP thread
            (threadpoolctl and the environment), training with the data-parallel
            :class:`~xpcnn.train.Trainer` (the code ``mpiexec -n R xpcnn train``
            runs: share of the global batch, one flat allreduce per step, Adam);
``torch``   native PyTorch in this process with R threads (``torch.set_num_threads``),
            the same architecture and initial weights (``scripts/bench.py``'s twin),
            ``torch.optim.Adam``, at the same global batch.

Ranks are bound to cores (``mpiexec -bind-to core``, MPICH's option; ``--bind none``
leaves them free to migrate, the MPICH default). Unbound ranks measured 10-20% slower
here: a rank that the scheduler moves, or shares a core with, stalls the other at the
next allreduce.

Two regimes:

* **weak** scaling: a fixed per-rank batch (``--per-rank-batch``, default 100), so the
  global batch is R x 100 and R ranks do R times the work of one;
* **strong** scaling: the fixed global batch ``--global-batch`` (default 100, the
  book's), split into R shares.

Weak scaling also has an **uncoupled** row per R > 1: R one-process trainings at once
under the same ``mpiexec -n R`` (no communication), their images/s summed. It is what
R jobs get from this machine's cores and memory bandwidth, so the coupled run's
distance to it is what communication and synchronisation cost.

Every measurement is repeated ``--repeats`` times, the rank counts interleaved within
each repeat, and the median is reported.

Images/s counts global images. xpcnn trains on synthetic uint8 images (speed does not
depend on the values) for two epochs of ``--steps`` steps; the first is warm-up and the
second is timed by the Trainer (``images_per_sec``, evaluation excluded). torch is timed
over the same number of steps after warm-up. The load average is printed before and
after: on a shared machine the absolute numbers move with it; ratios within one run
hold up better.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

INPUT_DIM = (1, 28, 28)


def worker(model: str, global_batch: int, steps: int, out: Path, uncoupled: bool) -> None:
    """One rank of ``mpiexec -n R``: two epochs of ``steps`` steps; rank 0 writes img/s.

    ``uncoupled``: every rank trains alone (no communication) and writes its own img/s.
    """
    from threadpoolctl import threadpool_limits

    from xpcnn.distributed import abort_on_exception, get_communicator
    from xpcnn.models import build_model
    from xpcnn.train import SingleProcess, Trainer

    world = get_communicator()
    comm = SingleProcess() if uncoupled else world
    if uncoupled:
        out = out.with_suffix(f".{world.rank}.json")
    with abort_on_exception(world), threadpool_limits(limits=1):
        rng = np.random.default_rng(0)
        n = global_batch * steps
        x = rng.integers(0, 256, (n, *INPUT_DIM), dtype=np.uint8)
        t = rng.integers(0, 10, n).astype(np.int64)
        net = build_model({"model": model}, seed=0)
        trainer = Trainer(
            net, x, t, x[:10], t[:10], epochs=2, mini_batch_size=global_batch,
            evaluate_sample_num_per_epoch=10, verbose=False,
            seed=0, log_every=steps, comm=comm,
        )  # fmt: skip
        history = trainer.train()
        if comm.rank == 0:
            out.write_text(json.dumps({"images_per_sec": history["images_per_sec"][-1]}))


def run_xpcnn(
    ranks: int,
    model: str,
    global_batch: int,
    steps: int,
    timeout: float,
    bind: str,
    uncoupled: bool = False,
) -> float:
    """Images/s of ``mpiexec -n ranks`` data-parallel training (``uncoupled``: the sum
    of ``ranks`` independent one-process trainings at ``global_batch`` each)."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_mpi_{os.getpid()}.json"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = ["mpiexec", *([] if bind == "none" else ["-bind-to", bind]), "-n", str(ranks)]
    cmd += [sys.executable, __file__, "--worker", "--models", model]
    cmd += ["--global-batch", str(global_batch), "--steps", str(steps), "--out", str(out)]
    subprocess.run([*cmd, *(["--uncoupled"] if uncoupled else [])], env=env, check=True, timeout=timeout)  # fmt: skip
    outs = [out.with_suffix(f".{r}.json") for r in range(ranks)] if uncoupled else [out]
    try:
        return sum(float(json.loads(o.read_text())["images_per_sec"]) for o in outs)
    finally:
        for o in outs:
            o.unlink(missing_ok=True)


def run_torch(threads: int, model: str, global_batch: int, steps: int) -> float:
    import torch
    import torch.nn.functional as F
    from bench import make_batch, torch_model

    from xpcnn.models import build_model

    torch.set_num_threads(threads)
    net = torch_model(build_model({"model": model}, seed=0))
    opt = torch.optim.Adam(net.parameters(), lr=0.001)
    x, t = (torch.from_numpy(a) for a in make_batch(global_batch))
    net.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), t).backward()
        opt.step()

    for _ in range(max(3, steps // 5)):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return global_batch * steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--models", nargs="+", default=["simple"], help="simple, deep, ...")
    p.add_argument("--per-rank-batch", type=int, default=100, help="weak scaling")
    p.add_argument("--global-batch", type=int, default=100, help="strong scaling")
    p.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is kept")
    p.add_argument("--bind", default="core", help="mpiexec -bind-to this; 'none': unbound")
    p.add_argument("--timeout", type=float, default=600, help="seconds per mpiexec run")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--uncoupled", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.models[0], args.global_batch, args.steps, args.out, args.uncoupled)
        return

    load_before = os.getloadavg()
    print(f"{os.cpu_count()} CPUs; load average before {load_before[0]:.2f}", flush=True)
    rows: list[dict[str, Any]] = []
    for model in args.models:
        for regime in ("weak", "strong"):
            # (label, ranks, uncoupled): the coupled runs, then the uncoupled ceilings.
            runs = [("coupled", R, False) for R in args.ranks]
            if regime == "weak":
                runs += [("uncoupled", R, True) for R in args.ranks if R > 1]
            samples: dict[tuple[str, int], list[tuple[float, float | None]]] = {}
            for rep in range(args.repeats):
                for kind, R, uncoupled in runs:
                    gb = args.per_rank_batch * R if regime == "weak" else args.global_batch
                    xp_ips = run_xpcnn(
                        R, model, args.per_rank_batch if uncoupled else gb, args.steps,
                        args.timeout, args.bind, uncoupled,
                    )  # fmt: skip
                    # torch's side of an uncoupled row is its coupled row's (same R, batch)
                    th_ips = None if uncoupled else run_torch(R, model, gb, args.steps)
                    samples.setdefault((kind, R), []).append((xp_ips, th_ips))
                    torch_part = (
                        "" if th_ips is None else f", torch {R} threads {th_ips:9,.0f} img/s"
                    )
                    print(
                        f"[{rep + 1}/{args.repeats}] {model:>6} {regime:>6} {kind:>9} ranks {R:>2} "
                        f"batch {gb:>5}: xpcnn {xp_ips:9,.0f} img/s{torch_part}",
                        flush=True,
                    )
            base = statistics.median(x for x, _ in samples[("coupled", args.ranks[0])])
            for (kind, R), pairs in samples.items():
                xp_ips = statistics.median(x for x, _ in pairs)
                th_ips = statistics.median(t for _, t in samples[("coupled", R)] if t is not None)
                rows.append({
                    "model": model, "regime": regime if kind == "coupled" else f"{regime}, {kind}",
                    "ranks": R, "global_batch": args.per_rank_batch * R if regime == "weak"
                    else args.global_batch, "xpcnn_img_s": xp_ips, "torch_img_s": th_ips,
                    "xpcnn_speedup": xp_ips / base, "x_torch": xp_ips / th_ips,
                    "samples": pairs,
                })  # fmt: skip
    load_after = os.getloadavg()
    print("\n| model | scaling | ranks / torch threads | global batch | xpcnn img/s "
          "| vs 1 rank | torch img/s | xpcnn / torch |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['regime']} | {r['ranks']} | {r['global_batch']} "
            f"| {r['xpcnn_img_s']:,.0f} | {r['xpcnn_speedup']:.2f} | {r['torch_img_s']:,.0f} "
            f"| {r['x_torch']:.2f} |"
        )
    print(
        f"\nmedians of {args.repeats} interleaved repeats; ranks bound: {args.bind}; "
        f"load average: before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"(1-minute; {os.cpu_count()} CPUs)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "bind": args.bind,
                    "repeats": args.repeats,
                    "load_before": load_before,
                    "load_after": load_after,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
