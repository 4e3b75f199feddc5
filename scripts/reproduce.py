"""Reproduce the book's result: SimpleConvNet, 20 epochs, batch 100, Adam lr 0.001,
weight_init_std 0.01, float32, over several seeds, through the `xpcnn train` CLI.

    python scripts/reproduce.py --dataset mnist --data-dir ../shared/data --seeds 0 1 2

Each seed's run goes to ``OUT/<dataset>-seed<k>/``; a summary (final test
accuracy on the whole test set, wall time, training images/s, median over
seeds, machine and load) is printed and written to ``OUT/<dataset>-summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from xpcnn.data import DATASET_NAMES


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", choices=DATASET_NAMES)
    p.add_argument("--augment", default=None, help="crop, flip or crop,flip (xpcnn train's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", default="simple")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    args = p.parse_args()

    results = []
    for seed in args.seeds:
        out = args.out / f"{args.model}-{args.dataset}-seed{seed}"
        cmd = [
            sys.executable,
            "-m",
            "xpcnn",
            "train",
            "--model",
            args.model,
            "--dataset",
            args.dataset,
            "--epochs",
            str(args.epochs),
            "--batch-size",
            "100",
            "--optimizer",
            "adam",
            "--lr",
            "0.001",
            "--dtype",
            "float32",
            "--seed",
            str(seed),
            "--device",
            args.device,
            "--out",
            str(out),
            "--no-progress",
            "--overwrite",  # a rerun replaces the previous reproduction
        ]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        if args.augment:
            cmd += ["--augment", args.augment]
        load_before = os.getloadavg()
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - start
        h = json.loads((out / "history.json").read_text())
        ips = statistics.median(h["images_per_sec"])
        results.append(
            {
                "seed": seed,
                "test_accuracy": h["final_test_accuracy"],
                "wall_seconds": wall,
                "train_images_per_sec_median_epoch": ips,
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
                "command": " ".join(cmd[1:]),
            }
        )
        print(
            f"seed {seed}: test accuracy {h['final_test_accuracy']:.4f}, {wall:.0f} s, {ips:,.0f} img/s",
            flush=True,
        )

    accs = [r["test_accuracy"] for r in results]
    summary = {
        "model": args.model,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "device": args.device,
        "median_test_accuracy": statistics.median(accs),
        "runs": results,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.model}-{args.dataset}-summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"median test accuracy over seeds {args.seeds}: {summary['median_test_accuracy']:.4f} -> {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
