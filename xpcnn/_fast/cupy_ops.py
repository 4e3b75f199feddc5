"""CuPy side of the fast-path seam (see :mod:`xpcnn._fast`): CUDA kernels.

Imported only when a CuPy array reaches an op. The generic code builds
``im2col`` from FH*FW strided copies and a transpose, ``col2im`` and the
pooling backward from FH*FW read-modify-write passes, and max pooling from
3*FH*FW element-wise passes: each a kernel launch and a trip through device
memory. Here each is one ``ElementwiseKernel`` launch with one thread per
output element:

* ``im2col``: each element of ``col`` reads its pixel (or 0 in the padding);
* ``col2im``: each pixel *gathers* the ``col`` entries that overlap it, so no
  atomics are needed and the sum is taken in the generic code's order
  (filter offsets row by row), which makes the result equal, not just close;
* max pooling forward: each output runs the generic running maximum over the
  real positions of its window (padding is skipped, so it never wins, not even
  over -inf; a strict ``>`` keeps the first maximum, as ``argmax`` does; the
  first NaN wins, or with ``skip_nan`` a NaN loses to any number) and stores
  its int16 offset;
* max pooling backward: each input pixel gathers the ``dout`` of the windows
  whose maximum it is, again in the generic order;
* Adam: the whole update of one parameter (both moments in place, the new
  parameter into a new array) in one launch instead of twelve. A training
  step is short enough on a GPU that launches, not arithmetic, set its speed. The operations are those of
  :meth:`xpcnn.optim.Adam._step`, in its order, with the Python scalars
  rounded to the array's dtype first (as NumPy and CuPy do) and without
  contracting a multiply and an add into one FMA (``--fmad=false``), so the
  result is the generic update's, bit for bit.

Index arithmetic uses 64-bit integers for the flat positions. This module
imports no other xpcnn module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cupy

__all__ = ["MaxPoolCache", "adam_update", "col2im", "im2col", "max_pool2d_forward"]

_WINDOW_PARAMS = (
    "int32 C, int32 H, int32 W, int32 OH, int32 OW, int32 FH, int32 FW, int32 S, int32 P"
)

_im2col_kernel = cupy.ElementwiseKernel(
    "raw T img, " + _WINDOW_PARAMS,
    "T col",
    """
    const long long K = (long long)C * FH * FW;
    const long long row = i / K;              // n*OH*OW + oh*OW + ow
    const int ck = (int)(i % K);              // c*FH*FW + fh*FW + fw (the book's column order)
    const int c = ck / (FH * FW);
    const int fh = (ck / FW) % FH;
    const int fw = ck % FW;
    const int ow = (int)(row % OW);
    const int oh = (int)((row / OW) % OH);
    const long long n = row / ((long long)OH * OW);
    const int h = oh * S + fh - P;
    const int w = ow * S + fw - P;
    col = (h >= 0 && h < H && w >= 0 && w < W) ? img[((n * C + c) * H + h) * W + w] : (T)0;
    """,
    "xpcnn_im2col",
)

_col2im_kernel = cupy.ElementwiseKernel(
    "raw T col, " + _WINDOW_PARAMS,
    "T img",
    """
    const int w = (int)(i % W);
    const int h = (int)((i / W) % H);
    const int c = (int)((i / ((long long)W * H)) % C);
    const long long n = i / ((long long)W * H * C);
    const long long K = (long long)C * FH * FW;
    T acc = 0;
    for (int fh = 0; fh < FH; ++fh) {
        const int dh = h + P - fh;
        if (dh < 0 || dh % S != 0 || dh / S >= OH) continue;
        for (int fw = 0; fw < FW; ++fw) {
            const int dw = w + P - fw;
            if (dw < 0 || dw % S != 0 || dw / S >= OW) continue;
            const long long row = (n * OH + dh / S) * OW + dw / S;
            acc += col[row * K + (c * FH + fh) * FW + fw];
        }
    }
    img = acc;
    """,
    "xpcnn_col2im",
)

_max_pool_forward_kernel = cupy.ElementwiseKernel(
    "raw T x, " + _WINDOW_PARAMS + ", bool skip_nan",
    "T out, int16 arg",
    """
    const int ow = (int)(i % OW);
    const int oh = (int)((i / OW) % OH);
    const long long nc = i / ((long long)OW * OH);
    T best = 0;
    int best_k = -1;
    for (int k = 0; k < FH * FW; ++k) {
        const int h = oh * S + k / FW - P;
        const int w = ow * S + k % FW - P;
        if (h < 0 || h >= H || w < 0 || w >= W) continue;  // padding never wins
        const T v = x[(nc * H + h) * W + w];
        // strict >: the first maximum wins; the first NaN wins (loses, with skip_nan)
        const bool nan_wins = skip_nan ? (isnan(best) && !isnan(v)) : (isnan(v) && !isnan(best));
        if (best_k < 0 || v > best || nan_wins) {
            best = v;
            best_k = k;
        }
    }
    out = best;
    arg = (short)best_k;
    """,
    "xpcnn_max_pool_forward",
)

_max_pool_backward_kernel = cupy.ElementwiseKernel(
    "raw T dout, raw int16 arg, " + _WINDOW_PARAMS,
    "T dx",
    """
    const int w = (int)(i % W);
    const int h = (int)((i / W) % H);
    const long long nc = i / ((long long)W * H);
    T acc = 0;
    for (int k = 0; k < FH * FW; ++k) {
        const int dh = h + P - k / FW;
        const int dw = w + P - k % FW;
        if (dh < 0 || dw < 0 || dh % S != 0 || dw % S != 0) continue;
        const int oh = dh / S;
        const int ow = dw / S;
        if (oh >= OH || ow >= OW) continue;
        const long long o = (nc * OH + oh) * OW + ow;
        if (arg[o] == k) acc += dout[o];
    }
    dx = acc;
    """,
    "xpcnn_max_pool_backward",
)


_adam_kernel = cupy.ElementwiseKernel(
    "T grad, T param, T one_minus_beta1, T one_minus_beta2, T eps, T lr_t",
    "T new_param, T m, T v",
    """
    m = m + (grad - m) * one_minus_beta1;
    v = v + (grad * grad - v) * one_minus_beta2;
    new_param = param - m * lr_t / (sqrt(v) + eps);
    """,
    "xpcnn_adam",
    options=("--fmad=false",),  # an FMA would round once where the generic code rounds twice
)


def adam_update(
    param: Any,
    grad: Any,
    m: Any,
    v: Any,
    lr_t: float,
    one_minus_beta1: float,
    one_minus_beta2: float,
    eps: float,
) -> Any:
    """One Adam step, one kernel: ``m`` and ``v`` (the optimizer's own arrays, of
    ``param``'s shape and dtype) updated in place, the new parameter returned as
    a new array (``param`` is not written)."""
    scalar = param.dtype.type
    with param.device:
        new_param = cupy.empty_like(param)
        _adam_kernel(
            grad,
            param,
            scalar(one_minus_beta1),
            scalar(one_minus_beta2),
            scalar(eps),
            scalar(lr_t),
            new_param,
            m,
            v,
        )
    return new_param


def im2col(
    input_data: Any, filter_h: int, filter_w: int, stride: int, pad: int, OH: int, OW: int
) -> Any:
    """The book's ``im2col``: (N, C, H, W) -> col (N*OH*OW, C*FH*FW), one kernel."""
    N, C, H, W = input_data.shape
    with input_data.device:
        img = cupy.ascontiguousarray(input_data)
        col = cupy.empty((N * OH * OW, C * filter_h * filter_w), dtype=img.dtype)
        _im2col_kernel(img, C, H, W, OH, OW, filter_h, filter_w, stride, pad, col)
    return col


def col2im(
    col: Any,
    input_shape: tuple[int, int, int, int],
    filter_h: int,
    filter_w: int,
    stride: int,
    pad: int,
    OH: int,
    OW: int,
) -> Any:
    """Adjoint of :func:`im2col`: col (N*OH*OW, C*FH*FW) -> (N, C, H, W), one kernel."""
    N, C, H, W = input_shape
    with col.device:
        col = cupy.ascontiguousarray(col)
        img = cupy.empty((N, C, H, W), dtype=col.dtype)
        _col2im_kernel(col, C, H, W, OH, OW, filter_h, filter_w, stride, pad, img)
    return img


def max_pool2d_forward(
    x: Any,
    pool_h: int,
    pool_w: int,
    stride: int,
    pad: int,
    OH: int,
    OW: int,
    *,
    skip_nan: bool = False,
) -> tuple[Any, MaxPoolCache]:
    """Max pooling with the generic ``arg`` (int16 window offset of the first maximum).

    NaN propagates (the first NaN is the maximum); ``skip_nan=True`` makes a NaN
    lose to any number instead (a window of NaN only gives NaN), for
    :func:`xpcnn.ops.relu_max_pool2d_forward`.
    """
    N, C, H, W = x.shape
    with x.device:
        x = cupy.ascontiguousarray(x)
        out = cupy.empty((N, C, OH, OW), dtype=x.dtype)
        arg = cupy.empty((N, C, OH, OW), dtype=cupy.int16)
        _max_pool_forward_kernel(
            x, C, H, W, OH, OW, pool_h, pool_w, stride, pad, bool(skip_nan), out, arg
        )
    return out, MaxPoolCache(tuple(x.shape), arg, pool_h, pool_w, stride, pad)


@dataclass(frozen=True)
class MaxPoolCache:
    """The CuPy max pooling's cache: ``arg`` as in the generic path."""

    x_shape: tuple[int, ...]
    arg: Any
    pool_h: int
    pool_w: int
    stride: int
    pad: int

    def backward(self, dout: Any) -> Any:
        """Each input pixel gathers the ``dout`` of the windows whose maximum it is."""
        N, C, H, W = self.x_shape
        OH, OW = dout.shape[2], dout.shape[3]
        with dout.device:
            dout = cupy.ascontiguousarray(dout)
            dx = cupy.empty((N, C, H, W), dtype=dout.dtype)
            _max_pool_backward_kernel(
                dout, self.arg, C, H, W, OH, OW, self.pool_h, self.pool_w, self.stride, self.pad, dx
            )
        return dx
