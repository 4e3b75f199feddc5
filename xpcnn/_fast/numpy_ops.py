"""NumPy side of the fast-path seam (see :mod:`xpcnn._fast`).

Each op has the signature and the results of the generic op it stands in for
(the ops validate the arguments first and pass ``OH, OW``); results are equal
to the generic path's (up to the order of floating-point sums in the
convolution's GEMMs), but arrays may be stored in another memory order
(below), and each forward returns its own cache class, which owns the backward.
The facts that drive the choices (one BLAS thread, float32, batch 100):

* ``np.where`` runs a branchy loop: with an unpredictable mask (ReLU, max
  pooling) it costs many times a SIMD ufunc. :func:`where` computes the same
  select on the bits.
* NumPy's strided copies and ufuncs pay per inner run: in NCHW the runs of
  im2col and pooling are one image row. The fast convolution stores its output
  "CHWN", (FN, OH, OW, N) in memory with the batch innermost, returned as an
  (N, FN, OH, OW) view: then every im2col copy moves runs of OW*N elements,
  pooling runs of N, and pooling and ReLU keep that layout (their outputs follow
  their inputs' strides), so it flows from layer to layer and back through the
  backward pass without copies.
* A whole ``col`` (nine times the input for a 3x3 filter) does not fit in
  cache, so GEMMs that read it run at memory speed. The convolution unfolds a
  few output rows at a time into one cache-sized buffer and multiplies it at
  once; the backward pass unfolds the cached padded input again rather than
  keeping ``col``. A row of ones in ``col`` folds the bias into the GEMM and its
  gradient into the ``dW`` GEMM.
* Ufuncs with ``out=`` avoid temporaries (the running maximum, Adam).
* NumPy releases the GIL inside copies, ufunc loops and BLAS calls, so under
  :func:`xpcnn.cpu_threads` the convolution's blocks of output rows, and
  pooling and ReLU by ranges of channels, run on several threads at once
  (:mod:`._threads`), each writing its own part of a preallocated output.

Float32 convolutions run the compiled kernels of :mod:`.compiled` (same layout,
no ``col`` at all) where the extension is built; the GEMM path below serves
float64, and float32 without the extension or with ``XPCNN_ISA=none``.

This module imports no other xpcnn module but :mod:`xpcnn._window`,
:mod:`xpcnn._fast._threads` (threads) and :mod:`xpcnn._fast.compiled`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import EllipsisType

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .._window import window_slices
from . import _threads, compiled

__all__ = [
    "ChwnConvCache",
    "ConvReluCache",
    "MaxPoolCache",
    "adam_update",
    "conv2d_forward",
    "conv2d_relu_forward",
    "max_pool2d_forward",
    "relu_backward",
    "relu_forward",
]

# Unsigned integers of each float width, for bitwise selects.
_BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _ones_where(mask: np.ndarray, itemsize: int) -> np.ndarray:
    """Unsigned integers with all bits set where ``mask`` is True, 0 elsewhere."""
    return np.subtract(0, mask, dtype=_BITS[itemsize])


def where(mask: np.ndarray, a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.where(mask, a, 0)`` computed on the bits, without branches.

    Bit-identical to ``np.where`` (NaN, infinities, -0.0) for a float array ``a``
    of ``mask``'s shape. ``out``: a float array of that shape and dtype to write
    (any strides).
    """
    bits = _ones_where(mask, a.itemsize)
    target = bits if out is None else out.view(bits.dtype)
    np.bitwise_and(a.view(bits.dtype), bits, out=target)
    return target.view(a.dtype)


Index = tuple[slice, slice] | EllipsisType


def _by_channel(fn: Callable[[Index], object], x: np.ndarray) -> None:
    """``fn(index)`` for indexes ``[:, a:b]`` that cut axis 1 of ``x`` (the channels of
    (N, C, H, W), the features of (N, D)) into ranges on the fast paths' threads
    (:func:`._threads.by_size`); one call ``fn(...)`` for small arrays or one thread."""
    if x.ndim < 2:
        fn(...)
        return
    C = x.shape[1]
    _threads.by_size(
        lambda r: fn(... if len(r) == C else (slice(None), slice(r.start, r.stop))), C, x.size
    )


# -- convolution ------------------------------------------------------------------------


