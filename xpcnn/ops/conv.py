"""im2col / col2im and convolution, written once against the array API standard."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import array_api_extra as xpx
from array_api_compat import array_namespace, device

from .. import _fast
from .._checks import check_floating
from .._window import check_window, fold_windows, pad_hw
from .dense import ReluCache, relu_forward
from .pool import max_pool2d_forward

__all__ = [
    "ConvCache",
    "ConvReluMaxPoolCache",
    "ConvThenCache",
    "Im2colCache",
    "col2im",
    "conv2d_forward",
    "conv2d_relu_forward",
    "conv2d_relu_max_pool2d_forward",
    "im2col",
]


def im2col(input_data: Any, filter_h: int, filter_w: int, stride: int = 1, pad: int = 0) -> Any:
    """Unfold image patches into rows (the book's ``im2col``).

    Parameters
    ----------
    input_data : array (N, C, H, W), any real floating dtype
    filter_h, filter_w, stride, pad : int

    Returns
    -------
    col : array (N*OH*OW, C*FH*FW), same dtype and device as ``input_data``,
        columns in the book's order (channel-major, then filter row, then column).
    """
    OH, OW = check_window(input_data.shape, filter_h, filter_w, stride, pad, what="im2col")
    fast = _fast.lookup("im2col", input_data)
    if fast is not None:
        return fast(input_data, filter_h, filter_w, stride, pad, OH, OW)
    colT = _unfold(input_data, filter_h, filter_w, stride, pad, OH, OW)
    return _to_book(colT, input_data.shape[1], filter_h * filter_w)


def _to_book(colT: Any, C: int, K: int) -> Any:
    """:func:`_unfold`'s layout (K*C, M) as the book's col (M, C*K), K = FH*FW (a copy)."""
    M = colT.shape[1]
    return _swap_outer(colT, (K, C, M), (M, C * K))


def _from_book(col: Any, C: int, K: int) -> Any:
    """The book's col (M, C*K) in :func:`_unfold`'s layout (K*C, M) (a copy)."""
    M = col.shape[0]
    return _swap_outer(col, (M, C, K), (K * C, M))


def _swap_outer(a: Any, shape: tuple[int, int, int], out: tuple[int, int]) -> Any:
    """``a`` seen as ``shape`` (A, C, B), its outer axes swapped, (B, C, A) as ``out``."""
    xp = array_namespace(a)
    return xp.reshape(xp.permute_dims(xp.reshape(a, shape), (2, 1, 0)), out)


def _unfold(
    input_data: Any, filter_h: int, filter_w: int, stride: int, pad: int, OH: int, OW: int
) -> Any:
    """The generic convolution's operand ``colT`` (FH*FW*C, N*OH*OW): the book's ``col``
    transposed, its rows ordered by filter offset, then channel.

    Each row is a run of N*OH*OW, so the copies and the matrix products move long
    contiguous runs, and the GEMM's output (FN, N*OH*OW) is NCHW up to a transpose of
    whole images. Measured per layer against the book's (N*OH*OW, C*FH*FW): PyTorch
    1.3-1.6x and XLA 1.3-1.6x faster; and stacking row slices, then column slices, in
    offset-major order is what XLA copies fast (one stack of FH*FW views ran at a
    fraction of the speed, several times slower for C > 1).
    """
    xp = array_namespace(input_data)
    N, C, _, _ = input_data.shape
    K, M = filter_h * filter_w, N * OH * OW
    fast = _fast.lookup("im2col", input_data)
    if fast is not None:  # the book's col from a kernel (CuPy), reordered by one copy
        return _from_book(fast(input_data, filter_h, filter_w, stride, pad, OH, OW), C, K)
    img = pad_hw(xp.permute_dims(input_data, (1, 0, 2, 3)), pad, xp=xp)  # (C, N, H+2P, W+2P)
    # Strided views stacked, no writes, so it runs on every backend: rows, then columns
    # (the stops are exact: the standard does not promise to clip, see window_slices).
    s = stride
    rows = xp.stack([img[:, :, i : i + s * (OH - 1) + 1 : s, :] for i in range(filter_h)])
    col = xp.stack([rows[..., j : j + s * (OW - 1) + 1 : s] for j in range(filter_w)], axis=1)
    return xp.reshape(col, (K * C, M))  # (FH, FW, C, N, OH, OW)


def _unfold_pooled(
    input_data: Any,
    filter_h: int,
    filter_w: int,
    stride: int,
    pad: int,
    pool: tuple[int, int],
    PH: int,
    PW: int,
) -> Any:
    """:func:`_unfold` for the outputs that ``pool`` = (ph, pw) windows tiling the
    output read, the (PH*ph, PW*pw) top-left ones, each image's columns ordered by
    window offset first: ``colT`` (FH*FW*C, N*ph*pw*PH*PW), columns (N, ph, pw, PH, PW).

    The maximum over a window is then one over ph*pw contiguous blocks, which XLA
    vectorises; over strided views of the row-major output it did not. Built as
    :func:`_unfold` is, a stack of rows then one of columns, from a small array
    (ph*pw times the image) holding each window offset's shifted image de-interleaved
    by the windows' step (T = stride*ph rows, stride*pw columns), so every view is a
    contiguous slice: nested stacks (one per filter column) ran as separate copies.
    """
    xp = array_namespace(input_data)
    N, C, H, W = input_data.shape
    ph, pw = pool
    s = stride
    T, Tw = s * ph, s * pw
    # Input row of pooled row a, window row i, filter row fi: T*a + s*i + fi, that is
    # s*i + T*(a + fi // T) + fi % T: row a + fi // T of residue fi % T of the image
    # shifted by s*i. Columns alike.
    Hq, Wq = PH + (filter_h - 1) // T, PW + (filter_w - 1) // Tw
    Hn, Wn = s * (ph - 1) + Hq * T, s * (pw - 1) + Wq * Tw  # padded rows and columns read
    img = xp.permute_dims(input_data, (1, 0, 2, 3))  # (C, N, H, W)
    extra_h, extra_w = max(Hn - H - 2 * pad, 0), max(Wn - W - 2 * pad, 0)
    if pad or extra_h or extra_w:
        img = xpx.pad(img, ((0, 0), (0, 0), (pad, pad + extra_h), (pad, pad + extra_w)), xp=xp)
    shifted = xp.stack(
        [
            xp.stack(
                [img[:, :, s * i : s * i + Hq * T, s * j : s * j + Wq * Tw] for j in range(pw)],
                axis=2,
            )
            for i in range(ph)
        ],
        axis=2,
    )  # (C, N, ph, pw, Hq*T, Wq*Tw)
    D = xp.reshape(shifted, (C, N, ph, pw, Hq, T, Wq, Tw))
    D = xp.permute_dims(D, (5, 7, 0, 1, 2, 3, 4, 6))  # (T, Tw, C, N, ph, pw, Hq, Wq)
    rows = xp.stack([D[fi % T, :, :, :, :, :, fi // T : fi // T + PH, :] for fi in range(filter_h)])
    col = xp.stack(  # (FH, Tw, C, N, ph, pw, PH, Wq) -> (FH, FW, C, N, ph, pw, PH, PW)
        [rows[:, fj % Tw, :, :, :, :, :, fj // Tw : fj // Tw + PW] for fj in range(filter_w)],
        axis=1,
    )
    return xp.reshape(col, (filter_h * filter_w * C, N * ph * pw * PH * PW))


def col2im(
    col: Any,
    input_shape: tuple[int, int, int, int],
    filter_h: int,
    filter_w: int,
    stride: int = 1,
    pad: int = 0,
) -> Any:
    """Fold rows back into an image, summing overlaps: the adjoint of :func:`im2col`.

    Parameters
    ----------
    col : array (N*OH*OW, C*FH*FW)
    input_shape : (N, C, H, W) of the image ``im2col`` was applied to

    Returns
    -------
    array (N, C, H, W), dtype and device of ``col``.
    """
    OH, OW = check_window(tuple(input_shape), filter_h, filter_w, stride, pad, what="col2im")
    N, C, H, W = input_shape
    if tuple(col.shape) != (N * OH * OW, C * filter_h * filter_w):
        raise ValueError(
            f"col2im: col has shape {tuple(col.shape)} but input_shape {tuple(input_shape)} with a "
            f"{filter_h}x{filter_w} filter needs ({N * OH * OW}, {C * filter_h * filter_w})"
        )
    input_shape = (N, C, H, W)
    fast = _fast.lookup("col2im", col)
    if fast is not None:
        return fast(col, input_shape, filter_h, filter_w, stride, pad, OH, OW)
    colT = _from_book(col, C, filter_h * filter_w)
    return _fold(colT, input_shape, filter_h, filter_w, stride, pad, OH, OW)


def _fold(
    colT: Any,
    input_shape: tuple[int, int, int, int],
    filter_h: int,
    filter_w: int,
    stride: int,
    pad: int,
    OH: int,
    OW: int,
) -> Any:
    """The adjoint of :func:`_unfold`: ``colT`` (FH*FW*C, N*OH*OW) -> (N, C, H, W)."""
    xp = array_namespace(colT)
    N, C, H, W = input_shape
    fast = _fast.lookup("col2im", colT)
    if fast is not None:  # a kernel folds the book's col (CuPy)
        col = _to_book(colT, C, filter_h * filter_w)
        return fast(col, input_shape, filter_h, filter_w, stride, pad, OH, OW)
    col = xp.reshape(colT, (filter_h, filter_w, C, N, OH, OW))
    img = fold_windows(
        lambda i, j: col[i, j, :, :, :, :], filter_h, filter_w, stride, pad, (C, N, H, W), xp=xp
    )
    return xp.permute_dims(img, (1, 0, 2, 3))


class ConvCache(Protocol):
    """What :func:`conv2d_forward` returns for the backward pass: an object that
    knows how to go back. The generic path returns an :class:`Im2colCache`; a
    fast path returns its own (the NumPy one keeps the padded input instead of
    ``col``), so the backward that runs always matches the forward that ran."""

    def backward(self, dout: Any, *, need_dx: bool = True) -> tuple[Any, Any, Any]:
        """Gradients for ``dout`` (N, FN, OH, OW), dtype of ``dout``: ``dx`` (N, C, H, W)
        or None, ``dW`` (FN, C, FH, FW), ``db`` (FN,).

        ``need_dx=False`` skips the input gradient (``dx`` is None): a first layer's
        input gradient is never used, and its col2im is the most expensive part.
        """
        ...


@dataclass(frozen=True)
class Im2colCache:
    """The generic path's cache: ``colT`` (FH*FW*C, N*OH*OW), the book's ``col`` transposed
    with its rows in :func:`_unfold`'s order, and ``col_W`` (FH*FW*C, FN), the book's
    ``col_W`` with its rows in the same order."""

    x_shape: tuple[int, int, int, int]
    colT: Any
    col_W: Any
    W_shape: tuple[int, ...]
    stride: int
    pad: int
    #: (1, 1): each image's columns are its outputs (OH, OW) row-major (:func:`_unfold`);
    #: (ph, pw): (ph, pw, OH // ph, OW // pw), by pooling-window offset first
    #: (:func:`_unfold_pooled`), and ``dout`` comes in that order.
    pool: tuple[int, int] = (1, 1)

    def backward(self, dout: Any, *, need_dx: bool = True) -> tuple[Any, Any, Any]:
        xp = array_namespace(dout)
        FN, C, FH, FW = self.W_shape
        N, _, OH, OW = dout.shape
        K = FH * FW * C
        db = xp.sum(dout, axis=(0, 2, 3))
        dout2 = None  # (FN, N*OH*OW), the book's dout transposed: a copy, made when needed
        if K < _FEW_ROWS:
            # One long product over all N*OH*OW into a dW of few columns is a slow GEMM
            # shape: a product per image, summed, was faster up to K = 27 (a first layer;
            # XLA 1.3-2.7x, PyTorch 1.2-1.3x) and slower from K = 48 (scripts/BENCHMARKS.md).
            colT = xp.permute_dims(xp.reshape(self.colT, (K, N, OH * OW)), (1, 2, 0))
            dW = xp.sum(xp.reshape(dout, (N, FN, OH * OW)) @ colT, axis=0)
        else:
            dout2 = _transposed_dout(dout)
            dW = dout2 @ xp.matrix_transpose(self.colT)
        dW = xp.permute_dims(xp.reshape(dW, (FN, FH, FW, C)), (0, 3, 1, 2))
        if not need_dx:
            return None, dW, db
        if dout2 is None:
            dout2 = _transposed_dout(dout)
        dcolT = self.col_W @ dout2  # (FH*FW*C, N*OH*OW)
        if self.pool != (1, 1):  # the columns back in row-major (OH, OW) order for the fold
            ph, pw = self.pool
            dcolT = xp.reshape(dcolT, (K, N, ph, pw, OH // ph, OW // pw))
            dcolT = xp.reshape(xp.permute_dims(dcolT, (0, 1, 4, 2, 5, 3)), (K, N * OH * OW))
        dx = _fold(dcolT, self.x_shape, FH, FW, self.stride, self.pad, OH, OW)
        return dx, dW, db


#: Below this many rows of ``colT`` (FH*FW*C), dW is summed from one product per image.
_FEW_ROWS = 32


def _transposed_dout(dout: Any) -> Any:
    """``dout`` (N, FN, OH, OW) as (FN, N*OH*OW), the layout of the GEMM's output."""
    xp = array_namespace(dout)
    N, FN, OH, OW = dout.shape
    return xp.reshape(xp.permute_dims(dout, (1, 0, 2, 3)), (FN, N * OH * OW))


def _check_conv(x: Any, W: Any, b: Any, stride: int, pad: int) -> tuple[int, int]:
    """``(OH, OW)`` of a convolution, after one clear error for any bad argument."""
    if len(W.shape) != 4:
        raise ValueError(
            f"convolution weights must be 4-D (FN, C, FH, FW), got shape {tuple(W.shape)}"
        )
    FN, C, FH, FW = W.shape
    OH, OW = check_window(tuple(x.shape), FH, FW, stride, pad, what="convolution")
    check_floating(x, "convolution")
    if x.shape[1] != C:
        raise ValueError(
            f"channel mismatch: input has shape {tuple(x.shape)} with {x.shape[1]} channels but the "
            f"filters W {tuple(W.shape)} expect C={C}"
        )
    if tuple(b.shape) != (FN,):
        raise ValueError(f"convolution bias must have shape ({FN},), got {tuple(b.shape)}")
    return OH, OW


def conv2d_forward(x: Any, W: Any, b: Any, stride: int = 1, pad: int = 0) -> tuple[Any, ConvCache]:
    """Convolution (cross-correlation) by im2col + one matrix product.

    Parameters
    ----------
    x : array (N, C, H, W)
    W : array (FN, C, FH, FW)
    b : array (FN,)

    Returns
    -------
    out : array (N, FN, OH, OW), dtype of ``x``
    cache : ConvCache (``cache.backward(dout)`` -> ``(dx, dW, db)``)
    """
    xp = array_namespace(x, W, b)
    OH, OW = _check_conv(x, W, b, stride, pad)
    fast = _fast.lookup("conv2d_forward", x)
    if fast is not None:
        return fast(x, W, b, stride, pad, OH, OW)
    N = x.shape[0]
    FN, C, FH, FW = W.shape
    colT = _unfold(x, FH, FW, stride, pad, OH, OW)  # (FH*FW*C, N*OH*OW)
    W2 = xp.reshape(xp.permute_dims(W, (0, 2, 3, 1)), (FN, FH * FW * C))  # colT's row order
    out = W2 @ colT + xp.reshape(b, (FN, 1))  # (FN, N*OH*OW): the book's out, transposed
    out = xp.permute_dims(xp.reshape(out, (FN, N, OH, OW)), (1, 0, 2, 3))
    cache = Im2colCache(tuple(x.shape), colT, xp.matrix_transpose(W2), tuple(W.shape), stride, pad)
    return out, cache


@dataclass(frozen=True)
class ConvThenCache:
    """A convolution, then an op without parameters (a ReLU, a pooling), op by op: the
    convolution's cache and the other op's."""

    conv: ConvCache
    after: Any

    def backward(self, dout: Any, *, need_dx: bool = True) -> tuple[Any, Any, Any]:
        return self.conv.backward(self.after.backward(dout), need_dx=need_dx)


def conv2d_relu_forward(
    x: Any, W: Any, b: Any, stride: int = 1, pad: int = 0
) -> tuple[Any, ConvCache]:
    """Convolution then ReLU as one op: ``relu_forward(conv2d_forward(x, W, b, stride,
    pad)[0])``, with the same results (NaN to 0 included).

    A fast path may apply the ReLU in the convolution's own output write, and its mask
    in the convolution's backward pass, saving two passes over the activations
    (the NumPy path's compiled kernels do); elsewhere the two ops run in turn.

    x : array (N, C, H, W); W : (FN, C, FH, FW); b : (FN,) -> out : array (N, FN, OH,
    OW), dtype of ``x``; cache: ``cache.backward(dout, need_dx=True)`` -> ``(dx, dW,
    db)``, ``dout`` being the gradient of the ReLU's output.
    """
    OH, OW = _check_conv(x, W, b, stride, pad)
    fast = _fast.lookup("conv2d_relu_forward", x)
    if fast is not None:
        return fast(x, W, b, stride, pad, OH, OW)
    out, conv = conv2d_forward(x, W, b, stride, pad)
    y, relu = relu_forward(out)
    return y, ConvThenCache(conv, relu)


@dataclass(frozen=True)
class ConvReluMaxPoolCache:
    """:func:`conv2d_relu_max_pool2d_forward`'s cache on the generic path with pooling
    windows that tile: the convolution's (its ``colT`` in pool-major column order,
    :attr:`Im2colCache.pool`), the ReLU's mask (N, FN, ph*pw, PH*PW) and ``arg``
    (N, FN, PH*PW) int16, the window offset (row-major) of each maximum."""

    conv: Im2colCache
    relu: ReluCache
    arg: Any

    def backward(self, dout: Any, *, need_dx: bool = True) -> tuple[Any, Any, Any]:
        xp = array_namespace(dout)
        N, FN, PH, PW = dout.shape
        ph, pw = self.conv.pool
        A = ph * pw
        offsets = xp.reshape(xp.arange(A, dtype=self.arg.dtype, device=device(dout)), (A, 1))
        zero = xp.zeros((), dtype=dout.dtype, device=device(dout))
        d = xp.where(  # each maximum's gradient to its block: (N, FN, ph*pw, PH*PW)
            xp.expand_dims(self.arg, axis=2) == offsets, xp.reshape(dout, (N, FN, 1, PH * PW)), zero
        )
        d = self.relu.backward(d)
        return self.conv.backward(xp.reshape(d, (N, FN, ph * PH, pw * PW)), need_dx=need_dx)


def conv2d_relu_max_pool2d_forward(
    x: Any,
    W: Any,
    b: Any,
    stride: int = 1,
    pad: int = 0,
    pool_h: int = 2,
    pool_w: int = 2,
    pool_stride: int = 2,
    pool_pad: int = 0,
) -> tuple[Any, ConvCache]:
    """Convolution, ReLU, then max pooling as one op: ``max_pool2d_forward(
    conv2d_relu_forward(x, W, b, stride, pad)[0], pool_h, pool_w, pool_stride, pool_pad)``
    with the same results.

    On the generic path, for windows that tile (``pool_stride == pool_h == pool_w``, no
    pooling pad) after a convolution with few rows of ``colT`` (FH*FW*C < 32, a first
    layer), the convolution computes only the outputs the windows read, each window's
    elements in ph*pw contiguous blocks (:func:`_unfold_pooled`): XLA and PyTorch then
    take the maxima as whole-block comparisons. Measured on a SimpleConvNet step: compiled
    JAX 0.87x the time, eager JAX 0.87x, eager PyTorch 0.93x (scripts/BENCHMARKS.md);
    with more rows and dx (DeepConvNet's pooled layers) it was 1.1-1.3x slower, so those,
    fast paths and other windows run the ops in turn (the pooling told that a ReLU's
    output holds no NaN).

    x : array (N, C, H, W); W : (FN, C, FH, FW); b : (FN,) -> out : array (N, FN, PH,
    PW), dtype of ``x``; cache: ``cache.backward(dout, need_dx=True)`` -> ``(dx, dW, db)``
    for ``dout`` (N, FN, PH, PW).
    """
    OH, OW = _check_conv(x, W, b, stride, pad)
    FN, C, FH, FW = W.shape
    tiles = pool_stride == pool_h == pool_w and pool_pad == 0
    if _fast.lookup("conv2d_relu_forward", x) is not None or not tiles or FH * FW * C >= _FEW_ROWS:
        y, conv = conv2d_relu_forward(x, W, b, stride, pad)
        out, pool = max_pool2d_forward(y, pool_h, pool_w, pool_stride, pool_pad, nan_free=True)
        return out, ConvThenCache(conv, pool)
    xp = array_namespace(x, W, b)
    N = x.shape[0]
    PH, PW = check_window((N, FN, OH, OW), pool_h, pool_w, pool_stride, 0, what="max pooling")
    A = pool_h * pool_w
    colT = _unfold_pooled(x, FH, FW, stride, pad, (pool_h, pool_w), PH, PW)
    W2 = xp.reshape(xp.permute_dims(W, (0, 2, 3, 1)), (FN, FH * FW * C))  # colT's row order
    out = W2 @ colT + xp.reshape(b, (FN, 1))  # (FN, N*A*PH*PW)
    y, relu = relu_forward(xp.permute_dims(xp.reshape(out, (FN, N, A, PH * PW)), (1, 0, 2, 3)))
    best = y[:, :, 0, :]
    arg = xp.zeros(best.shape, dtype=xp.int16, device=device(x))
    for k in range(1, A):  # strictly greater: ties keep the first offset, as max_pool2d_forward
        view = y[:, :, k, :]
        gt = view > best
        best = xp.where(gt, view, best)
        arg = xp.where(gt, xp.asarray(k, dtype=xp.int16, device=device(x)), arg)
    conv = Im2colCache(
        tuple(x.shape), colT, xp.matrix_transpose(W2), tuple(W.shape), stride, pad, (pool_h, pool_w)
    )
    return xp.reshape(best, (N, FN, PH, PW)), ConvReluMaxPoolCache(conv, relu, arg)
