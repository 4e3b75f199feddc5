"""NumPy side of the fast-path seams (see :mod:`xpcnn._fast`).

Each function has the signature and the results of the generic op it stands
in for (the ops validate the arguments first and pass ``OH, OW``); results
are equal to the generic path's (up to the order of floating-point sums in the
convolution's GEMMs), but arrays may be stored channel-major (below). Three
facts drive the choices, measured on a 2-core machine, float32, batch 100:

* ``np.where`` and ``np.copyto(where=)`` run a branchy loop: with an
  unpredictable mask (ReLU, max pooling) they cost ~8 ns/element, 10-20x a
  SIMD ufunc. :func:`where` and :func:`copyto` compute the same selects on the
  bits instead.
* The generic convolution multiplies ``col (N*OH*OW, C*FH*FW) @ col_W``, which
  leaves its output in (N, OH, OW, FN) order, and its backward pass copies
  ``dout`` into that order again; the bias is a separate pass and sum. Here the
  GEMM runs the other way round, ``col_W (FN, C*FH*FW + 1) @ col (C*FH*FW + 1,
  N*OH*OW)``: the output is (FN, N, OH, OW), "channel-major", returned as an
  (N, FN, OH, OW) view. Pooling, ReLU and the next layer's ``col`` read that
  layout as cheaply as NCHW, the backward pass reshapes ``dout`` to (FN,
  N*OH*OW) without a copy when it arrives in it (the fast pooling and ReLU
  keep it), and a row of ones in ``col`` folds the bias into the GEMM and its
  gradient into the ``dW`` GEMM. One large GEMM per product, not one per image:
  with a multi-threaded BLAS, many small GEMMs each pay a thread wake-up.
* ``col`` is filled by FH*FW strided copies whose inner loops run along OW;
  ``sliding_window_view`` plus one copy measured slower (its inner loop is the
  FW-long filter row), so there is no NumPy version of the public ``im2col``.
* Ufuncs with ``out=`` avoid temporaries (the running maximum).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops._util import window_slices
from ..ops.conv import ConvCache
from ..ops.pool import PoolCache

__all__ = [
    "conv2d_backward",
    "conv2d_forward",
    "max_pool2d_backward",
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


def copyto(dst: np.ndarray, src: np.ndarray, mask: np.ndarray) -> None:
    """``np.copyto(dst, src, where=mask)`` computed on the bits, without branches:
    ``dst ^= (src ^ dst) & ones``. ``dst`` is a contiguous float array, ``src`` of
    its shape and dtype (any strides)."""
    bits = _ones_where(mask, dst.itemsize)
    d = dst.view(bits.dtype)
    diff = np.bitwise_xor(src.view(bits.dtype), d)
    diff &= bits
    d ^= diff


# -- convolution ------------------------------------------------------------------------


def _is_cnhw(x: np.ndarray) -> bool:
    """True for a logical (N, C, H, W) array stored channel-major, (C, N, H, W) in
    memory: the layout the fast convolution produces (see :func:`conv2d_forward`)."""
    return not x.flags.c_contiguous and x.transpose(1, 0, 2, 3).flags.c_contiguous


def _empty_image(shape: tuple[int, ...], dtype: Any, cnhw: bool, fill: float | None) -> np.ndarray:
    """An (N, C, H, W) array, stored (C, N, H, W) when ``cnhw``; filled when ``fill`` is given."""
    N, C, H, W = shape
    if cnhw:
        shape = (C, N, H, W)
    img = np.empty(shape, dtype=dtype) if fill is None else np.full(shape, fill, dtype=dtype)
    return img.transpose(1, 0, 2, 3) if cnhw else img


def _pad(x: np.ndarray, pad: int, value: float = 0.0) -> np.ndarray:
    """``x`` padded on H and W with ``value``, in ``x``'s memory layout."""
    if pad == 0:
        return x
    N, C, H, W = x.shape
    img = _empty_image((N, C, H + 2 * pad, W + 2 * pad), x.dtype, _is_cnhw(x), value)
    img[:, :, pad:-pad, pad:-pad] = x
    return img


