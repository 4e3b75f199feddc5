"""The compiled training step (issue 24): speed, compile time and its payback, equality
with the eager step, and training with dropout.

Usage (from the repository root)::

    python scripts/bench_compile.py                      # speed: SimpleConvNet and DeepConvNet
    python scripts/bench_compile.py --models simple --blocks 9
    python scripts/bench_compile.py --check              # float64: 20 compiled steps vs eager
    python scripts/bench_compile.py --accuracy --epochs 3   # DeepConvNet, dropout, bundled sample
    python scripts/bench_compile.py --torch              # torch.compile of the same step (trial)

Speed: one training step (forward, backward, Adam) on a float32 batch of 100
synthetic images, for ``numpy`` (xpcnn's NumPy fast path: compiled C kernels),
``torch`` (the generic code on PyTorch CPU tensors, eager), ``jax-eager`` (the
generic code on JAX arrays, one dispatch per operation) and ``jax-compiled``
(:class:`xpcnn.train.compiled.CompiledUpdater`: one ``jax.jit`` function). Every
variant uses its library's default threads, or ``--threads N`` each (xpcnn's own
and BLAS's through :func:`xpcnn.backend.thread_limits`, PyTorch's intra-op threads,
and for ``--threads 1`` XLA's: ``XLA_FLAGS`` set before JAX starts); they are
printed first. Each variant runs alone in a fresh process, as a user runs it (sharing
one process, libraries whose idle threads spin, OpenMP and OpenBLAS, slowed the next
one down, and one library's allocations the other's: the same step measured 20-29 ms
from run to run). A round runs every variant once, in rotating order, so a burst of
load from other processes hits them alike; a variant's time in a round is the median
of its blocks of steps, its time overall the median over rounds, and each ratio is the
median of the per-round ratios (the range over rounds is printed too). The compiled
variant's first step (trace + XLA compile + run) less a step is its compile time.
Payback: an epoch of 60,000 images (600 steps) compiled costs the compile time once
more than the steps; the compile pays back after ``compile / (eager - compiled)``
steps.

``--malloc tuned`` runs every variant with glibc's allocator keeping large blocks on
the heap (``MALLOC_MMAP_THRESHOLD_``): eager JAX allocates an array per operation,
and with glibc's defaults in a fresh process each large one is a new mapping whose
pages fault in (measured: eager SimpleConvNet 58 ms as it comes, 40 ms tuned; the
compiled step, which reuses its buffers, 19.5 ms either way). Both are reported.

``--check``: float64 (``jax_enable_x64``), SimpleConvNet, no dropout, 20 Adam steps
eager and compiled from the same weights on the same batches: the largest
parameter difference (the issue's target: 1e-9).

``--accuracy``: DeepConvNet (dropout 0.5) on the bundled MNIST sample (5,000 training
images, 1,000 test) for ``--epochs`` epochs, eager and compiled, for each of ``--seeds``
(the masks differ between the two paths, so the accuracies are compared over seeds);
then compiled again with the first seed (the same parameters expected).

``--torch``: ``torch.compile`` of the same step (``gradients`` then ``apply``) on
PyTorch CPU tensors against the eager torch step; its compile time and graph breaks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "--threads" in sys.argv and sys.argv[sys.argv.index("--threads") + 1 :][:1] == ["1"]:
    # XLA's thread pool can only be limited before JAX starts
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    )

from xpcnn.backend import resolve_device, thread_limits, thread_summary, to_numpy
from xpcnn.models import DeepConvNet, SimpleConvNet
from xpcnn.optim import Adam
from xpcnn.train.batches import Batch
from xpcnn.train.compiled import CompiledUpdater
from xpcnn.train.updater import StandardUpdater

MODELS = {"simple": SimpleConvNet, "deep": DeepConvNet}
BATCH = 100
THREADS: int | None = None  # --threads: each library's threads (None: its default)
MALLOC = "default"  # --malloc
# glibc: large blocks from the heap, not a fresh mmap (and page faults) per array
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def _sync(loss: Any) -> None:
    if hasattr(loss, "block_until_ready"):
        loss.block_until_ready()


VARIANTS = [
    ("numpy", "numpy", StandardUpdater),
    ("torch", "torch", StandardUpdater),
    ("jax-eager", "jax", StandardUpdater),
    ("jax-compiled", "jax", CompiledUpdater),
]


PER_BLOCK = {  # steps per timed block, per model
    "simple": {"numpy": 8, "torch": 4, "jax-eager": 4, "jax-compiled": 8},
    "deep": {"numpy": 4, "torch": 2, "jax-eager": 1, "jax-compiled": 2},
}
CHILD_BLOCKS = 5


def _updater(model: str, variant: str, x: np.ndarray, t: np.ndarray) -> Any:
    backend, cls = {name: (b, c) for name, b, c in VARIANTS}[variant]
    dev = resolve_device("cpu", backend)
    net = MODELS[model](dtype="float32", device=dev, seed=0)
    return cls(net, Adam(), dev.asarray(x), dev.asarray(t))


def _steps(up: Any, n: int, start: int = 0) -> float:
    """Seconds per step over ``n`` steps (under ``--threads``, if given)."""
    with thread_limits(THREADS, up.network.device):
        return _timed(up, n, start)


def _timed(up: Any, n: int, start: int) -> float:
    t0 = time.perf_counter()
    for i in range(start, start + n):
        rows = np.arange(i * BATCH, (i + 1) * BATCH) % up.x_train.shape[0]
        loss = up.update(Batch(i + 1, rows, BATCH))
    _sync(loss)
    return (time.perf_counter() - t0) / n


def child(model: str, variant: str) -> None:
    """One variant alone in this process, as a user runs it: prints JSON with the first
    step's seconds (the compile, for the compiled one) and each block's seconds per step."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1000, 1, 28, 28), dtype=np.uint8)
    t = rng.integers(0, 10, 1000)
    up = _updater(model, variant, x, t)
    first = _steps(up, 1)
    _steps(up, 2)  # warm-up
    per = PER_BLOCK[model][variant]
    blocks = [_steps(up, per, start=3 + b * per) for b in range(CHILD_BLOCKS)]
    print(json.dumps({"first": first, "blocks": blocks}))