def _chwn(x: np.ndarray, pad_h: int, pad_w: int) -> np.ndarray:
    """``x`` (N, C, H, W) zero-padded and stored (C, H + 2*pad_h, W + 2*pad_w, N),
    C-contiguous.

    No copy when ``x`` is already stored that way (the output of the fast
    convolution, pooling and ReLU) and there is no padding. The copy is shared out
    by channels among the fast paths' threads.
    """
    img = x.transpose(1, 2, 3, 0)
    if pad_h == pad_w == 0 and img.flags.c_contiguous:
        return img
    C, H, W, N = img.shape
    out = np.zeros((C, H + 2 * pad_h, W + 2 * pad_w, N), dtype=x.dtype)

    def channels(r: range) -> None:
        out[r.start : r.stop, pad_h : pad_h + H, pad_w : pad_w + W] = img[r.start : r.stop]

    _threads.by_size(channels, C, out.size)
    return out


def _window(img: np.ndarray, i: int, j: int, stride: int, r0: int, r1: int, OW: int) -> np.ndarray:
    """The (C, r1 - r0, OW, N) view of ``img`` (C, H, W, N) under filter offset (i, j)
    for output rows ``r0:r1``."""
    rows = slice(r0 * stride + i, (r1 - 1) * stride + i + 1, stride)
    return img[:, rows, j : j + (OW - 1) * stride + 1 : stride]


def _col_blocks(
    img: np.ndarray,
    FH: int,
    FW: int,
    stride: int,
    OH: int,
    OW: int,
    out_rows: range | None = None,
    *,
    reverse: bool = False,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(r0, r1, col)`` for blocks of the output rows ``out_rows`` (default all
    ``OH``): ``col`` (C*FH*FW + 1, (r1-r0)*OW*N) is the book's ``im2col`` of those
    rows, transposed, plus a last row of ones that carries the bias through the GEMM.

    One buffer of about ``_BLOCK_BYTES`` serves every block of a call, so ``col`` is
    used while it is in cache and never whole in memory (and calls on several
    threads each have their own). Each block is filled by one copy from a (C, FH,
    FW, OH, OW, N) window view of ``img``, whose inner runs are OW*N (stride 1) or
    N elements long.
    """
    out_rows = range(OH) if out_rows is None else out_rows
    C, N = img.shape[0], img.shape[3]
    K = C * FH * FW
    windows = sliding_window_view(img, (FH, FW), axis=(1, 2))[:, ::stride, ::stride]
    windows = windows.transpose(0, 4, 5, 1, 2, 3)  # (C, FH, FW, OH, OW, N): a view
    row_bytes = max(1, (K + 1) * OW * N * img.itemsize)  # 0 for an empty batch
    rows = max(1, min(len(out_rows), _BLOCK_BYTES // row_bytes))
    buf = np.empty((K + 1, rows, OW, N), dtype=img.dtype)
    buf[K] = 1
    starts = out_rows[::rows]
    for r0 in reversed(starts) if reverse else starts:
        r1 = min(out_rows.stop, r0 + rows)
        col = buf[:, : r1 - r0]
        col[:K].reshape(C, FH, FW, r1 - r0, OW, N)[...] = windows[:, :, :, r0:r1]
        yield r0, r1, col.reshape(K + 1, -1)


# Bytes of ``col`` per block of output rows: about an L2 cache.
_BLOCK_BYTES = 1 << 21


def _correlate(
    img: np.ndarray, col_W: np.ndarray, FH: int, FW: int, stride: int, OH: int, OW: int
) -> np.ndarray:
    """``col_W (FN, C*FH*FW + 1) @ col`` for every block of output rows: the
    (FN, OH, OW, N) cross-correlation of ``img`` (C, H, W, N), bias included.
    The rows are shared out among the fast paths' threads (:mod:`._threads`)."""
    N = img.shape[3]
    FN = col_W.shape[0]
    out = np.empty((FN, OH, OW, N), dtype=np.result_type(img, col_W))

    def rows(out_rows: range) -> None:
        for r0, r1, col in _col_blocks(img, FH, FW, stride, OH, OW, out_rows):
            np.matmul(col_W, col, out=out[:, r0:r1].reshape(FN, -1))

    _threads.map_ranges(rows, OH, blas=True)
    return out


def conv2d_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray, stride: int, pad: int, OH: int, OW: int
) -> tuple[np.ndarray, ChwnConvCache | compiled.CompiledConvCache]:
    """Convolution by the compiled kernels (:mod:`.compiled`) for float32 where they
    are built; otherwise as GEMMs ``col_W (FN, C*FH*FW + 1) @ col`` over blocks of
    output rows (:func:`_col_blocks`), the bias folded in as the last column of ``col_W``.

    The output (N, FN, OH, OW) is a view of the (FN, OH, OW, N) product: stored
    "CHWN", batch innermost, which pooling, ReLU and the next convolution read
    with long contiguous runs and the backward pass reshapes without a copy.
    The cache keeps the padded input, not ``col``: the backward pass unfolds
    it again, block by block, which costs less than writing and reading a
    ``col`` nine times the input's size.
    """
    FN, C, FH, FW = W.shape
    img = _chwn(x, pad, pad)
    if compiled.available(x, W, b):
        return compiled.conv2d_forward(x, W, b, stride, pad, OH, OW, img)
    col_W = np.concatenate([W.reshape(FN, C * FH * FW), b.reshape(FN, 1)], axis=1)
    out = _correlate(img, col_W, FH, FW, stride, OH, OW)
    cache = ChwnConvCache(tuple(x.shape), img, col_W, tuple(W.shape), stride, pad)
    return out.transpose(3, 0, 1, 2), cache


