"""Winograd F(2x2, 3x3) against the NumPy fast convolution, per DeepConvNet layer.

Winograd was measured here and lost on every layer (scripts/BENCHMARKS.md,
"Winograd F(2x2,3x3), measured"), so it is not in xpcnn; its implementation lives
in this script (below), checked against ``numpy_conv`` in float64 before timing.
The same code with its tests (``tests/test_winograd.py``: naive loops and the
generic ops within a derived rounding bound) is commit ceb05d7 on branch
``winograd`` (``xpcnn/_fast/winograd.py``).

Usage (from the repository root)::

    PYTHONPATH=$PWD python scripts/bench_winograd.py                # batch 100, float32
    PYTHONPATH=$PWD python scripts/bench_winograd.py --reps 31 --block-kib 512 2048 8192

For each of DeepConvNet's six 3x3 stride-1 convolutions (shapes from
``BOOK_CONV_PARAMS`` on 1x28x28 input, 2x2 pooling after every second one) it
times, with one BLAS thread (threadpoolctl):

``fwd``   forward with bias: ``numpy_conv.gemm_conv2d_forward`` (im2col blocks) against
          ``conv3x3_forward`` (below)
``dW``    backward without dx (dW and db): ``cache.backward(...,
          need_dx=False)`` against ``conv3x3_backward(..., need_dx=False)``
``dx``    the input gradient alone: numpy_conv' full backward minus its dW-only
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

from xpcnn._fast import numpy_conv
from xpcnn.models.deep_convnet import BOOK_CONV_PARAMS

# -- Winograd F(2x2, 3x3) (Lavin & Gray, 2016), CHWN ------------------------------------
#
# A 3x3 stride-1 cross-correlation computes each 2x2 output tile from a 4x4 input tile
# as Y = A^T [(G g G^T) * (B^T d B)] A: 16 products per tile instead of 36. Over a
# batch the 16 elementwise products are 16 GEMMs U[k] (FN, C) @ V[k] (C, tiles*N).
# Arrays are stored (C, H, W, N), batch innermost, as numpy_conv leaves activations;
# the padded input keeps even and odd columns apart so that every transform pass
# moves long contiguous runs; tiles go a few tile rows at a time (_BLOCK_BYTES).

# F(2x2, 3x3): B^T (4x4), G (4x3), A^T (2x4). Kept for the filter-side
# transforms (tiny, done in float64) and for the tests; the data-side
# transforms below are these matrices written out as additions.
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)

# Bytes of the transformed input (and of its products) per block of tile rows.
_BLOCK_BYTES = 1 << 21


def filter_transform(W: np.ndarray) -> np.ndarray:
    """``U = G W G^T`` for filters ``W`` (FN, C, 3, 3): (16, FN, C) in ``W``'s dtype,
    ``U[4*i + j]`` the (i, j) element of every transformed filter. Computed in
    float64 (two 3-term sums per element) and rounded once."""
    FN, C = W.shape[:2]
    U = (G @ W.astype(np.float64) @ G.T).transpose(2, 3, 0, 1)  # (4, 4, FN, C)
    return np.ascontiguousarray(U.reshape(16, FN, C), dtype=W.dtype)


def _tiled(x: np.ndarray, pad: int, TH: int, TW: int) -> np.ndarray:
    """``x`` (C, H, W, N) zero-padded by ``pad`` (cropped if negative) on top and
    left, and to 2*TH + 2 rows, 2*TW + 2 columns: the input of TH x TW tiles,
    stored with even and odd columns apart, (C, 2*TH + 2, 2, TW + 1, N):
    ``img[c, h, q, m]`` is padded column ``2*m + q``.

    Split so that the four column offsets of every tile in a row, ``2*tw + k``,
    are four contiguous (TW, N) runs: ``[q=0, :TW]``, ``[1, :TW]``, ``[0, 1:]``,
    ``[1, 1:]``. The transform's passes then move long runs instead of runs of N.
    """
    C, H, W, N = x.shape
    Hp = 2 * TH + 2
    img = np.zeros((C, Hp, 2, TW + 1, N), dtype=x.dtype)
    s, p = max(0, -pad), max(pad, 0)  # rows/columns of x cut off, of zeros put on
    h, w = min(H - s, Hp - p), min(W - s, 2 * TW + 2 - p)
    for q in range(2):
        first = p + (q - p) % 2  # first padded column of parity q holding x
        cols = x[:, s : s + h, first - p + s : s + w : 2]
        img[:, p : p + h, q, first // 2 : first // 2 + cols.shape[2]] = cols
    return img


def _input_transform(img: np.ndarray, t0: int, t1: int, TW: int, V: np.ndarray) -> None:
    """``V[4*i + j]`` (C, t1 - t0, TW, N) = element (i, j) of ``B^T d B`` for every
    4x4 tile ``d`` of ``img`` (:func:`_tiled`) in tile rows ``t0:t1``.

    Rows first, ``t = B^T d``: t0 = d0 - d2, t1 = d1 + d2, t2 = d2 - d1,
    t3 = d1 - d3 over the tile's four rows; then the same over columns.
    """
    R = t1 - t0
    rows = [img[:, 2 * t0 + k : 2 * t1 + k : 2] for k in range(4)]  # (C, R, 2, TW+1, N)
    t = np.empty(rows[0].shape, dtype=img.dtype)
    cols = [t[:, :, 0, :TW], t[:, :, 1, :TW], t[:, :, 0, 1:], t[:, :, 1, 1:]]  # (C, R, TW, N)
    for i in range(4):
        _b_transform(rows, i, t)
        for j in range(4):
            _b_transform(cols, j, V[4 * i + j, :, :R])


def _b_transform(d: list[np.ndarray], i: int, out: np.ndarray) -> None:
    """Row ``i`` of ``B^T d`` for the four slices ``d``, written to ``out``."""
    if i == 0:
        np.subtract(d[0], d[2], out=out)
    elif i == 1:
        np.add(d[1], d[2], out=out)
    elif i == 2:
        np.subtract(d[2], d[1], out=out)
    else:
        np.subtract(d[1], d[3], out=out)


def _a_transform(m: list[np.ndarray], out0: np.ndarray, out1: np.ndarray) -> None:
    """``A^T m`` for the four slices ``m``: out0 = m0 + m1 + m2, out1 = m1 - m2 - m3."""
    np.add(m[1], m[2], out=out0)
    np.subtract(m[1], m[2], out=out1)
    out0 += m[0]
    out1 -= m[3]


def _blocks(TH: int, row_bytes: int) -> list[tuple[int, int]]:
    """Tile-row blocks ``(t0, t1)`` of about ``_BLOCK_BYTES`` each."""
    rows = max(1, min(TH, _BLOCK_BYTES // max(1, row_bytes)))
    return [(t0, min(TH, t0 + rows)) for t0 in range(0, TH, rows)]


def _buffer(buf: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A C-contiguous array of ``shape`` on the front of the flat ``buf``."""
    return buf[: int(np.prod(shape))].reshape(shape)


