"""im2col / col2im and convolution, written once against the array API standard."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from array_api_compat import array_namespace

from .. import _fast
from .._checks import check_floating
from .._window import check_window, fold_windows, pad_hw, window_slices
from .dense import relu_forward

__all__ = [
    "ConvCache",
    "ConvReluCache",
    "Im2colCache",
    "col2im",
    "conv2d_forward",
    "conv2d_relu_forward",
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
    return _im2col_generic(input_data, filter_h, filter_w, stride, pad, OH, OW)


def _im2col_generic(
    input_data: Any, filter_h: int, filter_w: int, stride: int, pad: int, OH: int, OW: int
) -> Any:
    xp = array_namespace(input_data)
    N, C, _, _ = input_data.shape
    img = pad_hw(input_data, pad, xp=xp)
    # One strided view per filter offset, stacked: no writes, so it runs on every backend.
    col = xp.stack(
        [
            img[window_slices(i, j, stride, OH, OW)]
            for i in range(filter_h)
            for j in range(filter_w)
        ],
        axis=2,
    )  # (N, C, FH*FW, OH, OW)
    col = xp.permute_dims(col, (0, 3, 4, 1, 2))
    return xp.reshape(col, (N * OH * OW, C * filter_h * filter_w))


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
    return _col2im_generic(col, input_shape, filter_h, filter_w, stride, pad, OH, OW)


def _col2im_generic(
    col: Any,
    input_shape: tuple[int, int, int, int],
    filter_h: int,
    filter_w: int,
    stride: int,
    pad: int,
    OH: int,
    OW: int,
) -> Any:
    xp = array_namespace(col)
    N, C, _, _ = input_shape
    col = xp.reshape(col, (N, OH, OW, C, filter_h, filter_w))
    col = xp.permute_dims(col, (0, 3, 4, 5, 1, 2))  # (N, C, FH, FW, OH, OW)
    # Merging N and C copies the transposed view on strided libraries (NumPy, torch),
    # once, so that each offset's part is contiguous rather than gathered FH*FW times.
    col = xp.reshape(col, (N * C, filter_h, filter_w, OH, OW))
    return fold_windows(
        lambda i, j: xp.reshape(col[:, i, j, :, :], (N, C, OH, OW)),
        filter_h,
        filter_w,
        stride,
        pad,
        input_shape,
        xp=xp,
    )


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
    """The generic path's cache: the book's ``col`` (N*OH*OW, C*FH*FW) from
    :func:`im2col` and ``col_W`` (C*FH*FW, FN)."""

    x_shape: tuple[int, int, int, int]
    col: Any
    col_W: Any
    W_shape: tuple[int, ...]
    stride: int
    pad: int

    def backward(self, dout: Any, *, need_dx: bool = True) -> tuple[Any, Any, Any]:
        xp = array_namespace(dout)
        FN, _, FH, FW = self.W_shape
        dout = xp.reshape(xp.permute_dims(dout, (0, 2, 3, 1)), (-1, FN))
        db = xp.sum(dout, axis=0)
        dW = xp.reshape(xp.matrix_transpose(xp.matrix_transpose(self.col) @ dout), self.W_shape)
        if not need_dx:
            return None, dW, db
        dcol = dout @ xp.matrix_transpose(self.col_W)
        dx = col2im(dcol, self.x_shape, FH, FW, self.stride, self.pad)
        return dx, dW, db


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
    col = im2col(x, FH, FW, stride, pad)
    col_W = xp.matrix_transpose(xp.reshape(W, (FN, C * FH * FW)))  # (C*FH*FW, FN)
    out = col @ col_W + b
    out = xp.permute_dims(xp.reshape(out, (N, OH, OW, FN)), (0, 3, 1, 2))
    return out, Im2colCache(tuple(x.shape), col, col_W, tuple(W.shape), stride, pad)


@dataclass(frozen=True)
class ConvReluCache:
    """Convolution then ReLU, op by op: the convolution's cache and the ReLU's."""

    conv: ConvCache
    relu: Any

    def backward(self, dout: Any, *, need_dx: bool = True) -> tuple[Any, Any, Any]:
        return self.conv.backward(self.relu.backward(dout), need_dx=need_dx)


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
    return y, ConvReluCache(conv, relu)
