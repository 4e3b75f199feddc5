"""Window arithmetic shared by the generic ops, the fast paths and the layers.

Output sizes, window argument checks and the strided slices of a sliding window
(other argument checks are in :mod:`xpcnn._checks`). It imports no other xpcnn
module, so both :mod:`xpcnn.ops` and :mod:`xpcnn._fast` sit above it and every
import points one way (see :mod:`xpcnn._fast`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_extra as xpx


def conv_output_size(input_size: int, filter_size: int, stride: int = 1, pad: int = 0) -> int:
    """The book's output size ``(H + 2P - FH) // S + 1``."""
    return (input_size + 2 * pad - filter_size) // stride + 1


def check_window(
    shape: tuple[int, ...],
    filter_h: int,
    filter_w: int,
    stride: int,
    pad: int,
    *,
    what: str,
    batched: bool = True,
) -> tuple[int, int]:
    """Validate an input shape against a window; return ``(OH, OW)``.

    ``shape`` is (N, C, H, W), or one example's (C, H, W) when ``batched`` is
    False. Raises ValueError naming the shapes for a wrong number of axes, a
    non-positive stride or filter, a negative pad, or an output smaller than 1x1.
    """
    if batched and len(shape) != 4:
        raise ValueError(
            f"{what} expects a 4-D input (N, C, H, W), got shape {tuple(shape)}; "
            "reshape flat images with x.reshape(N, C, H, W)"
        )
    if not batched and len(shape) != 3:
        raise ValueError(f"{what} expects inputs (C, H, W), got {tuple(shape)}")
    for name, v, low in (
        ("stride", stride, 1),
        ("filter_h", filter_h, 1),
        ("filter_w", filter_w, 1),
        ("pad", pad, 0),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ValueError(f"{what}: {name} must be an integer >= {low}, got {v!r}")
    H, W = shape[-2], shape[-1]
    OH = conv_output_size(H, filter_h, stride, pad)
    OW = conv_output_size(W, filter_w, stride, pad)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"{what}: a {filter_h}x{filter_w} window with stride {stride} and pad {pad} does not fit "
            f"the input of shape {tuple(shape)} (output would be {OH}x{OW}); "
            "use a smaller filter, more padding or a larger input"
        )
    return OH, OW


def pad_hw(x: Any, pad: int, value: float = 0.0, *, xp: Any) -> Any:
    """Pad the last two axes of ``x`` by ``pad`` on each side with ``value``."""
    if pad == 0:
        return x
    return xpx.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=value, xp=xp)


def window_slices(i: int, j: int, stride: int, OH: int, OW: int) -> tuple[Any, ...]:
    """Index of the (N, C, OH, OW) view at window offset (i, j).

    The stop ``i + stride*(OH-1) + 1`` is exact: the book's ``i + stride*OH`` can
    run past the end, which the array API standard does not promise to clip.
    """
    return (
        slice(None),
        slice(None),
        slice(i, i + stride * (OH - 1) + 1, stride),
        slice(j, j + stride * (OW - 1) + 1, stride),
    )


def crop_hw(x: Any, pad: int) -> Any:
    """Undo :func:`pad_hw`: the (N, C, H, W) interior of a padded array (a view)."""
    if pad == 0:
        return x
    return x[:, :, pad:-pad, pad:-pad]


def fold_windows(
    part: Callable[[int, int], Any],
    filter_h: int,
    filter_w: int,
    stride: int,
    pad: int,
    shape: tuple[int, ...],
    *,
    xp: Any,
) -> Any:
    """The adjoint of taking the window views: the (N, C, H, W) array of ``shape`` in
    which each element is the sum of the ``part(i, j)`` (N, C, OH, OW) elements whose
    view at window offset (i, j) (:func:`window_slices` of the padded input) holds it.
    col2im and pooling's backward pass; dtype and device of the parts.

    Without scatters (XLA runs a slice addition per offset as a slow scatter, and each
    stops fusion): the padded rows ``s*c + r`` and columns ``s*d + q`` of one stride
    residue (r, q) are reached only by the offsets ``i = r + s*a``, ``j = q + s*b``,
    each at a plain shift (a, b) on that residue's grid, so a grid is a sum of
    zero-padded parts, and the s*s grids interleave into the image by a stack and a
    reshape. Stride 1 is one grid; windows that tile (stride == filter) put one part
    in each grid, with no additions. Each element receives its terms in row-major
    offset order, as one slice addition per offset gave them (the NumPy fast path's
    convolution gradient is compared with it bit for bit).
    """
    N, C, H, W = shape
    s = stride
    Hp, Wp = H + 2 * pad, W + 2 * pad
    Hc, Wc = -(-Hp // s), -(-Wp // s)  # a residue's grid: its rows and columns
    grids: list[Any] = []
    for r in range(s):
        for q in range(s):
            grid = None
            for a, i in enumerate(range(r, filter_h, s)):
                for b, j in enumerate(range(q, filter_w, s)):
                    p = part(i, j)
                    widths = (a, Hc - p.shape[2] - a), (b, Wc - p.shape[3] - b)
                    if any(widths[0] + widths[1]):
                        p = xpx.pad(p, ((0, 0), (0, 0), *widths), xp=xp)
                    # 0.0 + p first, as the slice additions added to zeros: no -0.0 out
                    grid = p + 0.0 if grid is None else grid + p
            grids.append(grid)
    if s == 1:
        return crop_hw(grids[0], pad)
    zero = xp.zeros_like(grids[0])  # for the residues no offset reaches (stride > filter)
    rows = [
        xp.reshape(
            xp.stack([zero if g is None else g for g in grids[r * s : (r + 1) * s]], axis=-1),
            (N, C, Hc, Wc * s),
        )
        for r in range(s)
    ]
    img = xp.reshape(xp.stack(rows, axis=3), (N, C, Hc * s, Wc * s))
    return crop_hw(img[:, :, :Hp, :Wp], pad)
