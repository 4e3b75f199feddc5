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
  (N, FN, OH, OW) view: then pooling runs of N, and pooling and ReLU keep that
  layout (their outputs follow their inputs' strides), so it flows from layer to
  layer and back through the backward pass without copies.
* Convolutions: float32 by the compiled kernels of :mod:`.compiled` where the
  extension is built (and max pooling over disjoint windows too); otherwise, and
  for float64, by blocked GEMMs (:mod:`.numpy_conv`).
* Ufuncs with ``out=`` avoid temporaries (the running maximum, Adam).
* NumPy releases the GIL inside copies and ufunc loops, so pooling and ReLU run
  by ranges of channels on several threads at once (:mod:`._threads`), each
  writing its own part of a preallocated output.

This module imports no other xpcnn module but :mod:`xpcnn._window` and its
siblings :mod:`._threads`, :mod:`.compiled` and :mod:`.numpy_conv`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import EllipsisType

import numpy as np

from .._window import window_slices
from . import _threads, compiled
from .numpy_conv import ChwnConvCache, chwn, gemm_conv2d_forward

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


def conv2d_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray, stride: int, pad: int, OH: int, OW: int
) -> tuple[np.ndarray, ChwnConvCache | compiled.CompiledConvCache]:
    """Convolution by the compiled kernels (:mod:`.compiled`) for float32 where they
    are built; otherwise by blocked GEMMs (:mod:`.numpy_conv`). Either way the output
    (N, FN, OH, OW) is a view of a (FN, OH, OW, N) array ("CHWN")."""
    if compiled.available(x, W, b):
        return compiled.conv2d_forward(x, W, b, stride, pad, OH, OW, chwn(x, pad, pad))
    return gemm_conv2d_forward(x, W, b, stride, pad, OH, OW)


def conv2d_relu_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray, stride: int, pad: int, OH: int, OW: int
) -> tuple[np.ndarray, compiled.CompiledConvCache | ConvReluCache]:
    """Convolution then ReLU: in one pass by the compiled kernels (the ReLU in the
    output write, its mask in the backward pass), else the two fast ops in turn."""
    if compiled.available(x, W, b):
        return compiled.conv2d_forward(x, W, b, stride, pad, OH, OW, chwn(x, pad, pad), relu=True)
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
