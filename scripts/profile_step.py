"""Where the time of one training step goes, op by op (SimpleConvNet by default).

Usage (from the repository root)::

    python scripts/profile_step.py                 # NumPy, fast paths on
    python scripts/profile_step.py --generic       # NumPy, generic array-API path only
    python scripts/profile_step.py --compare       # both, interleaved, in one run
    python scripts/profile_step.py --backend torch # xpcnn on torch tensors (array API)
    python scripts/profile_step.py --cprofile      # cProfile, aggregated by function
    python scripts/profile_step.py --model deep    # DeepConvNet
    python scripts/profile_step.py --backend cupy  # CuPy on the GPU (synchronised per op)

Method: the functions the layers call (``xpcnn.ops.conv2d_forward``, ``im2col``,
``Adam.update``, ...) and the layers' ``backward`` methods (each runs its op's
``cache.backward``, whichever path made the cache) are replaced by timing wrappers
(``time.perf_counter``). Each row is the function's *self* time: its inclusive
time minus the time of the instrumented functions it called, so on the
generic path ``conv2d_forward`` (self) is the GEMM + bias without ``im2col``;
the NumPy fast convolution unfolds block by block inside its GEMM loop, so its
rows include its im2col and col2im. "(glue)" is
the rest of the step (Python between layers, the loss bookkeeping). Numbers
are milliseconds per step, means over the timed steps (means add up, so the
rows sum to the step total); with ``--compare``, the median of those means
over interleaved rounds. ``--generic`` / the "generic" column switch off every
fast path (``xpcnn._fast.enabled(False)``): the code before the fast paths.
The load average is printed because the CPU is shared; ``--threads 1`` keeps
BLAS on one thread (through threadpoolctl), which is far steadier under load.
On ``--backend cupy`` every wrapper synchronises the device before it starts
and stops its clock, so each row is the op's launch overhead plus its GPU
time; the synchronisations serialise CPU and GPU, so the profiled step is
slower than an unprofiled one (printed beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import os
import pstats
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import xpcnn.ops as ops_pkg
import xpcnn.ops.conv as conv_mod
from xpcnn import cpu_threads, layers, optim
from xpcnn.models import build_model
from xpcnn.models.sequential import _ReluMaxPool

# (module or class, attribute, row label). Package-level names are what the layers
# call; conv-module names are what conv2d_* call inside; a layer class's backward
# runs its op's cache.backward (the op's backward, generic or fast).
TARGETS: list[tuple[Any, str, str]] = [
    # The NumPy fast convolution unfolds and folds inside its blocked GEMMs, so
    # its conv rows include its im2col / col2im; the generic path's are separate.
    (ops_pkg, "conv2d_forward", "conv fwd (self: GEMM + bias; fast: + im2col)"),
    # Sequential runs each Convolution -> ReLU pair as this one op; its backward is the
    # Convolution's (the ReLU's mask applied inside)
    (ops_pkg, "conv2d_relu_forward", "conv + relu fwd"),
    (conv_mod, "im2col", "im2col"),
    (
        layers.Convolution,
        "backward",
        "conv (+ relu) bwd (self: GEMMs + db; fast: + im2col, col2im)",
    ),
    (conv_mod, "col2im", "col2im"),
    (ops_pkg, "relu_forward", "relu fwd"),
    (layers.Relu, "backward", "relu bwd"),
    (ops_pkg, "max_pool2d_forward", "max pool fwd"),
    (layers.Pooling, "backward", "max pool bwd"),
    # Sequential runs each ReLU -> max pooling pair as this one op
    (ops_pkg, "relu_max_pool2d_forward", "relu + max pool fwd"),
    (_ReluMaxPool, "backward", "relu + max pool bwd"),
    (ops_pkg, "affine_forward", "affine fwd (GEMM)"),
    (layers.Affine, "backward", "affine bwd (2 GEMMs + db)"),
    (ops_pkg, "softmax_cross_entropy_forward", "softmax+CE fwd"),
    (layers.SoftmaxWithLoss, "backward", "softmax+CE bwd"),
    (next(c for c in optim.Adam.__mro__ if "update" in c.__dict__), "update", "Adam update"),
]
GLUE = "(glue, unattributed)"


class Timers:
    """Inclusive and self time per label; nesting is tracked with a stack."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync or (lambda: None)  # device synchronisation (GPU backends)
        self.self_time: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[float] = []  # time spent in children of each open frame

    def wrap(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(0.0)
            self.sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                dt = time.perf_counter() - t0
                children = self._stack.pop()
                self.self_time[label] += dt - children
                self.calls[label] += 1
                if self._stack:
                    self._stack[-1] += dt

        return timed

    def reset(self) -> None:
        self.self_time.clear()
        self.calls.clear()


@contextlib.contextmanager
def instrumented(timers: Timers) -> Iterator[None]:
    """Swap every target for its timing wrapper; restore them on exit."""
    saved = []
    for owner, attr, label in TARGETS:
        # a class's own method, or one it inherits (Layer.backward): the wrapper goes on owner
        own = isinstance(owner, type) and attr in owner.__dict__
        original = owner.__dict__[attr] if own else getattr(owner, attr)
        saved.append((owner, attr, original, own or not isinstance(owner, type)))
        setattr(owner, attr, timers.wrap(original, label))
    try:
        yield
    finally:
        for owner, attr, original, own in reversed(saved):
            if own:
                setattr(owner, attr, original)
            else:
                delattr(owner, attr)


@contextlib.contextmanager
def fast_paths(enabled: bool) -> Iterator[None]:
    """Switch xpcnn's fast paths on or off (no-op before they existed)."""
    try:
        from xpcnn import _fast
    except ImportError:
        yield
        return
    with _fast.enabled(enabled):
        yield


def make_step(
    backend: str, batch: int, model: str = "simple", seed: int = 0
) -> tuple[Callable[[], None], Any]:
    """A closure running one training step (forward, backward, Adam) on fixed data."""
    rng = np.random.default_rng(seed)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    t = rng.integers(0, 10, batch)
    device: Any = "cpu"
    if backend == "cupy":
        device = "cuda"
    elif backend == "torch":
        import array_api_compat.torch as torch_xp

        from xpcnn.backend import Device

        device = Device("torch", torch_xp, "cpu")
    net = build_model({"model": model}, seed=seed, device=device)
    x, t = net.device.asarray(x), net.device.asarray(t)
    opt = optim.Adam(lr=0.001)

    def step() -> None:
        grads = net.gradient(x, t)
        opt.update(net.params, grads)

    return step, net


def device_sync(backend: str) -> Callable[[], None] | None:
    """A function that waits for the device, for GPU backends; None on the CPU."""
    if backend != "cupy":
        return None
    import cupy

    return lambda: cupy.cuda.Device().synchronize()


def profile(
    step: Callable[[], None],
    steps: int,
    warmup: int,
    generic: bool,
    sync: Callable[[], None] | None = None,
) -> tuple[dict[str, float], float, dict[str, int]]:
    """Mean self time per label and mean step time (seconds), per step."""
    timers = Timers(sync)
    per_step: dict[str, list[float]] = defaultdict(list)
    totals = []
    with fast_paths(not generic), instrumented(timers):
        for _ in range(warmup):
            step()
        for _ in range(steps):
            timers.reset()
            timers.sync()
            t0 = time.perf_counter()
            step()
            timers.sync()
            totals.append(time.perf_counter() - t0)
            for label, v in timers.self_time.items():
                per_step[label].append(v)
            per_step[GLUE].append(totals[-1] - sum(timers.self_time.values()))
        calls = dict(timers.calls)
    # Means, not medians: means add up, so the rows sum to the step total.
    mean = {label: float(np.mean(v)) for label, v in per_step.items()}
    return mean, float(np.mean(totals)), calls


def table(results: dict[str, tuple[dict[str, float], float, dict[str, int]]]) -> str:
    """A Markdown table: one row per op, two columns (ms, %) per configuration."""
    labels: list[str] = []
    for med, _, _ in results.values():
        labels.extend(k for k in med if k not in labels)
    names = list(results)
    head = "| op | calls | " + " | ".join(f"{n} ms | {n} %" for n in names) + " |"
    sep = "|---|---:|" + "---:|---:|" * len(names)
    rows = [head, sep]
    order = sorted(
        (k for k in labels if k != GLUE), key=lambda k: -results[names[0]][0].get(k, 0.0)
    )
    order.append(GLUE)
    for label in order:
        calls = max(r[2].get(label, 0) for r in results.values())
        cells = []
        for n in names:
            med, total, _ = results[n]
            v = med.get(label)
            cells.append("-" if v is None else f"{v * 1e3:.2f}")
            cells.append("-" if v is None else f"{100 * v / total:.0f}")
        rows.append(f"| {label} | {calls or ''} | " + " | ".join(cells) + " |")
    tot = []
    for n in names:
        total = results[n][1]
        tot += [f"**{total * 1e3:.2f}**", "100"]
    rows.append("| **step total** | | " + " | ".join(tot) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=["numpy", "torch", "cupy"], default="numpy")
    p.add_argument("--model", default="simple", help="a name in xpcnn.models.MODELS")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=30, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--generic", action="store_true", help="generic array-API path only")
    p.add_argument(
        "--compare",
        action="store_true",
        help="profile the generic and the fast paths, interleaved, in one run",
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds for --compare")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads: on numpy xpcnn's own (xpcnn.cpu_threads: BLAS at one), else BLAS's "
        "(threadpoolctl) and torch's",
    )
    p.add_argument("--cprofile", action="store_true", help="cProfile aggregated by function")
    args = p.parse_args(argv)

    if args.threads is not None:
        with contextlib.suppress(ImportError):
            import torch

            torch.set_num_threads(args.threads)
        if args.backend == "numpy":  # as `xpcnn train --threads N`: N xpcnn threads, BLAS at 1
            contextlib.ExitStack().enter_context(cpu_threads(args.threads))
        else:
            with contextlib.suppress(ImportError):
                from threadpoolctl import threadpool_limits

                threadpool_limits(limits=args.threads, user_api="blas")
    step, _ = make_step(args.backend, args.batch, args.model)
    sync = device_sync(args.backend)
    print(
        f"# {args.model} training step, batch {args.batch}, float32, backend {args.backend}; "
        f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    if args.cprofile:
        with fast_paths(not args.generic):
            for _ in range(args.warmup):
                step()
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.steps):
                step()
            prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0

    if args.compare:
        runs: dict[str, list[tuple[dict[str, float], float, dict[str, int]]]] = {
            "generic": [],
            "fast": [],
        }
        for _ in range(args.rounds):  # interleave: contention hits both alike
            for name in runs:
                runs[name].append(profile(step, args.steps, args.warmup, name == "generic", sync))
        results = {}
        for name, rs in runs.items():
            labels = {k for r in rs for k in r[0]}
            med = {k: float(np.median([r[0].get(k, 0.0) for r in rs])) for k in labels}
            results[name] = (med, float(np.median([r[1] for r in rs])), rs[0][2])
    else:
        name = "generic" if args.generic else "fast"
        results = {name: profile(step, args.steps, args.warmup, args.generic, sync)}
    print(table(results))
    if sync is not None:
        for name in results:
            with fast_paths(name != "generic"):
                sync()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                sync()
            ms = (time.perf_counter() - t0) / args.steps * 1e3
            print(f"# {name}: unprofiled step {ms:.2f} ms (no per-op synchronisation)")
    print(f"# load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
