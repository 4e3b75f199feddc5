"""The convolution gate: xpcnn's convolution layers against PyTorch's, layer by layer.

For each 3x3 layer of DeepConvNet (and SimpleConvNet's 5x5 one), batch 100, float32,
one thread on both sides, in one run with interleaved repeats: GFLOP/s of the forward
pass, the filter gradient (dW, db) and the input gradient (dx), for

* the compiled kernels of each instruction set this CPU runs (``xpcnn._fast._conv``;
  Winograd F(2x2, 3x3) where it applies, and with ``--direct`` also without it),
* the NumPy fast path's blocked GEMMs (``XPCNN_ISA=none``: OpenBLAS),
* ``torch.nn.functional.conv2d`` and its autograd backward,

beside the ceilings measured in the same run: a 1024^3 SGEMM in OpenBLAS and in
PyTorch, one thread. Inputs are stored as the fast path stores activations ((C, H,
W, N) in memory). The forward pass's time includes its padding copy and the
filters' packing; dx is the backward pass's time less the dW-only backward's.

Usage (from the repository root)::

    python scripts/bench_conv.py                  # every layer, every path
    python scripts/bench_conv.py --layers 64-64-8 --repeats 9
    python scripts/bench_conv.py --json conv.json
    python scripts/bench_conv.py --direct         # also with Winograd off
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import xpcnn
from xpcnn._fast import compiled
from xpcnn.ops import conv2d_forward

# name -> (C, FN, H, filter, pad): DeepConvNet's six layers, SimpleConvNet's one
LAYERS = {
    "1-16-28": (1, 16, 28, 3, 1),
    "16-16-28": (16, 16, 28, 3, 1),
    "16-32-14": (16, 32, 14, 3, 1),
    "32-32-14": (32, 32, 14, 3, 2),
    "32-64-8": (32, 64, 8, 3, 1),
    "64-64-8": (64, 64, 8, 3, 1),
    "simple-1-30-28": (1, 30, 28, 5, 0),
}


def seconds(fn: Callable[[], object], target: float = 0.05) -> float:
    """Seconds per call: the mean of a block of calls lasting about ``target``."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    n = max(1, int(target / once))
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def chwn(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)


def xpcnn_case(x, w, b, dout, pad, isa, winograd=True):
    """Three timers (forward, dW, dx) for xpcnn with instruction set ``isa`` (None:
    the NumPy GEMM path), Winograd allowed where it applies or not."""

    @contextlib.contextmanager
    def kernels():
        with compiled.using(isa), compiled.winograd(winograd):
            yield

    def forward():
        with kernels():
            return conv2d_forward(x, w, b, 1, pad)

    _, cache = forward()
    with kernels():
        cache.backward(dout, need_dx=False)

    def dW():
        with kernels():
            return cache.backward(dout, need_dx=False)

    def both():
        with kernels():
            return cache.backward(dout, need_dx=True)

    return forward, dW, both


def _isa_and_winograd(path: str | None) -> tuple[str | None, bool]:
    """ "avx2" -> ("avx2", True); "avx2-direct" -> ("avx2", False); None -> (None, True)."""
    if path is not None and path.endswith("-direct"):
        return path.removesuffix("-direct"), False
    return path, True


def torch_case(x, w, b, dout, pad):
    xt = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
    wt = torch.from_numpy(w).requires_grad_(True)
    bt = torch.from_numpy(b).requires_grad_(True)
    dt = torch.from_numpy(np.ascontiguousarray(dout))
    xw = torch.from_numpy(np.ascontiguousarray(x))  # no input gradient: dW only

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(xt, wt, bt, padding=pad)

    def dW():
        torch.nn.functional.conv2d(xw, wt, bt, padding=pad).backward(dt)

    def both():
        torch.nn.functional.conv2d(xt, wt, bt, padding=pad).backward(dt)

    return forward, dW, both


def peak() -> dict[str, float]:
    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    t = torch.from_numpy(a)
    flops = 2 * 1024**3
    return {
        "sgemm_openblas": flops / min(seconds(lambda: a @ a) for _ in range(5)) / 1e9,
        "sgemm_torch": flops / min(seconds(lambda: t @ t) for _ in range(5)) / 1e9,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5, help="interleaved timings (median)")
    p.add_argument("--json", help="write the numbers here")
    p.add_argument(
        "--direct", action="store_true", help="also each ISA with Winograd off (XPCNN_WINOGRAD=0)"
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    threadpool_limits(1)
    rng = np.random.default_rng(0)
    ceilings = peak()
    print(
        f"# bench_conv {time.strftime('%Y-%m-%dT%H:%M:%S%z')}  load {os.getloadavg()}  "
        f"one thread each; batch {args.batch}; float32"
    )
    print(
        f"# xpcnn {xpcnn.__version__}; convolution: {compiled.status()}; torch "
        f"{torch.__version__} ({torch.backends.cpu.get_cpu_capability()})"
    )
    print(
        f"# ceilings: SGEMM 1024^3 OpenBLAS {ceilings['sgemm_openblas']:.0f} GFLOP/s, "
        f"PyTorch {ceilings['sgemm_torch']:.0f} GFLOP/s"
    )
    direct = [f"{i}-direct" for i in compiled.isas()] if args.direct else []
    paths = [*compiled.isas(), *direct, None, "torch"]
    names = {None: "numpy-gemm"}
    print(
        "| layer | path | fwd GFLOP/s | dW GFLOP/s | dx GFLOP/s | fwd ms | bwd ms | bwd x torch |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for layer in args.layers:
        C, FN, H, F, pad = LAYERS[layer]
        OH = H + 2 * pad - F + 1
        x = chwn(rng.standard_normal((args.batch, C, H, H)).astype(np.float32))
        w = (rng.standard_normal((FN, C, F, F)) * 0.1).astype(np.float32)
        b = rng.standard_normal(FN).astype(np.float32)
        dout = chwn(rng.standard_normal((args.batch, FN, OH, OH)).astype(np.float32))
        flops = 2 * args.batch * FN * C * F * F * OH * OH
        cases = {
            path: (
                torch_case(x, w, b, dout, pad)
                if path == "torch"
                else xpcnn_case(x, w, b, dout, pad, *_isa_and_winograd(path))
            )
            for path in paths
        }
        times: dict[object, list[list[float]]] = {path: [[], [], []] for path in paths}
        for _ in range(args.repeats):
            for path in paths:
                for k, fn in enumerate(cases[path]):
                    times[path][k].append(seconds(fn))
        med = {path: [statistics.median(v) for v in times[path]] for path in paths}
        for path in paths:
            fwd, dW, both = med[path]
            dx = max(both - dW, 1e-9)
            row = {
                "layer": layer,
                "path": names.get(path, path),
                "fwd_gflops": flops / fwd / 1e9,
                "dW_gflops": flops / dW / 1e9,
                "dx_gflops": flops / dx / 1e9,
                "fwd_ms": fwd * 1e3,
                "bwd_ms": both * 1e3,
                "bwd_x_torch": med["torch"][2] / both,
            }
            rows.append(row)
            print(
                f"| {layer} | {row['path']} | {row['fwd_gflops']:.0f} | {row['dW_gflops']:.0f} | "
                f"{row['dx_gflops']:.0f} | {row['fwd_ms']:.2f} | {row['bwd_ms']:.2f} | "
                f"{row['bwd_x_torch']:.2f} |"
            )
    print(f"# load after {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ceilings": ceilings, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
