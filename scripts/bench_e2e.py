"""End to end, at defaults: the wall time of ``xpcnn train`` against a plain PyTorch script.

Usage (from the repository root)::

    python scripts/bench_e2e.py                          # mnist-sample, SimpleConvNet, tiny
    python scripts/bench_e2e.py --epochs 1 --train-size 1000 --repeats 1   # a smoke test
    python scripts/bench_e2e.py --model deep --dataset fashion-mnist --data-dir ../shared/data \\
        --epochs 3 --repeats 3 --threads default,1 --json e2e.json

What a user sees is the command's wall time, so each run is a fresh process,
timed by this script from ``subprocess`` start to exit:

``xpcnn``  ``python -m xpcnn train --model M --dataset D --epochs E [--train-size N]
           --no-progress --out TMP [--threads T]``: everything at the CLI's defaults
           (Adam lr 0.001, batch 100, seed 0, float32, per-epoch accuracy on the
           first 10,000 train and test images, a checkpoint per epoch, the final
           whole-test-set accuracy, history.json and curves.png).
``torch``  ``python scripts/bench_e2e.py --_torch-child ...``: the plain PyTorch
           script below (:func:`torch_child`), the same recipe: the same
           architecture and initial weights (``torch.nn`` twins of the xpcnn
           network's layers, from ``scripts/bench.py``), Adam lr 0.001, batch 100,
           each epoch one ``torch.randperm`` shuffle (without replacement), the
           same IDX files read by ``xpcnn.data.load_dataset`` (uint8, scaled to
           float32 in [0, 1] once up front), one evaluation of the whole test set
           at the end. ``--torch-epoch-eval`` adds the CLI's per-epoch evaluation
           (first 10,000 train and test images) to separate that cost.

Counted on both sides: interpreter start-up, imports, data loading, model
building, training, the final evaluation, and (xpcnn only: it is what the CLI
does) the per-epoch evaluation, the checkpoints and the plot. Nothing inside
a run is left out; only the parent's own work (starting the process, reading
the result) is outside. Each side also reports its training-loop time,
``train s`` (xpcnn: ``seconds`` in history.json, from the first step to the
end of the last epoch's evaluation and checkpoint; torch: from its first step
to the end of its last epoch), so start-up (``import torch`` alone takes
seconds), data loading and the final evaluation, checkpoint and plot can be
told from the loop: wall minus train s.

Threads: every ``--threads`` setting is run for both sides. ``default`` runs both
at their defaults (``xpcnn train``: its own threads on every CPU the process may
use, BLAS at one; PyTorch picks its own count); a number N
gives ``--threads N`` to ``xpcnn train`` and ``torch.set_num_threads(N)`` (and
BLAS limited to N by threadpoolctl) to the torch script. The counts actually
used are reported by each child: the CLI's ``threads:`` line, and for torch
``torch.get_num_threads()`` and threadpoolctl's pools.

Order: runs are interleaved (xpcnn, torch, xpcnn, torch, ...), the side that
starts alternating from one repeat to the next, so drifts in the machine's
load hit both alike. The load average is recorded before and after each run.
The speed ratio is ``torch seconds / xpcnn seconds`` of the medians (above 1:
xpcnn is faster), as in issue 15; in brackets the same ratio of ``train s``
(xpcnn's loop includes its per-epoch evaluation and checkpoints; the torch
loop only with ``--torch-epoch-eval``, and never checkpoints).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SIDES = ("xpcnn", "torch")
DATASETS = ("mnist-sample", "mnist", "fashion-mnist")
BATCH, LR, SEED, EVAL_SAMPLES = 100, 0.001, 0, 10000
RESULT_TAG = "BENCH_E2E_RESULT "


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _child_env() -> dict[str, str]:
    """Both children import this checkout's xpcnn, whatever is pip-installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


# -- the plain PyTorch script (run in its own process) -----------------------------------------