def conv2d_relu_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray, stride: int, pad: int, OH: int, OW: int
) -> tuple[np.ndarray, compiled.CompiledConvCache | ConvReluCache]:
    """Convolution then ReLU: in one pass by the compiled kernels (the ReLU in the
    output write, its mask in the backward pass), else the two fast ops in turn."""
    if compiled.available(x, W, b):
        return compiled.conv2d_forward(x, W, b, stride, pad, OH, OW, _chwn(x, pad, pad), relu=True)
    out, conv = conv2d_forward(x, W, b, stride, pad, OH, OW)
    y, mask = relu_forward(out)
    return y, ConvReluCache(conv, mask)


@dataclass(frozen=True)
class ConvReluCache:
    """The fast convolution's cache and the ReLU's mask, for their backward in turn."""

    conv: ChwnConvCache | compiled.CompiledConvCache
    mask: np.ndarray

    def backward(
        self, dout: np.ndarray, *, need_dx: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        return self.conv.backward(relu_backward(dout, self.mask), need_dx=need_dx)


@dataclass(frozen=True)
class ChwnConvCache:
    """The fast convolution's cache: ``img`` the zero-padded input stored (C, H + 2P,
    W + 2P, N), ``col_W`` (FN, C*FH*FW + 1) the weights with the bias as the last
    column."""

    x_shape: tuple[int, ...]
    img: np.ndarray
    col_W: np.ndarray
    W_shape: tuple[int, ...]
    stride: int
    pad: int

    def backward(
        self, dout: np.ndarray, *, need_dx: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """``[dW | db] += col @ dout.T`` block by block of output rows (the ones row of
        ``col`` sums the bias gradient), the rows shared out among the fast paths'
        threads. ``dx``: for stride 1, when there are no more filters than channels
        or several threads, the "full" correlation of ``dout`` with the flipped
        filters (:func:`_transposed_input_gradient`); otherwise, on one thread,
        ``dcol = col_W.T @ dout`` folded into ``dx`` block by block, bottom up, so
        that each element of ``dx`` receives its terms in the generic col2im's order.
        """
        FN, C, FH, FW = self.W_shape
        K = C * FH * FW
        N, _, OH, OW = dout.shape
        img, s, p = self.img, self.stride, self.pad
        # (FN, OH, OW, N): a view when dout is stored CHWN, as the fast paths leave it
        d = np.ascontiguousarray(dout.transpose(1, 2, 3, 0))
        # The transposed convolution unfolds dout (FN*FH*FW rows), the fold writes dcol
        # (C*FH*FW rows): take the smaller on one thread. The fold's blocks write
        # overlapping rows of dx in order, so on several threads take the transposed one.
        transposed = (
            need_dx
            and s == 1
            and p < min(FH, FW)
            and (FN <= C or _threads.num_threads(blas=True) > 1)
        )
        dimg = np.zeros_like(img) if need_dx and not transposed else None
        W_T = self.col_W[:, :K].T  # (C*FH*FW, FN)

        def rows(out_rows: range) -> np.ndarray:
            dWb = np.zeros((K + 1, FN), dtype=np.result_type(img, d))
            part = np.empty_like(dWb)
            for r0, r1, col in _col_blocks(img, FH, FW, s, OH, OW, out_rows, reverse=True):
                d_rows = d[:, r0:r1].reshape(FN, -1)
                np.matmul(col, d_rows.T, out=part)
                dWb += part
                if dimg is not None:
                    dcol = (W_T @ d_rows).reshape(C, FH, FW, r1 - r0, OW, N)
                    for i in range(FH):
                        for j in range(FW):
                            target = _window(dimg, i, j, s, r0, r1, OW)
                            target += dcol[:, i, j]
            return dWb

        if dimg is None:
            dWb, *more = _threads.map_ranges(rows, OH, blas=True)
            for part in more:
                dWb += part
        else:
            dWb = rows(range(OH))
        dW = dWb[:K].T.reshape(self.W_shape)
        db = dWb[K].copy()
        if transposed:
            return _transposed_input_gradient(d, self), dW, db
        if dimg is None:
            return None, dW, db
        H, W = self.x_shape[2], self.x_shape[3]
        return dimg[:, p : p + H, p : p + W].transpose(3, 0, 1, 2), dW, db


def _transposed_input_gradient(d: np.ndarray, cache: ChwnConvCache) -> np.ndarray:
    """``dx`` of a stride-1 convolution with ``pad < FH, FW``: ``d`` (FN, OH, OW, N)
    padded by ``FH-1-pad, FW-1-pad`` and cross-correlated with the filters
    flipped and transposed to (C, FN, FH, FW). The same GEMM work as ``dcol``,
    but the result is written once instead of nine read-modify-write folds."""
    FN, C, FH, FW = cache.W_shape
    H, W = cache.x_shape[2], cache.x_shape[3]
    W4 = cache.col_W[:, : C * FH * FW].reshape(FN, C, FH, FW)
    col_W = np.zeros((C, FN * FH * FW + 1), dtype=W4.dtype)  # no bias: 0 against the ones row
    col_W[:, :-1] = W4[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(C, -1)
    img = _chwn(d.transpose(3, 0, 1, 2), FH - 1 - cache.pad, FW - 1 - cache.pad)
    return _correlate(img, col_W, FH, FW, 1, H, W).transpose(3, 0, 1, 2)


# -- max pooling ---------------------------------------------------------------------------


def _padded(x: np.ndarray, pad: int) -> np.ndarray:
    """``x`` (N, C, H, W) padded on H and W with -inf, in ``x``'s memory layout.

    -inf never changes a maximum (every window holds a real position); where it
    ties with a real -inf, :meth:`MaxPoolCache.backward` still routes the
    gradient to the real position."""
    if pad == 0:
        return x
    N, C, H, W = x.shape
    img = np.full_like(x, -np.inf, shape=(N, C, H + 2 * pad, W + 2 * pad))
    img[:, :, pad:-pad, pad:-pad] = x
    return img


def max_pool2d_forward(
    x: np.ndarray,
    pool_h: int,
    pool_w: int,
    stride: int,
    pad: int,
    OH: int,
    OW: int,
    *,
    skip_nan: bool = False,
) -> tuple[np.ndarray, MaxPoolCache | compiled.CompiledPoolCache]:
    """Max pooling by the compiled kernel where :func:`.compiled.pool_available`
    says so, else as a chain of ``np.maximum`` over the window's strided views.

    ``np.maximum`` propagates NaN, the generic policy. ``skip_nan=True`` takes
    ``np.fmax``, which skips NaN (a window of NaN only gives NaN): that serves
    :func:`xpcnn.ops.relu_max_pool2d_forward`, which pools before the ReLU. No
    ``arg`` is computed, so inference pays only for the maximum: the cache keeps
    the padded input and the output, and the backward pass finds each window's
    first maximum.
    """
    if compiled.pool_available(x, pool_h, pool_w, stride, pad):
        return compiled.max_pool2d_forward(x, pool_h, pool_w, stride, OH, OW, skip_nan)
    img = _padded(x, pad)
    views = [
        img[window_slices(k // pool_w, k % pool_w, stride, OH, OW)] for k in range(pool_h * pool_w)
    ]
    reduce = np.fmax if skip_nan else np.maximum
    out = np.empty_like(views[0])  # views[0]'s memory layout: CHWN after the fast conv

    def channels(c: Index) -> None:
        o = out[c]
        if len(views) == 1:
            o[...] = views[0][c]
            return
        reduce(views[0][c], views[1][c], out=o)
        for view in views[2:]:
            reduce(o, view[c], out=o)

    _by_channel(channels, out)
    return out, MaxPoolCache(tuple(x.shape), img, out, pool_h, pool_w, stride, pad)


@dataclass(frozen=True)
class MaxPoolCache:
    """The fast max pooling's cache: ``img`` the input padded with -inf (in the
    input's memory layout) and ``out`` the output."""

    x_shape: tuple[int, ...]
    img: np.ndarray
    out: np.ndarray
    pool_h: int
    pool_w: int
    stride: int
    pad: int

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Route each ``dout`` to its window's first maximum (the generic ``arg``),
        on the bits: offset by offset, the part of ``dout`` not yet routed goes to
        the real (not padding) elements equal to the output, NaN to NaN, and is
        then removed from what is left.

        Non-overlapping windows that tile the input (the usual 2x2, stride 2) write
        each element of ``dx`` once: no zero fill, no read-modify-write. Every
        temporary follows the forward output's memory layout (CHWN after the fast
        convolution), so no ufunc mixes layouts.
        """
        H, W = self.x_shape[2], self.x_shape[3]
        OH, OW = dout.shape[2], dout.shape[3]
        ph, pw, s, p = self.pool_h, self.pool_w, self.stride, self.pad
        img, out = self.img, self.out
        tiles = p == 0 and s == ph == pw and OH * ph == H and OW * pw == W
        dx = np.empty_like(img, dtype=dout.dtype)  # the forward input's memory layout
        if not tiles:
            dx[...] = 0
        nan_out = np.isnan(out)
        if not nan_out.any():
            nan_out = None
        valid = None  # which padded positions are real input
        if p:
            valid = np.zeros(img.shape[2:], dtype=bool)
            valid[p:-p, p:-p] = True
        bits = _BITS[dout.itemsize]
        last = ph * pw - 1

        def channels(c: Index) -> None:
            left = np.empty_like(out[c], dtype=bits)  # dout not yet routed
            left[...] = dout[c].view(bits)
            for k in range(last + 1):
                idx = window_slices(k // pw, k % pw, s, OH, OW)
                view = img[idx][c]
                hit = np.equal(view, out[c])
                if nan_out is not None:  # a NaN maximum goes to the first NaN
                    hit |= np.isnan(view) & nan_out[c]
                if valid is not None:
                    hit &= valid[idx[2:]]
                target = dx[idx][c].view(bits) if tiles else np.empty_like(left)
                np.bitwise_and(left, _ones_where(hit, dout.itemsize), out=target)
                if k < last:
                    left ^= target
                if not tiles:
                    dx[idx][c] += target.view(dx.dtype)

        _by_channel(channels, out)
        return dx if p == 0 else dx[:, :, p:-p, p:-p]


# -- ReLU ----------------------------------------------------------------------------------


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ReLU: ``fmax`` ignores NaN, so NaN -> 0 exactly like ``where(x > 0, x, 0)``."""
    out, mask = np.empty_like(x), np.empty_like(x, dtype=bool)

    def channels(c: Index) -> None:
        np.greater(x[c], 0, out=mask[c])
        np.fmax(x[c], 0.0, out=out[c])

    _by_channel(channels, x)
    return out, mask


def relu_backward(dout: np.ndarray, mask: np.ndarray) -> np.ndarray:
    dx = np.empty_like(dout)
    _by_channel(lambda c: where(mask[c], dout[c], out=dx[c]), dout)
    return dx


# -- Adam ----------------------------------------------------------------------------------


def adam_update(
    param: np.ndarray,
    grad: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    lr_t: float,
    one_minus_beta1: float,
    one_minus_beta2: float,
    eps: float,
) -> np.ndarray:
    """One Adam step: ``m`` and ``v`` (the optimizer's own arrays) updated in place,
    the new parameter returned as a new array (``param`` is not written).

    The operations of :meth:`xpcnn.optim.Adam._step` in its order (products
    commuted), with ufuncs writing into two temporaries instead of eleven new
    arrays: the same bits.
    """
    t = np.subtract(grad, m)
    t *= one_minus_beta1
    m += t  # m = m + (1 - b1) * (g - m)
    np.multiply(grad, grad, out=t)
    t -= v
    t *= one_minus_beta2
    v += t  # v = v + (1 - b2) * (g * g - v)
    np.sqrt(v, out=t)
    t += eps
    step = np.multiply(m, lr_t)
    step /= t
    return np.subtract(param, step, out=step)  # param - lr_t * m / (sqrt(v) + eps)