def _winograd(img: np.ndarray, U: np.ndarray, b: np.ndarray | None, OH: int, OW: int) -> np.ndarray:
    """Cross-correlation of ``img`` (:func:`_tiled`) with the transformed filters
    ``U`` (16, FN, C): (FN, OH, OW, N), C-contiguous."""
    C, Hp, _, TW1, N = img.shape
    FN = U.shape[1]
    TH, TW = (Hp - 2) // 2, TW1 - 1
    even = OH == 2 * TH and OW == 2 * TW
    out = np.empty((FN, 2 * TH, 2 * TW, N), dtype=img.dtype)
    blocks = _blocks(TH, 16 * (C + FN) * TW * N * img.itemsize)
    size = blocks[0][1] * TW * N
    bufs = [np.empty(k * size, dtype=img.dtype) for k in (16 * C, 16 * FN, 8 * FN, 2 * FN)]
    for t0, t1 in blocks:
        r = t1 - t0
        V = _buffer(bufs[0], (16, C, r, TW, N))
        M = _buffer(bufs[1], (16, FN, r, TW, N))
        s = _buffer(bufs[2], (2, 4, FN, r, TW, N))
        pq = _buffer(bufs[3], (2, FN, r, TW, N))
        _input_transform(img, t0, t1, TW, V)
        np.matmul(U, V.reshape(16, C, -1), out=M.reshape(16, FN, -1))
        if b is not None:  # A^T e A is all ones for e = the (1, 1) unit: add b there
            M[5] += b[:, None, None, None]
        # Y = A^T M A: over i (tile rows) first, then over j into the strided output
        for j in range(4):
            _a_transform([M[4 * i + j] for i in range(4)], s[0, j], s[1, j])
        for a in range(2):
            sa = s[a]
            np.add(sa[1], sa[2], out=pq[0])
            np.subtract(sa[1], sa[2], out=pq[1])
            rows = out[:, 2 * t0 + a : 2 * t1 : 2]
            np.add(pq[0], sa[0], out=rows[:, :, 0::2])
            np.subtract(pq[1], sa[3], out=rows[:, :, 1::2])
    return out if even else np.ascontiguousarray(out[:, :OH, :OW])


