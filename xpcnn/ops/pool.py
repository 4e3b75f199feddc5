"""Max and average pooling by a running reduction over the FH*FW strided views.

No im2col: each window offset is one strided view of the (padded) input, so
the forward pass is FH*FW element-wise passes and the backward pass folds FH*FW
parts back into the input's shape (:func:`~xpcnn._window.fold_windows`).

NaN policy (PyTorch's): a NaN anywhere in a max-pooling window makes that
window's output NaN, and its gradient goes to the first NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from array_api_compat import array_namespace, device

from .. import _fast
from .._checks import check_floating
from .._window import check_window, fold_windows, pad_hw, window_slices
from .dense import ReluCache, relu_forward

__all__ = [
    "ArgmaxPoolCache",
    "AvgPoolCache",
    "PoolCache",
    "avg_pool2d_forward",
    "max_pool2d_forward",
    "relu_max_pool2d_forward",
]


class PoolCache(Protocol):
    """What a pooling forward pass returns for the backward pass: an object that
    knows how to go back (the generic path's :class:`ArgmaxPoolCache` or
    :class:`AvgPoolCache`, or a fast path's own)."""

    def backward(self, dout: Any) -> Any:
        """``dx`` (N, C, H, W) for ``dout`` (N, C, OH, OW), dtype of ``dout``."""
        ...


@dataclass(frozen=True)
class ArgmaxPoolCache:
    """Generic max pooling: ``arg`` (N, C, OH, OW) int16, the window offset
    (row-major) of each output's maximum."""

    x_shape: tuple[int, ...]
    arg: Any
    pool_h: int
    pool_w: int
    stride: int
    pad: int

    def backward(self, dout: Any) -> Any:
        xp = array_namespace(dout)
        zero = xp.zeros((), dtype=dout.dtype, device=device(dout))
        return _fold_windows(self, dout, lambda k: xp.where(self.arg == k, dout, zero))


@dataclass(frozen=True)
class AvgPoolCache:
    """Average pooling: only the shapes."""

    x_shape: tuple[int, ...]
    pool_h: int
    pool_w: int
    stride: int
    pad: int

    def backward(self, dout: Any) -> Any:
        share = dout / float(self.pool_h * self.pool_w)
        return _fold_windows(self, dout, lambda k: share)


def _fold_windows(cache: ArgmaxPoolCache | AvgPoolCache, dout: Any, part: Any) -> Any:
    """dx (N, C, H, W): each ``part(k)`` (N, C, OH, OW) added at window offset k's strided
    view of the padded input (:func:`~xpcnn._window.fold_windows`), then cropped."""
    pw = cache.pool_w
    return fold_windows(
        lambda i, j: part(i * pw + j),
        cache.pool_h,
        pw,
        cache.stride,
        cache.pad,
        cache.x_shape,
        xp=array_namespace(dout),
    )


def _check_max_pool(x: Any, pool_h: int, pool_w: int, stride: int, pad: int) -> tuple[int, int]:
    OH, OW = check_window(tuple(x.shape), pool_h, pool_w, stride, pad, what="max pooling")
    check_floating(x, "max pooling")
    if 2 * pad > min(pool_h, pool_w):
        raise ValueError(
            f"max pooling: pad {pad} must be at most half the window {pool_h}x{pool_w} "
            "(else some windows would hold only padding)"
        )
    return OH, OW


def max_pool2d_forward(
    x: Any, pool_h: int, pool_w: int, stride: int = 2, pad: int = 0, *, nan_free: bool = False
) -> tuple[Any, PoolCache]:
    """Max pooling.

    Padding never wins a maximum, not even over -inf (PyTorch semantics): a
    mask of real positions decides, and the padding value itself is finite
    (CuPy's reductions have mishandled infinities). A NaN anywhere in a window
    gives NaN (PyTorch semantics). Ties, and several NaNs, go to the first
    offset in row-major window order, like ``argmax``.

    Parameters
    ----------
    x : array (N, C, H, W)
    nan_free : bool
        The caller's promise that ``x`` holds no NaN (a ReLU's output): the generic
        path then skips its NaN bookkeeping, with the same results. XLA cannot
        vectorise that bookkeeping; a compiled SimpleConvNet step ran 1.15-1.2x
        faster without it. Fast paths ignore it.

    Returns
    -------
    out : array (N, C, OH, OW), dtype of ``x``
    cache : PoolCache (``cache.backward(dout)`` -> dx (N, C, H, W))
    """
    OH, OW = _check_max_pool(x, pool_h, pool_w, stride, pad)
    fast = _fast.lookup("max_pool2d_forward", x)
    if fast is not None:
        return fast(x, pool_h, pool_w, stride, pad, OH, OW)
    xp = array_namespace(x)
    img = pad_hw(x, pad, float(xp.finfo(x.dtype).min), xp=xp)
    out = img[window_slices(0, 0, stride, OH, OW)]
    arg = xp.zeros(out.shape, dtype=xp.int16, device=device(x))
    if pad:
        # Which positions are real input: padding must lose even to -inf.
        valid = (
            pad_hw(xp.ones((1, 1, *x.shape[2:]), dtype=xp.int8, device=device(x)), pad, xp=xp) > 0
        )
        from_pad = ~valid[window_slices(0, 0, stride, OH, OW)]
    for k in range(1, pool_h * pool_w):
        idx = window_slices(k // pool_w, k % pool_w, stride, OH, OW)
        view = img[idx]
        gt = view > out
        if not nan_free:  # or the first NaN (NaN beats every number)
            gt = gt | (xp.isnan(view) & ~xp.isnan(out))
        if pad:
            gt = valid[idx] & (gt | from_pad)
            from_pad = from_pad & ~gt
        out = xp.where(gt, view, out)
        arg = xp.where(gt, xp.asarray(k, dtype=xp.int16, device=device(x)), arg)
    return out, ArgmaxPoolCache(tuple(x.shape), arg, pool_h, pool_w, stride, pad)


@dataclass(frozen=True)
class _ReluThenPoolCache:
    relu: ReluCache
    pool: PoolCache

    def backward(self, dout: Any) -> Any:
        return self.relu.backward(self.pool.backward(dout))


@dataclass(frozen=True)
class _PoolThenReluCache:
    pool: PoolCache
    relu: ReluCache

    def backward(self, dout: Any) -> Any:
        return self.pool.backward(self.relu.backward(dout))


def relu_max_pool2d_forward(
    x: Any, pool_h: int, pool_w: int, stride: int = 2, pad: int = 0
) -> tuple[Any, PoolCache]:
    """ReLU then max pooling, ``max_pool2d_forward(relu_forward(x)[0], ...)``, as one op.

    Where the backend has a fast max pooling this runs as pooling then ReLU,
    which touches 1/(pool_h*pool_w) of the elements in the ReLU: maximum and
    ReLU commute, gradients included, once the pooling skips NaN (ReLU maps
    NaN to 0, so a NaN can never be the maximum of ReLU's output). The results
    are those of the plain order, NaN included.

    x : array (N, C, H, W) -> out : array (N, C, OH, OW); cache : PoolCache
    """
    OH, OW = _check_max_pool(x, pool_h, pool_w, stride, pad)
    fast = _fast.lookup("max_pool2d_forward", x)
    if fast is None:
        y, relu = relu_forward(x)
        out, pool = max_pool2d_forward(y, pool_h, pool_w, stride, pad, nan_free=True)
        return out, _ReluThenPoolCache(relu, pool)
    pooled, pool = fast(x, pool_h, pool_w, stride, pad, OH, OW, skip_nan=True)
    out, relu = relu_forward(pooled)
    return out, _PoolThenReluCache(pool, relu)


def avg_pool2d_forward(
    x: Any, pool_h: int, pool_w: int, stride: int = 2, pad: int = 0
) -> tuple[Any, PoolCache]:
    """Average pooling; padding counts as zeros in the mean (PyTorch's default
    ``count_include_pad=True``).

    x : array (N, C, H, W) -> out : array (N, C, OH, OW); cache : PoolCache
    """
    xp = array_namespace(x)
    OH, OW = check_window(tuple(x.shape), pool_h, pool_w, stride, pad, what="average pooling")
    check_floating(x, "average pooling")
    img = pad_hw(x, pad, xp=xp)
    out = img[window_slices(0, 0, stride, OH, OW)]
    for k in range(1, pool_h * pool_w):
        out = out + img[window_slices(k // pool_w, k % pool_w, stride, OH, OW)]
    out = out / float(pool_h * pool_w)
    return out, AvgPoolCache(tuple(x.shape), pool_h, pool_w, stride, pad)
