"""Late in training: an epoch with a trained DeepConvNet's weights against fresh weights.

Once a network is trained, float32 gradients hold subnormal numbers, which CPUs
compute with slow microcode. This script times one training epoch of ``--images``
images (batch 100, Adam lr 0.001, dropout on) in one process, interleaved:

``xpcnn trained``        the trained weights, through the Trainer (flush-to-zero on:
                         its default)
``xpcnn trained exact``  the same with ``flush_subnormals=False``
``xpcnn fresh``          freshly initialised weights (seed 0), Trainer defaults
``torch trained``        a ``torch.nn`` twin holding the trained weights, a plain loop,
                         PyTorch's defaults (no flushing)
``torch trained flush``  the same after ``torch.set_flush_denormal(True)``
``torch fresh``          the twin of the fresh network

The xpcnn epochs are the Trainer's ``epoch_seconds`` (the steps only: the per-epoch
evaluation comes after); each side starts each epoch from a fresh optimizer. Every
run is made once untimed first. The
images are the bundled MNIST sample's, so the script runs offline.

Usage (from the repository root; the checkpoint of the book's DeepConvNet recipe)::

    python scripts/bench_late.py --checkpoint runs/deep-mnist/checkpoint.npz
    python scripts/bench_late.py --checkpoint ... --threads 1 --repeats 5 --json late.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from bench import torch_model
from threadpoolctl import threadpool_limits

import xpcnn
from xpcnn.data import load_dataset
from xpcnn.models import DeepConvNet
from xpcnn.train import Trainer


def xpcnn_epoch(net: Any, x: np.ndarray, t: np.ndarray, flush: bool) -> float:
    trainer = Trainer(
        net,
        x,
        t,
        x[:100],
        t[:100],
        epochs=1,
        evaluate_sample_num_per_epoch=100,
        verbose=False,
        seed=0,
        flush_subnormals=flush,
    )
    trainer.train()
    return float(trainer.epoch_seconds[-1])


def torch_epoch(model: Any, x: np.ndarray, t: np.ndarray, flush: bool) -> float:
    torch.set_flush_denormal(flush)
    try:
        xt = torch.from_numpy(x.astype(np.float32) / 255.0)
        tt = torch.from_numpy(t.astype(np.int64))
        opt = torch.optim.Adam(model.parameters(), lr=0.001)
        loss_fn = torch.nn.CrossEntropyLoss()
        model.train()
        start = time.perf_counter()
        for i in range(0, len(x), 100):
            opt.zero_grad()
            loss_fn(model(xt[i : i + 100]), tt[i : i + 100]).backward()
            opt.step()
        return time.perf_counter() - start
    finally:
        torch.set_flush_denormal(False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a trained DeepConvNet")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", default="default", help="'default' or a count for both sides")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.threads != "default":
        n = int(args.threads)
        torch.set_num_threads(n)
        threadpool_limits(n)
        threads: Any = xpcnn.cpu_threads(n)
        threads.__enter__()
    data = load_dataset("mnist-sample")
    x, t = data.x_train[: args.images], data.t_train[: args.images]
    trained = xpcnn.load_network(args.checkpoint)
    assert type(trained).__name__ == "DeepConvNet", "--checkpoint must hold a DeepConvNet"
    runs = {
        "xpcnn trained": lambda: xpcnn_epoch(xpcnn.load_network(args.checkpoint), x, t, True),
        "xpcnn trained exact": lambda: xpcnn_epoch(
            xpcnn.load_network(args.checkpoint), x, t, False
        ),
        "xpcnn fresh": lambda: xpcnn_epoch(DeepConvNet(seed=0), x, t, True),
        "torch trained": lambda: torch_epoch(torch_model(trained), x, t, False),
        "torch trained flush": lambda: torch_epoch(torch_model(trained), x, t, True),
        "torch fresh": lambda: torch_epoch(torch_model(DeepConvNet(seed=0)), x, t, False),
    }
    print(
        f"# bench_late {time.strftime('%Y-%m-%dT%H:%M:%S%z')}  load {os.getloadavg()}  "
        f"threads {args.threads} (torch {torch.get_num_threads()})  {args.images} images  "
        f"convolution: {xpcnn.backend.kernel_summary()}"
    )
    for run in runs.values():  # warm-up: first calls, allocations, page faults
        run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.repeats):
        for name in runs if r % 2 == 0 else reversed(runs):
            times[name].append(runs[name]())
    med = {k: statistics.median(v) for k, v in times.items()}
    print("| run | epoch s (median) | all |")
    print("|---|---:|---|")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.2f} | {', '.join(f'{s:.2f}' for s in v)} |")
    ratios = {
        "xpcnn trained / fresh": med["xpcnn trained"] / med["xpcnn fresh"],
        "xpcnn trained exact / fresh": med["xpcnn trained exact"] / med["xpcnn fresh"],
        "torch trained / fresh": med["torch trained"] / med["torch fresh"],
        "speed vs torch, trained weights (torch s / xpcnn s)": med["torch trained"]
        / med["xpcnn trained"],
    }
    for k, v in ratios.items():
        print(f"# {k}: {v:.2f}")
    print(f"# load after {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"times": times, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