def _run_child(model: str, variant: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", variant, "--models", model]
    if THREADS is not None:
        cmd += ["--threads", str(THREADS)]
    env = dict(os.environ, **(TUNED_MALLOC if MALLOC == "tuned" else {}))
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode:
        raise SystemExit(f"{variant} ({model}) failed:\n{out.stderr[-3000:]}")
    return cast(dict[str, Any], json.loads(out.stdout.strip().splitlines()[-1]))


def speed(model: str, rounds: int) -> dict[str, Any]:
    names = [name for name, _, _ in VARIANTS]
    times: dict[str, list[float]] = {k: [] for k in names}  # per round: median block
    firsts: list[float] = []
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:  # rotating order
            res = _run_child(model, k)
            times[k].append(statistics.median(res["blocks"]))
            if k == "jax-compiled":
                firsts.append(res["first"] - times[k][-1])
    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    compile_s = statistics.median(firsts)
    saved = med["jax-eager"] - med["jax-compiled"]
    return {
        "model": model,
        "ms": {k: 1e3 * v for k, v in med.items()},
        "compiled_vs_eager": ratio("jax-eager", "jax-compiled"),
        "compiled_vs_eager_range": [
            min(e / c for e, c in zip(times["jax-eager"], times["jax-compiled"], strict=True)),
            max(e / c for e, c in zip(times["jax-eager"], times["jax-compiled"], strict=True)),
        ],
        "compiled_vs_numpy": ratio("numpy", "jax-compiled"),
        "compiled_vs_torch": ratio("torch", "jax-compiled"),
        "numpy_vs_torch": ratio("torch", "numpy"),
        "compile_s": compile_s,
        "payback_steps": compile_s / saved if saved > 0 else float("inf"),
        "epoch_s": {
            "jax-eager": 600 * med["jax-eager"],
            "jax-compiled": compile_s + 600 * med["jax-compiled"],
            "numpy": 600 * med["numpy"],
            "torch": 600 * med["torch"],
        },
    }


def report_speed(r: dict[str, Any]) -> None:
    ms = r["ms"]
    print(
        f"{r['model']:>6}: " + "  ".join(f"{k} {v:.1f} ms" for k, v in ms.items())
        + f" per step (batch {BATCH})"
    )  # fmt: skip
    print(
        f"        compiled JAX vs eager JAX {r['compiled_vs_eager']:.2f}x (rounds "
        f"{r['compiled_vs_eager_range'][0]:.2f}-{r['compiled_vs_eager_range'][1]:.2f}), vs NumPy fast path "
        f"{r['compiled_vs_numpy']:.2f}x, vs torch {r['compiled_vs_torch']:.2f}x (above 1: "
        f"compiled faster); NumPy vs torch {r['numpy_vs_torch']:.2f}x"
    )
    e = r["epoch_s"]
    print(
        f"        compile {r['compile_s']:.1f} s, paid back after {r['payback_steps']:.0f} steps; "
        f"a 600-step epoch: eager {e['jax-eager']:.0f} s, compiled {e['jax-compiled']:.0f} s "
        f"(compile included), numpy {e['numpy']:.0f} s, torch {e['torch']:.0f} s"
    )


def check_float64(n: int = 20) -> float:
    import jax

    jax.config.update("jax_enable_x64", True)
    dev = resolve_device("cpu", "jax")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n * BATCH, 1, 28, 28), dtype=np.uint8)
    t = rng.integers(0, 10, n * BATCH)
    params = []
    for cls in (StandardUpdater, CompiledUpdater):
        net = SimpleConvNet(dtype="float64", device=dev, seed=0)
        up = cls(net, Adam(), dev.asarray(x), dev.asarray(t))
        _steps(up, n)
        params.append({k: to_numpy(v) for k, v in net.params.items()})
    diff = max(float(np.max(np.abs(params[0][k] - params[1][k]))) for k in params[0])
    print(f"float64, SimpleConvNet, {n} Adam steps: max |compiled - eager| = {diff:.2e}")
    return diff