def conv3x3_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, pad: int) -> np.ndarray:
    """3x3 stride-1 cross-correlation (the book's convolution) by Winograd F(2x2, 3x3).

    x : (C, H, W, N) CHWN, float32 or float64; W : (FN, C, 3, 3); b : (FN,) or None;
    pad : zero padding on each side (may be negative: crop).
    Returns (FN, OH, OW, N), C-contiguous, OH = H + 2*pad - 2, OW = W + 2*pad - 2.
    """
    OH, OW = x.shape[1] + 2 * pad - 2, x.shape[2] + 2 * pad - 2
    TH, TW = -(-OH // 2), -(-OW // 2)
    return _winograd(_tiled(x, pad, TH, TW), filter_transform(W), b, OH, OW)


def _input_gradient(dout: np.ndarray, W: np.ndarray, pad: int, H: int, W_: int) -> np.ndarray:
    """dx (C, H, W_, N): ``dout`` (FN, OH, OW, N) padded by 2 - pad and
    cross-correlated with the flipped filters, transposed to (C, FN, 3, 3)."""
    Wt = np.ascontiguousarray(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    TH, TW = -(-H // 2), -(-W_ // 2)
    return _winograd(_tiled(dout, 2 - pad, TH, TW), filter_transform(Wt), None, H, W_)


# Weight gradient. With a = A^T's columns, the forward pass is bilinear in the
# filter g and the tile d, so <dout, A^T[(G g G^T) * V]A> = <G^T[(A dout A^T) * V]G, g>:
# dW = G^T (sum over tiles and images of (A dout A^T) * V) G, 16 GEMMs with the long
# tiles*N axis as K. A's last row is (0, -1): its sign moves into G (``_GS``) so that
# the dout transform is g0, g0 + g1, g0 - g1, g1 (two of the four are plain views).
_GS = G * np.array([1, 1, 1, -1], dtype=np.float64)[:, None]


def _dout_transform(d: list[np.ndarray], out: list[np.ndarray]) -> None:
    """``(g0, g0 + g1, g0 - g1, g1)`` for the two slices ``d`` into ``out[1], out[2]``
    (out[0], out[3] are d's own slices)."""
    np.add(d[0], d[1], out=out[1])
    np.subtract(d[0], d[1], out=out[2])


def _weight_gradient(dout: np.ndarray, img: np.ndarray) -> np.ndarray:
    """dW (FN, C, 3, 3) from ``dout`` (FN, 2*TH, 2*TW, N) and the padded input
    ``img`` (:func:`_tiled`)."""
    C, Hp, _, TW1, N = img.shape
    FN = dout.shape[0]
    TH, TW = (Hp - 2) // 2, TW1 - 1
    blocks = _blocks(TH, 16 * (C + FN) * TW * N * img.itemsize)
    size = blocks[0][1] * TW * N
    bufs = [np.empty(k * size, dtype=img.dtype) for k in (16 * C, 16 * FN, 4 * FN)]
    P = np.zeros((16, FN, C), dtype=img.dtype)
    part = np.empty_like(P)
    for t0, t1 in blocks:
        r = t1 - t0
        V = _buffer(bufs[0], (16, C, r, TW, N))
        D = _buffer(bufs[1], (16, FN, r, TW, N))
        h = _buffer(bufs[2], (2, FN, r, 2 * TW, N))  # A dout over rows: its middle two
        _input_transform(img, t0, t1, TW, V)
        rows = [dout[:, 2 * t0 + k : 2 * t1 : 2] for k in range(2)]  # (FN, r, 2TW, N)
        hr = [rows[0], h[0], h[1], rows[1]]
        _dout_transform(rows, hr)
        for i in range(4):
            cols = [hr[i][:, :, k::2] for k in range(2)]  # (FN, r, TW, N) views
            out = [D[4 * i + j] for j in range(4)]
            np.copyto(out[0], cols[0])
            np.copyto(out[3], cols[1])
            _dout_transform(cols, out)
        np.matmul(D.reshape(16, FN, -1), V.reshape(16, C, -1).transpose(0, 2, 1), out=part)
        P += part
    P4 = P.astype(np.float64).reshape(4, 4, FN, C).transpose(2, 3, 0, 1)  # (FN, C, 4, 4)
    return (_GS.T @ P4 @ _GS).astype(img.dtype)


def conv3x3_backward(
    dout: np.ndarray, x: np.ndarray, W: np.ndarray, pad: int, need_dx: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of :func:`conv3x3_forward` by Winograd F(2x2, 3x3).

    dout : (FN, OH, OW, N) CHWN; x : the forward input (C, H, W, N); W : (FN, C, 3, 3).
    Returns dx (C, H, W, N) C-contiguous (None unless ``need_dx``), dW (FN, C, 3, 3),
    db (FN,), in dout's dtype.
    """
    FN, OH, OW, N = dout.shape
    H, W_ = x.shape[1:3]
    TH, TW = -(-OH // 2), -(-OW // 2)
    d = dout
    if (OH, OW) != (2 * TH, 2 * TW) or not dout.flags.c_contiguous:
        d = np.zeros((FN, 2 * TH, 2 * TW, N), dtype=dout.dtype)
        d[:, :OH, :OW] = dout
    dW = _weight_gradient(d, _tiled(x, pad, TH, TW))
    db = dout.sum(axis=(1, 2, 3))
    dx = _input_gradient(dout, W, pad, H, W_) if need_dx else None
    return dx, dW, db


# -- benchmark ---------------------------------------------------------------------------


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
    _, cache = numpy_conv.gemm_conv2d_forward(x_nchw, W, b, 1, pad, OH, OH)
    Hp = H  # winograd's input gradient needs the forward input's size
    jobs: dict[str, Callable[[], object]] = {
        "fwd im2col": lambda: numpy_conv.gemm_conv2d_forward(x_nchw, W, b, 1, pad, OH, OH),
        "fwd wino": lambda: conv3x3_forward(x, W, b, pad),
        "dW im2col": lambda: cache.backward(dout_nchw, need_dx=False),
        "dW wino": lambda: conv3x3_backward(dout, x, W, pad, need_dx=False),
        "bwd im2col": lambda: cache.backward(dout_nchw, need_dx=True),
        "dx wino": lambda: _input_gradient(dout, W, pad, Hp, Hp),
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


def check(rng: np.random.Generator) -> None:
    """Winograd equal to numpy_conv on every layer shape (float64, N=3), or stop."""
    for C, FN, H, pad in layer_shapes():
        OH = H + 2 * pad - 2
        x, dout = rng.standard_normal((C, H, H, 3)), rng.standard_normal((FN, OH, OH, 3))
        W, b = rng.standard_normal((FN, C, 3, 3)), rng.standard_normal(FN)
        out, cache = numpy_conv.gemm_conv2d_forward(x.transpose(3, 0, 1, 2), W, b, 1, pad, OH, OH)
        ref = (out, *cache.backward(dout.transpose(3, 0, 1, 2), need_dx=True))
        got = (conv3x3_forward(x, W, b, pad), *conv3x3_backward(dout, x, W, pad))
        for name, r, g in zip(("out", "dx", "dW", "db"), ref, got, strict=True):
            r = r.transpose(1, 2, 3, 0) if name in ("out", "dx") else r
            err = float(np.max(np.abs(g - r)) / np.max(np.abs(r)))
            if err > 1e-12:
                raise SystemExit(f"winograd {name} differs from numpy_conv by {err:.2g} (C={C})")


def main() -> None:
    global _BLOCK_BYTES
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
    blocks = args.block_kib or [_BLOCK_BYTES // 1024]
    with threadpool_limits(limits=args.threads, user_api="blas"):
        check(rng)
        for kib in blocks:
            _BLOCK_BYTES = kib * 1024
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
