"""The NumPy fast path's convolution by blocked GEMMs (float64, and float32 where
the compiled kernels of :mod:`.compiled` are not built or switched off).

The layout is the fast paths' "CHWN": activations (N, C, H, W) stored (C, H, W, N),
batch innermost, so that every im2col copy moves runs of OW*N elements and the
output (FN, OH, OW, N) flows to pooling and ReLU without a transposing copy.

* A whole ``col`` (nine times the input for a 3x3 filter) does not fit in
  cache, so GEMMs that read it run at memory speed. The convolution unfolds a
  few output rows at a time into one cache-sized buffer and multiplies it at
  once; the backward pass unfolds the cached padded input again rather than
  keeping ``col``. A row of ones in ``col`` folds the bias into the GEMM and its
  gradient into the ``dW`` GEMM.
* NumPy releases the GIL inside copies and BLAS calls, so under
  :func:`xpcnn.cpu_threads` the blocks of output rows run on several threads
  (:mod:`._threads`), each with its own ``col`` buffer and BLAS at one thread.

This module imports no other xpcnn module but :mod:`xpcnn._fast._threads`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import _threads

__all__ = ["ChwnConvCache", "chwn", "gemm_conv2d_forward", "zero_border"]


def chwn(x: np.ndarray, pad_h: int, pad_w: int) -> np.ndarray:
    """``x`` (N, C, H, W) zero-padded and stored (C, H + 2*pad_h, W + 2*pad_w, N),
    C-contiguous.

    No copy when ``x`` is already stored that way (the output of the fast
    convolution, pooling and ReLU) and there is no padding. The copy and the zero
    border are shared out by channels among the fast paths' threads (each element
    is written once: no zero-filled whole first).
    """
    img = x.transpose(1, 2, 3, 0)
    if pad_h == pad_w == 0 and img.flags.c_contiguous:
        return img
    C, H, W, N = img.shape
    out = np.empty((C, H + 2 * pad_h, W + 2 * pad_w, N), dtype=x.dtype)

    def channels(r: range) -> None:
        part = out[r.start : r.stop]
        zero_border(part, pad_h, pad_w)
        part[:, pad_h : pad_h + H, pad_w : pad_w + W] = img[r.start : r.stop]

    _threads.by_size(channels, C, out.size)
    return out


def zero_border(img: np.ndarray, pad_h: int, pad_w: int) -> None:
    """Zero the ``pad_h`` first and last rows and the ``pad_w`` first and last columns
    of ``img`` (C, H, W, N), in place."""
    H, W = img.shape[1], img.shape[2]
    img[:, :pad_h] = 0
    img[:, H - pad_h :] = 0
    img[:, pad_h : H - pad_h, :pad_w] = 0
    img[:, pad_h : H - pad_h, W - pad_w :] = 0


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


def gemm_conv2d_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray, stride: int, pad: int, OH: int, OW: int
) -> tuple[np.ndarray, ChwnConvCache]:
    """Convolution as GEMMs ``col_W (FN, C*FH*FW + 1) @ col`` over blocks of output
    rows (:func:`_col_blocks`), the bias folded in as the last column of ``col_W``.

    The output (N, FN, OH, OW) is a view of the (FN, OH, OW, N) product: stored
    "CHWN", batch innermost, which pooling, ReLU and the next convolution read
    with long contiguous runs and the backward pass reshapes without a copy.
    The cache keeps the padded input, not ``col``: the backward pass unfolds
    it again, block by block, which costs less than writing and reading a
    ``col`` nine times the input's size.
    """
    FN, C, FH, FW = W.shape
    img = chwn(x, pad, pad)
    col_W = np.concatenate([W.reshape(FN, C * FH * FW), b.reshape(FN, 1)], axis=1)
    out = _correlate(img, col_W, FH, FW, stride, OH, OW)
    cache = ChwnConvCache(tuple(x.shape), img, col_W, tuple(W.shape), stride, pad)
    return out.transpose(3, 0, 1, 2), cache


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
    img = chwn(d.transpose(3, 0, 1, 2), FH - 1 - cache.pad, FW - 1 - cache.pad)
    return _correlate(img, col_W, FH, FW, 1, H, W).transpose(3, 0, 1, 2)