def accuracy(epochs: int, seeds: list[int]) -> None:
    from xpcnn.data import load_dataset
    from xpcnn.train import Trainer

    d = load_dataset("mnist-sample")
    dev = resolve_device("cpu", "jax")
    runs = [(mode, seed) for seed in seeds for mode in ("eager", "compiled")]
    runs.append(("compiled again", seeds[0]))
    params, final = {}, {}
    for mode, seed in runs:
        net = DeepConvNet(dtype="float32", device=dev, seed=seed)
        tr = Trainer(
            net, d.x_train, d.t_train, d.x_test, d.t_test, epochs=epochs, verbose=False,
            seed=seed, compile=mode != "eager", evaluate_sample_num_per_epoch=1000,
        )  # fmt: skip
        t0 = time.perf_counter()
        tr.train()
        seconds = time.perf_counter() - t0
        params[mode, seed] = {k: to_numpy(v) for k, v in net.params.items()}
        final[mode, seed] = tr.test_acc_list[-1]
        accs = " ".join(f"{a:.3f}" for a in tr.test_acc_list)
        print(f"DeepConvNet {mode:<14} seed {seed}: test acc per epoch {accs}  ({seconds:.0f} s)")
    for mode in ("eager", "compiled"):
        accs = [final[mode, s] for s in seeds]
        print(f"{mode}: final test accuracy mean {np.mean(accs):.3f} (seeds {seeds}: {accs})")
    p0 = params["compiled", seeds[0]]
    same = all(np.array_equal(p0[k], params["compiled again", seeds[0]][k]) for k in p0)
    print(f"same seed, same parameters: {same}")
    if len(seeds) > 1:
        p1 = params["compiled", seeds[1]]
        print(
            f"another seed, other parameters: {any(not np.array_equal(p0[k], p1[k]) for k in p0)}"
        )