def _unfold(x: np.ndarray, FH: int, FW: int, stride: int, pad: int, OH: int, OW: int) -> np.ndarray:
    """``col`` (C*FH*FW + 1, N*OH*OW): the book's ``im2col`` transposed, plus a
    last row of ones that carries the bias through the GEMM. Filled by one
    strided copy per filter offset, each with rows of OW contiguous elements."""
    N, C = x.shape[:2]
    K = C * FH * FW
    img = _pad(x, pad).transpose(1, 0, 2, 3)  # (C, N, H, W): a view
    col = np.empty((K + 1, N * OH * OW), dtype=x.dtype)
    patches = col[:K].reshape(C, FH, FW, N, OH, OW)  # a view: the rows to fill
    for i in range(FH):
        for j in range(FW):
            patches[:, i, j] = img[window_slices(i, j, stride, OH, OW)]
    col[K] = 1
    return col


def _fold_into(img: np.ndarray, dcol: np.ndarray, FH: int, FW: int, stride: int) -> None:
    """Add ``dcol`` (C*FH*FW, n*OH*OW) into ``img`` (C, n, H + 2P, W + 2P), offset by
    offset in the generic col2im's order (so the sums are the same): the adjoint of
    :func:`_unfold` without the ones row."""
    C, n = img.shape[:2]
    OH = (img.shape[2] - FH) // stride + 1
    OW = (img.shape[3] - FW) // stride + 1
    dcol = dcol.reshape(C, FH, FW, n, OH, OW)
    for i in range(FH):
        for j in range(FW):
            img[window_slices(i, j, stride, OH, OW)] += dcol[:, i, j]