def torch_child(args: argparse.Namespace) -> None:
    """Train like ``xpcnn train`` at defaults, in plain PyTorch; print one JSON result line."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from threadpoolctl import threadpool_info, threadpool_limits

    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from bench import torch_model  # the torch.nn twin of an xpcnn Sequential

    from xpcnn.data import load_dataset
    from xpcnn.models import build_model

    limits = None
    if args.threads != "default":
        torch.set_num_threads(int(args.threads))
        limits = threadpool_limits(limits=int(args.threads), user_api="blas")
    torch.manual_seed(SEED)  # dropout masks
    ds = load_dataset(args.dataset, args.data_dir, progress=False)
    n = args.train_size

    def as_float(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(torch.float32) / 255.0

    x_train, t_train = as_float(ds.x_train[:n]), torch.from_numpy(ds.t_train[:n]).long()
    x_test, t_test = as_float(ds.x_test), torch.from_numpy(ds.t_test).long()
    # as `xpcnn train` builds it, so both start from the same weights
    spec = {"model": args.model, "input_dim": tuple(ds.x_train.shape[1:])}
    host = build_model({**spec, "output_size": ds.num_classes, "dtype": "float32"}, seed=SEED)
    model = torch_model(host)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(SEED)

    def accuracy(x: torch.Tensor, t: torch.Tensor) -> float:
        model.eval()
        with torch.inference_mode():
            correct = sum(
                int((model(x[i : i + 500]).argmax(1) == t[i : i + 500]).sum())
                for i in range(0, x.shape[0], 500)
            )
        return correct / x.shape[0]

    start = time.perf_counter()
    N = x_train.shape[0]
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(N, generator=gen)
        total = torch.zeros(())
        for s in range(0, N, BATCH):
            idx = perm[s : s + BATCH]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_train[idx]), t_train[idx])
            loss.backward()
            opt.step()
            total += loss.detach()
        line = f"epoch {epoch + 1}/{args.epochs} loss {float(total) / -(-N // BATCH):.4f}"
        if args.torch_epoch_eval:
            tr = accuracy(x_train[:EVAL_SAMPLES], t_train[:EVAL_SAMPLES])
            te = accuracy(x_test[:EVAL_SAMPLES], t_test[:EVAL_SAMPLES])
            line += f" train acc {tr:.4f} test acc {te:.4f}"
        print(line, flush=True)
    seconds = time.perf_counter() - start  # the span of history.json's "seconds"
    test_acc = accuracy(x_test, t_test)
    result = {
        "test_acc": test_acc,
        "train_seconds": seconds,
        "threads": f"torch {torch.get_num_threads()}; "
        + ", ".join(sorted(f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info())),
    }
    if limits is not None:
        limits.restore_original_limits()
    print(RESULT_TAG + json.dumps(result), flush=True)


# -- the runs -----------------------------------------------------------------------------------


def command(side: str, args: argparse.Namespace, threads: str, out: Path) -> list[str]:
    common = ["--model", args.model, "--dataset", args.dataset, "--epochs", str(args.epochs)]
    if args.data_dir is not None:
        common += ["--data-dir", str(args.data_dir)]
    if args.train_size is not None:
        common += ["--train-size", str(args.train_size)]
    if side == "xpcnn":
        cmd = [sys.executable, "-m", "xpcnn", "train", *common, "--no-progress", "--out", str(out)]
        return cmd + ([] if threads == "default" else ["--threads", threads])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_torch-child", *common]
    cmd += ["--threads", threads]
    return cmd + (["--torch-epoch-eval"] if args.torch_epoch_eval else [])


def run_once(side: str, args: argparse.Namespace, threads: str) -> dict[str, Any]:
    """One timed process; its wall seconds, accuracy, threads and own training time."""
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        cmd = command(side, args, threads, Path(tmp))
        before = load()
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=_child_env(), cwd=tmp, check=False
        )
        wall = time.perf_counter() - t0
        after = load()
        if proc.returncode != 0:
            sys.exit(
                f"bench_e2e: {side} run failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                f"{proc.stderr[-3000:]}"
            )
        rec: dict[str, Any] = {"wall_seconds": wall, "load_before": before, "load_after": after}
        if side == "xpcnn":
            hist = json.loads((Path(tmp) / "history.json").read_text())
            rec["test_acc"] = hist["final_test_accuracy"]
            rec["train_seconds"] = hist["seconds"]
            m = re.search(r"^threads: (.*)$", proc.stderr, re.M)
            rec["threads"] = m.group(1) if m else "unknown"
        else:
            line = next(s for s in proc.stdout.splitlines() if s.startswith(RESULT_TAG))
            rec.update(json.loads(line[len(RESULT_TAG) :]))
    return rec


def bench(args: argparse.Namespace) -> dict[str, Any]:
    settings = [s.strip() for s in args.threads.split(",") if s.strip()]
    for s in settings:
        if s != "default" and not (s.isdigit() and int(s) > 0):
            sys.exit(f"bench_e2e: --threads {s!r}: use 'default' or a positive integer")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        s: {side: [] for side in SIDES} for s in settings
    }
    load_start = load()
    for r in range(args.repeats):
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        for s in settings:
            for side in order:
                rec = run_once(side, args, s)
                runs[s][side].append(rec)
                print(
                    f"  repeat {r + 1}/{args.repeats} threads={s:<7} {side:<5} "
                    f"{rec['wall_seconds']:7.2f} s wall ({rec['train_seconds']:.2f} s training)  "
                    f"acc {rec['test_acc']:.4f}  [{rec['threads']}]  "
                    f"load {rec['load_before'][0]}->{rec['load_after'][0]}",
                    file=sys.stderr,
                    flush=True,
                )
    summary = {}
    for s in settings:
        row: dict[str, Any] = {}
        for side in SIDES:
            recs = runs[s][side]
            row[side] = {
                "median_wall_seconds": statistics.median(r["wall_seconds"] for r in recs),
                "median_train_seconds": statistics.median(r["train_seconds"] for r in recs),
                "test_acc": [r["test_acc"] for r in recs],
                "threads": sorted({r["threads"] for r in recs}),
            }
        row["speed_xpcnn_over_torch"] = (
            row["torch"]["median_wall_seconds"] / row["xpcnn"]["median_wall_seconds"]
        )
        row["loop_speed_xpcnn_over_torch"] = (
            row["torch"]["median_train_seconds"] / row["xpcnn"]["median_train_seconds"]
        )
        summary[s] = row
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("json", "_torch_child")
        },
        "load_start": load_start,
        "load_end": load(),
        "runs": runs,
        "summary": summary,
    }


def report(res: dict[str, Any]) -> None:
    c = res["config"]
    print(
        f"end to end: {c['model']} on {c['dataset']}, {c['epochs']} epoch(s), "
        f"train size {c['train_size'] or 'all'}, {c['repeats']} repeat(s); "
        f"{res['cpu_count']} CPUs, load {res['load_start']} -> {res['load_end']}"
    )
    print(
        f"{'threads':<8} {'side':<6} {'wall s (each)':<28} {'median':>8} {'train s':>8} "
        f"{'test acc':<16} {'speed (loop)':>14}  threads used"
    )
    for s, row in res["summary"].items():
        for side in SIDES:
            r = row[side]
            each = " ".join(f"{x['wall_seconds']:.2f}" for x in res["runs"][s][side])
            acc = " ".join(f"{a:.4f}" for a in r["test_acc"])
            speed = (
                f"{row['speed_xpcnn_over_torch']:.2f}x ({row['loop_speed_xpcnn_over_torch']:.2f}x)"
                if side == "xpcnn"
                else ""
            )
            print(
                f"{s:<8} {side:<6} {each:<28} {r['median_wall_seconds']:8.2f} "
                f"{r['median_train_seconds']:8.2f} {acc:<16} {speed:>14}  {' | '.join(r['threads'])}"
            )
    print(
        "speed = torch median wall / xpcnn median wall (above 1: xpcnn faster); "
        "(loop) the same for train s"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("simple", "deep"), default="simple")
    p.add_argument("--dataset", choices=DATASETS, default="mnist-sample")
    p.add_argument("--data-dir", type=Path, help="folder with the IDX files (e.g. ../shared/data)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-size", type=int, help="train on the first N images (default all)")
    p.add_argument("--repeats", type=int, default=3, help="runs per side and thread setting")
    p.add_argument(
        "--threads",
        default="default,1",
        help="comma-separated settings, each 'default' or N, run for both sides (default: default,1)",
    )
    p.add_argument(
        "--torch-epoch-eval",
        action="store_true",
        help="the torch script also evaluates 10,000 train and test images per epoch, like the CLI",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--_torch-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.data_dir is not None:
        args.data_dir = args.data_dir.resolve()  # the children run in a temporary folder
    return args


def main() -> None:
    args = parse_args()
    if args._torch_child:
        torch_child(args)
        return
    res = bench(args)
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
