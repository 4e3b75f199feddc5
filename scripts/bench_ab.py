"""Before and after: one training step of two checkouts of xpcnn, interleaved.

A refactor must cost nothing; this measures it. Each round runs a fresh child
process per checkout (``PYTHONPATH`` set to it), alternating, so drifts in a shared
machine's load hit both alike; a child times ``net.gradient`` + ``Adam.update`` of
SimpleConvNet and DeepConvNet (batch 100, float32, ``--threads`` N: ``xpcnn.cpu_threads(N)``
and BLAS at N through threadpoolctl; default one) on random data and reports its fastest step.
The table gives, per checkout, the minimum and the median over rounds of those
fastest steps, and after / before of the minima (the least disturbed estimate on a
busy machine). Only APIs that every checkout since issue 15 has are used.

Usage (from the repository root)::

    git worktree add ../before 1302342
    XPCNN_ISA=none python scripts/bench_ab.py ../before . --backend numpy
    python scripts/bench_ab.py ../before . --backend torch --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
from xpcnn import cpu_threads
from xpcnn.models import MODELS
from xpcnn.optim import Adam

backend, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kwargs = {} if backend == "numpy" else {"backend": backend}
out = {}
with threadpool_limits(threads), cpu_threads(threads):
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    for model in ("simple", "deep"):
        net = MODELS[model](seed=0, **kwargs)
        rng = np.random.default_rng(0)
        x = rng.random((100, 1, 28, 28), dtype=np.float32)
        t = rng.integers(0, 10, 100)
        if backend == "torch":
            x, t = torch.asarray(x), torch.asarray(t)
        opt, times = Adam(lr=0.001), []
        for _ in range(steps):
            t0 = time.perf_counter()
            opt.update(net.params, net.gradient(x, t))
            times.append(time.perf_counter() - t0)
        out[model] = min(times[2:]) * 1e3  # the first two steps warm caches and pools
print(json.dumps(out))
"""


def child(tree: Path, backend: str, steps: int, threads: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    cmd = [sys.executable, "-c", CHILD, backend, str(steps), str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("before", type=Path, help="checkout of the code before the change")
    p.add_argument("after", type=Path, help="checkout of the code after it")
    p.add_argument("--backend", choices=("numpy", "torch"), default="numpy")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="xpcnn's (and BLAS's, torch's)")
    p.add_argument("--steps", type=int, default=10, help="steps per child (two warm-up)")
    args = p.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    load = os.getloadavg()
    for r in range(args.rounds):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for side in order:
            runs[side].append(child(getattr(args, side), args.backend, args.steps, args.threads))
    print(
        f"# {args.backend}, {args.threads} thread(s), XPCNN_ISA={os.environ.get('XPCNN_ISA', '')!r}, {args.rounds} rounds,"
        f" load {load[0]:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print("| step ms | before min | before median | after min | after median | after / before |")
    print("|---|---:|---:|---:|---:|---:|")
    for model in ("simple", "deep"):
        b = [run[model] for run in runs["before"]]
        a = [run[model] for run in runs["after"]]
        print(
            f"| {model} | {min(b):.1f} | {statistics.median(b):.1f} | {min(a):.1f} |"
            f" {statistics.median(a):.1f} | {min(a) / min(b):.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
