"""Winograd F(2x2, 3x3) against the NumPy fast convolution, per DeepConvNet layer.

Usage (from the repository root)::

    PYTHONPATH=$PWD python scripts/bench_winograd.py                # batch 100, float32
    PYTHONPATH=$PWD python scripts/bench_winograd.py --reps 31 --block-kib 512 2048 8192

For each of DeepConvNet's six 3x3 stride-1 convolutions (shapes from
``BOOK_CONV_PARAMS`` on 1x28x28 input, 2x2 pooling after every second one) it
times, with one BLAS thread (threadpoolctl):

``fwd``   forward with bias: ``numpy_ops.conv2d_forward`` (im2col blocks) against
          ``winograd.conv3x3_forward``
``dW``    backward without dx (dW and db): ``numpy_ops.conv2d_backward(...,
          need_dx=False)`` against ``winograd.conv3x3_backward(..., need_dx=False)``
``dx``    the input gradient alone: numpy_ops' full backward minus its dW-only
          backward (its dx and dW share one loop) against Winograd's
          ``_input_gradient``

Both sides get the input stored CHWN, as the fast path leaves activations. All
measurements of one layer are interleaved repetition by repetition (rotating
order), so load from other processes hits them alike; the median of the
repetitions is reported, and the spread as the interquartile range over the
median. The default clock is the calling thread's CPU time (``--clock cpu``,
``time.thread_time``): with one BLAS thread all the work runs on that thread,
and on a machine loaded beyond its cores the wall clock mostly measures the
time spent waiting for a core (``--clock wall`` measures it anyway). Ratios are im2col time / Winograd time (> 1: Winograd wins). The load
average is printed before and after: on a shared machine, trust ratios more
than absolute times.

OpenBLAS's kernels: run once as is and once under ``env -u OPENBLAS_CORETYPE -u
OPENBLAS_L2_SIZE`` to compare forced and native kernels; the architecture that
threadpoolctl reports is printed.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from xpcnn._fast import numpy_ops, winograd
from xpcnn.models.deep_convnet import BOOK_CONV_PARAMS


def layer_shapes(H: int = 28) -> list[tuple[int, int, int, int]]:
    """(C, FN, H, pad) of DeepConvNet's convolutions on 1 x H x H images."""
    shapes, C = [], 1
    for k, p in enumerate(BOOK_CONV_PARAMS):
        FN, pad = p["filter_num"], p["pad"]
        shapes.append((C, FN, H, pad))
        C, H = FN, H + 2 * pad - 2
        if k % 2 == 1:
            H //= 2
    return shapes


def _median_iqr(ts: list[float]) -> tuple[float, float]:
    q1, med, q3 = np.percentile(ts, [25, 50, 75])
    return float(med), float((q3 - q1) / med)


def bench_layer(
    C: int,
    FN: int,
    H: int,
    pad: int,
    N: int,
    dtype: str,
    reps: int,
    rng: np.random.Generator,
    clock: Callable[[], float],
) -> dict[str, tuple[float, float]]:
    OH = H + 2 * pad - 2
    x = np.ascontiguousarray(rng.standard_normal((C, H, H, N), dtype=np.float64).astype(dtype))
    W = (rng.standard_normal((FN, C, 3, 3)) * np.sqrt(2 / (9 * C))).astype(dtype)
    b = rng.standard_normal(FN).astype(dtype)
    dout = rng.standard_normal((FN, OH, OH, N)).astype(dtype)
    x_nchw, dout_nchw = x.transpose(3, 0, 1, 2), dout.transpose(3, 0, 1, 2)
    _, cache = numpy_ops.conv2d_forward(x_nchw, W, b, 1, pad, OH, OH)
    Hp = H  # winograd's input gradient needs the forward input's size
    jobs: dict[str, Callable[[], object]] = {
        "fwd im2col": lambda: numpy_ops.conv2d_forward(x_nchw, W, b, 1, pad, OH, OH),
        "fwd wino": lambda: winograd.conv3x3_forward(x, W, b, pad),
        "dW im2col": lambda: numpy_ops.conv2d_backward(dout_nchw, cache, False),
        "dW wino": lambda: winograd.conv3x3_backward(dout, x, W, pad, need_dx=False),
        "bwd im2col": lambda: numpy_ops.conv2d_backward(dout_nchw, cache, True),
        "dx wino": lambda: winograd._input_gradient(dout, W, pad, Hp, Hp),
    }
    for job in jobs.values():  # warm-up
        job()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    names = list(jobs)
    for r in range(reps):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t = clock()
            jobs[k]()
            times[k].append(clock() - t)
    times["dx im2col"] = [
        a - d for a, d in zip(times["bwd im2col"], times["dW im2col"], strict=True)
    ]
    return {k: _median_iqr(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (threadpoolctl)")
    ap.add_argument(
        "--clock",
        default="cpu",
        choices=["cpu", "wall"],
        help="cpu: this thread's CPU time (needs --threads 1); wall: perf_counter",
    )
    ap.add_argument(
        "--block-kib", type=int, nargs="*", default=None, help="Winograd block sizes to try (KiB)"
    )
    args = ap.parse_args()
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, load {os.getloadavg()}, "
        f"numpy {np.__version__}, BLAS {[(i['internal_api'], i.get('architecture')) for i in blas]}, "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}, "
        f"batch {args.batch}, {args.dtype}, {args.threads} BLAS thread(s), {args.reps} reps, {args.clock} clock"
    )
    print("# ms: median (IQR/median); ratio = im2col / winograd (> 1: winograd faster)")
    rng = np.random.default_rng(0)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    blocks = args.block_kib or [winograd._BLOCK_BYTES // 1024]
    with threadpool_limits(limits=args.threads, user_api="blas"):
        for kib in blocks:
            winograd._BLOCK_BYTES = kib * 1024
            print(f"## winograd block {kib} KiB")
            head = f"{'layer (C->FN, HxW, pad)':<26}"
            for part in ("fwd", "dW", "dx"):
                head += f" | {part + ' im2col':>14} {part + ' wino':>14} {'ratio':>5}"
            print(head)
            for C, FN, H, pad in layer_shapes():
                res = bench_layer(C, FN, H, pad, args.batch, args.dtype, args.reps, rng, clock)
                row = f"{f'{C}->{FN}, {H}x{H}, pad {pad}':<26}"
                for part in ("fwd", "dW", "dx"):
                    (a, sa), (w, sw) = res[f"{part} im2col"], res[f"{part} wino"]
                    row += f" | {a * 1e3:7.2f} ({sa:3.0%}) {w * 1e3:7.2f} ({sw:3.0%}) {a / w:5.2f}"
                print(row, flush=True)
    print(f"# done {time.strftime('%H:%M:%S', time.gmtime())} UTC, load {os.getloadavg()}")


if __name__ == "__main__":
    main()