def torch_trial(blocks: int, threads: int) -> None:
    import torch
    import torch._dynamo

    from xpcnn import _fast

    torch.set_num_threads(threads)  # spinning intra-op threads collapse on a busy machine
    dev = resolve_device("cpu", "torch")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1000, 1, 28, 28), dtype=np.uint8)
    t = rng.integers(0, 10, 1000)
    net = SimpleConvNet(dtype="float32", device=dev, seed=0)
    up = StandardUpdater(net, Adam(), dev.asarray(x), dev.asarray(t))
    xb, tb = up.take(np.arange(BATCH))

    def step(xb: Any, tb: Any) -> Any:
        grads, loss = up.gradients(xb, tb)
        up.apply(grads)
        return loss

    # The fast-path switch is a ContextVar, which dynamo cannot trace (a graph break per
    # op); on torch the seam has no fast path, so ask it nothing during the trial.
    original = _fast.lookup
    _fast.lookup = lambda op, x: None  # type: ignore[assignment]
    torch._dynamo.config.recompile_limit = 64  # one recompile per parameter shape
    try:
        compiled = torch.compile(step)
        t0 = time.perf_counter()
        compiled(xb, tb)
        compile_s = time.perf_counter() - t0
        fns: dict[str, Callable[..., Any]] = {"torch-eager": step, "torch-compiled": compiled}
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(blocks):
            for k, f in fns.items():
                t0 = time.perf_counter()
                for _ in range(4):
                    f(xb, tb)
                times[k].append((time.perf_counter() - t0) / 4)
    finally:
        _fast.lookup = original
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    print(
        f"torch.compile, SimpleConvNet batch {BATCH}: compile {compile_s:.0f} s, {breaks} graph "
        f"breaks; {threads} thread(s): eager {med['torch-eager']:.1f} ms, compiled {med['torch-compiled']:.1f} ms per step"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="simple,deep", help="comma-separated: simple, deep")
    p.add_argument("--blocks", type=int, default=7, help="rounds (speed) or blocks (--torch)")
    p.add_argument(
        "--malloc", choices=["default", "tuned"], default="default",
        help="the processes' glibc allocator: as it comes, or large blocks kept on the heap",
    )  # fmt: skip
    p.add_argument("--child", help=argparse.SUPPRESS)  # one variant in its own process
    p.add_argument("--check", action="store_true", help="float64: 20 compiled steps vs eager")
    p.add_argument("--accuracy", action="store_true", help="DeepConvNet with dropout, trained")
    p.add_argument("--epochs", type=int, default=3, help="epochs of --accuracy")
    p.add_argument("--seeds", default="0,1,2", help="seeds of --accuracy (comma-separated)")
    p.add_argument("--torch", action="store_true", help="torch.compile of the same step")
    p.add_argument("--threads", type=int, help="each library's threads (--torch: 1)")
    args = p.parse_args(argv)
    global THREADS, MALLOC
    THREADS, MALLOC = args.threads, args.malloc
    if args.child:
        child(args.models, args.child)
        return
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores shared with other sessions)")
    print(f"allocator: glibc {MALLOC}" + (f" {TUNED_MALLOC}" if MALLOC == "tuned" else ""))
    if args.check:
        check_float64()
    elif args.accuracy:
        accuracy(args.epochs, [int(v) for v in args.seeds.split(",")])
    elif args.torch:
        torch_trial(args.blocks, args.threads or 1)
    else:
        for _, backend, _ in VARIANTS[:3]:
            dev = resolve_device("cpu", backend)
            with thread_limits(THREADS, dev):
                print(f"{backend}: {thread_summary(dev, THREADS)}")
        xla = "one thread" if THREADS == 1 else "every CPU the process may use"
        print(f"jax: XLA's own CPU thread pool ({xla})")
        for model in args.models.split(","):
            report_speed(speed(model, args.blocks))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