def _input_gradient(dout: np.ndarray, cache: ConvCache) -> np.ndarray:
    """``dx`` (N, C, H, W), stored channel-major: ``dcol = col_W.T @ dout`` folded
    back, a few images at a time, so that ``dcol`` (as large as ``col``) is never
    whole in memory and each block is folded while it is still in cache."""
    N, C, H, W = cache.x_shape
    _, _, FH, FW = cache.W_shape
    K, p = C * FH * FW, cache.pad
    P = dout.shape[1] // N  # OH*OW
    img = np.zeros((C, N, H + 2 * p, W + 2 * p), dtype=dout.dtype)
    W_T = cache.col_W[:, :K].T  # (C*FH*FW, FN)
    step = max(1, min(N, _FOLD_BLOCK_BYTES // max(1, K * P * dout.itemsize)))
    for n0 in range(0, N, step):
        n1 = min(N, n0 + step)
        dcol = W_T @ dout[:, n0 * P : n1 * P]  # (C*FH*FW, (n1-n0)*OH*OW)
        _fold_into(img[:, n0:n1], dcol, FH, FW, cache.stride)
    img = img.transpose(1, 0, 2, 3)
    return img if p == 0 else img[:, :, p:-p, p:-p]


# Bytes of dcol per block in _input_gradient: a few images, about an L2 cache.
_FOLD_BLOCK_BYTES = 1 << 21


def conv2d_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray, stride: int, pad: int, OH: int, OW: int
) -> tuple[np.ndarray, ConvCache]:
    """Convolution as one GEMM ``col_W (FN, C*FH*FW + 1) @ col (C*FH*FW + 1, N*OH*OW)``,
    the bias folded in as the last column of ``col_W`` against the ones row of ``col``.

    The output (N, FN, OH, OW) is a view of the (FN, N, OH, OW) product: stored
    channel-major, which pooling, ReLU and the next convolution read as cheaply
    as NCHW, and which the backward pass reshapes without a copy.
    """
    FN, C, FH, FW = W.shape
    N = x.shape[0]
    col = _unfold(x, FH, FW, stride, pad, OH, OW)
    col_W = np.concatenate([W.reshape(FN, C * FH * FW), b.reshape(FN, 1)], axis=1)
    out = col_W @ col  # (FN, N*OH*OW), bias included
    cache = ConvCache(tuple(x.shape), col, col_W, tuple(W.shape), stride, pad, "columns")
    return out.reshape(FN, N, OH, OW).transpose(1, 0, 2, 3), cache


def conv2d_backward(
    dout: np.ndarray, cache: ConvCache, need_dx: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients for a "columns" cache from :func:`conv2d_forward`: two GEMMs."""
    FN, C, FH, FW = cache.W_shape
    K = C * FH * FW
    # (FN, N*OH*OW): a view when dout is stored channel-major, as the fast paths leave it
    dout = dout.transpose(1, 0, 2, 3).reshape(FN, -1)
    # [dW | db] in one GEMM: the ones row of col sums dout into the bias gradient.
    dWb = dout @ cache.col.T  # (FN, K + 1)
    dW = dWb[:, :K].reshape(cache.W_shape)
    db = dWb[:, K].copy()
    if not need_dx:
        return None, dW, db
    return _input_gradient(dout, cache), dW, db


# -- max pooling ---------------------------------------------------------------------------


def max_pool2d_forward(
    x: np.ndarray, pool_h: int, pool_w: int, stride: int, pad: int, OH: int, OW: int
) -> tuple[np.ndarray, PoolCache]:
    """Max pooling as a chain of ``np.fmax`` over the window's strided views.

    The same values as the generic running maximum, whose ``view > out`` skips a
    NaN anywhere but at offset 0 (``fmax`` skips NaN; a NaN at offset 0 is put
    back). No ``arg`` is computed here, so inference pays only for the maximum:
    the cache keeps the padded input and the output, and the backward pass finds
    each window's first maximum.
    """
    img = _pad(x, pad, float(np.finfo(x.dtype).min))
    views = [
        img[window_slices(k // pool_w, k % pool_w, stride, OH, OW)] for k in range(pool_h * pool_w)
    ]
    if len(views) == 1:
        out = views[0].copy()
    else:
        out = np.fmax(views[0], views[1])
        for view in views[2:]:
            np.fmax(out, view, out=out)
    first_nan = np.isnan(views[0])
    if first_nan.any():
        copyto(out, views[0], first_nan)
    return out, PoolCache(tuple(x.shape), None, pool_h, pool_w, stride, pad, img, out)


def max_pool2d_backward(dout: np.ndarray, cache: PoolCache) -> np.ndarray:
    """Route each ``dout`` to its window's first maximum (the generic ``arg``):
    offset by offset, the elements equal to the output and not yet taken.

    Non-overlapping windows that tile the input (the usual 2x2, stride 2) write
    each element of ``dx`` once: no zero fill, no read-modify-write.
    """
    N, C, H, W = cache.x_shape
    OH, OW = dout.shape[2], dout.shape[3]
    ph, pw, s, p = cache.pool_h, cache.pool_w, cache.stride, cache.pad
    img, out = cache.x, cache.out
    if img is None:  # a cache from the generic forward pass: use its arg
        arg = cache.arg
        hits = (arg == k for k in range(ph * pw))
    else:
        hits = _first_hits(img, out, ph, pw, s)
    tiles = p == 0 and s == ph == pw and OH * ph == H and OW * pw == W
    cnhw = img is not None and _is_cnhw(img)  # keep the forward input's layout
    dx = _empty_image((N, C, H + 2 * p, W + 2 * p), dout.dtype, cnhw, None if tiles else 0.0)
    for k, hit in enumerate(hits):
        idx = window_slices(k // pw, k % pw, s, OH, OW)
        if tiles:
            where(hit, dout, out=dx[idx])
        else:
            dx[idx] += where(hit, dout)
    return dx if p == 0 else dx[:, :, p:-p, p:-p]


def _first_hits(img: np.ndarray, out: np.ndarray, ph: int, pw: int, stride: int):
    """For each window offset k, the mask ``arg == k`` of the generic forward pass:
    the first offset whose element equals the maximum (a NaN output came from offset 0)."""
    OH, OW = out.shape[2], out.shape[3]
    taken = None
    for k in range(ph * pw):
        hit = np.equal(img[window_slices(k // pw, k % pw, stride, OH, OW)], out)
        if taken is None:
            hit |= np.isnan(out)
            taken = hit.copy()
        else:
            np.greater(hit, taken, out=hit)  # hit and not taken
            taken |= hit
        yield hit


# -- ReLU ----------------------------------------------------------------------------------


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ReLU: ``fmax`` ignores NaN, so NaN -> 0 exactly like ``where(x > 0, x, 0)``."""
    mask = x > 0
    return np.fmax(x, 0.0), mask


def relu_backward(dout: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return where(mask, dout)
