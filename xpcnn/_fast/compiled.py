"""Compiled float32 convolution kernels behind the NumPy fast path.

:mod:`xpcnn._fast._conv` is a C extension built by ``pip install .`` (optional: with no
compiler the build goes on without it and the NumPy fast path's GEMMs serve). It holds
a direct convolution in the fast path's "CHWN" layout (batch innermost): the forward
pass and the filter gradient, each for AVX-512, AVX2 and a portable instruction set,
the best the CPU runs chosen at import. The input gradient is the forward kernel run
on ``dout`` (placed, for stride > 1, every ``stride`` rows and columns) with the
filters flipped and transposed, so one kernel serves both directions.

Why a direct convolution: with the batch innermost, one output row under one filter
offset reads one contiguous run of an input row, so a register tile of output
channels by vectors of that run needs no im2col copy; the NumPy path's thin SGEMMs and
its unfolding traffic are what kept it behind PyTorch (scripts/BENCHMARKS.md,
"Compiled convolution").

Every call checks dtypes, layout and shapes here, and the extension checks each
buffer's size against the geometry again, so a bad call raises instead of reading
out of bounds. The kernels release the GIL; a layer's output rows are shared out
among :func:`xpcnn.cpu_threads` threads like the NumPy path's.

3x3 stride-1 convolutions with enough channels run as Winograd F(2x2, 3x3) (4
multiply-adds per output and channel instead of 9; see ``_conv_kernels.h``): the forward
pass, the input gradient and the filter gradient. ``XPCNN_WINOGRAD=0`` or
:func:`winograd` (``False``) keeps them on the direct kernel.

Selection: ``XPCNN_ISA=avx512|avx2|generic`` forces an instruction set and
``XPCNN_ISA=none`` turns the compiled kernels off (the NumPy path runs); :func:`using`
does the same for a ``with`` block, in the current thread or task only.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import _threads
from .numpy_conv import zero_border

__all__ = [
    "CompiledConvCache",
    "CompiledPoolCache",
    "available",
    "check_environment",
    "conv2d_forward",
    "isa",
    "isas",
    "max_pool2d_forward",
    "pool_available",
    "status",
    "using",
    "winograd",
]

# The extension, or None; Any: it ships no type stubs.
_conv: Any
try:
    from . import _conv  # type: ignore[attr-defined, no-redef]

    _IMPORT_ERROR = ""
except ImportError as error:  # built without a compiler, or a foreign platform
    _conv = None
    _IMPORT_ERROR = str(error)

#: The names XPCNN_ISA and :func:`using` accept besides the instruction sets.
OFF = "none"


def _fp_control() -> Callable[[bool], bool] | None:
    """The extension's ``flush_denormals(on) -> previous`` where this CPU has the
    control bits (x86-64 MXCSR FTZ/DAZ, arm64 FPCR FZ), else None."""
    if _conv is None:
        return None
    try:
        _conv.flush_denormals(_conv.flush_denormals(False))
    except NotImplementedError:
        return None
    return _conv.flush_denormals


#: ``set(on) -> previous`` for the calling thread, or None (see :func:`_fp_control`).
fp_control = _threads.fp_control = _fp_control()


def isas() -> list[str]:
    """The instruction sets of the compiled kernels that this CPU runs, best first
    (empty when the extension is not built)."""
    return [] if _conv is None else list(_conv.isas())


def _default() -> str | None:
    """The instruction set XPCNN_ISA asks for (checked), else the best one."""
    want = os.environ.get("XPCNN_ISA", "").strip().lower()
    runs = isas()
    if not want:
        return runs[0] if runs else None
    if want == OFF:
        return None
    return _checked(want, "XPCNN_ISA")


def _checked(name: str, where: str) -> str:
    runs = isas()
    if name in runs:
        return name
    if _conv is None:
        raise ConfigError(
            f"{where}={name}: the compiled kernels are not built ({_IMPORT_ERROR}); "
            f"reinstall xpcnn with a C compiler, or use {OFF}"
        )
    raise ConfigError(
        f"{where}={name}: this CPU runs {', '.join(runs)}; choose one of them or {OFF}"
    )


_ISA: contextvars.ContextVar[str | None] = contextvars.ContextVar("xpcnn_isa")


def isa() -> str | None:
    """The instruction set convolutions use here (None: the NumPy path)."""
    try:
        return _ISA.get()
    except LookupError:
        chosen = _default()  # raises for a bad XPCNN_ISA, on first use, every time
        _ISA.set(chosen)
        return chosen


@contextlib.contextmanager
def using(name: str | None) -> Iterator[None]:
    """Run the compiled kernels with instruction set ``name`` (``None`` or ``"none"``:
    the NumPy path) inside the ``with`` block, for this thread or task only."""
    chosen = None if name in (None, OFF) else _checked(str(name), "isa")
    token = _ISA.set(chosen)
    try:
        yield
    finally:
        _ISA.reset(token)


_WINOGRAD: contextvars.ContextVar[bool] = contextvars.ContextVar("xpcnn_winograd")

#: Winograd F(2x2, 3x3) when both channel counts are at least this (the forward pass and
#: the input gradient), and for the filter gradient also their product at least
#: WINOGRAD_MIN_DW: below, its transforms cost about what it saves (scripts/BENCHMARKS.md,
#: "Third session: Winograd F(2x2, 3x3) in the kernels").
WINOGRAD_MIN_C = 16
WINOGRAD_MIN_DW = 512


def _winograd_on() -> bool:
    try:
        return _WINOGRAD.get()
    except LookupError:
        want = os.environ.get("XPCNN_WINOGRAD", "1").strip().lower()
        if want not in ("0", "1"):
            raise ConfigError(f"XPCNN_WINOGRAD={want}: use 1 (the default) or 0") from None
        _WINOGRAD.set(want == "1")
        return want == "1"


@contextlib.contextmanager
def winograd(on: bool) -> Iterator[None]:
    """Let 3x3 stride-1 convolutions run as Winograd F(2x2, 3x3) (``True``, the default)
    or keep every convolution on the direct kernel (``False``) inside the ``with``
    block, for this thread or task only."""
    token = _WINOGRAD.set(bool(on))
    try:
        yield
    finally:
        _WINOGRAD.reset(token)


def check_environment() -> None:
    """Raise :class:`~xpcnn.errors.ConfigError` now for a bad ``XPCNN_ISA`` or
    ``XPCNN_WINOGRAD``, not at the first convolution that reads it."""
    isa()
    _winograd_on()


def status() -> str:
    """One line for ``xpcnn info``: which convolution path runs and why."""
    if _conv is None:
        return f"NumPy GEMMs (compiled kernels not built: {_IMPORT_ERROR})"
    try:
        chosen = isa()
    except ValueError as error:
        return f"error: {error}"
    if chosen is None:
        return "NumPy GEMMs (compiled kernels switched off: XPCNN_ISA=none)"
    try:
        wino = "3x3 stride 1 by Winograd F(2x2, 3x3)" if _winograd_on() else "Winograd off"
    except ValueError as error:
        return f"error: {error}"
    return f"compiled {chosen} (this CPU runs: {', '.join(isas())}); {wino}"


def available(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> bool:
    """Whether the compiled kernels take this convolution: float32 throughout, a
    non-empty batch, and an instruction set selected."""
    return (
        x.dtype == np.float32
        and W.dtype == np.float32
        and b.dtype == np.float32
        and x.shape[0] > 0
        and isa() is not None
    )


def _packed(W: np.ndarray, mr: int) -> np.ndarray:
    """``W`` (FN, C, FH, FW) as (ceil(FN / mr), C*FH*FW, mr): each block of ``mr``
    filters interleaved, the way the kernel broadcasts them; zero rows past FN."""
    FN = W.shape[0]
    blocks = -(-FN // mr)
    rows = np.zeros((blocks * mr, W[0].size), dtype=np.float32)
    rows[:FN] = W.reshape(FN, -1)
    return np.ascontiguousarray(rows.reshape(blocks, mr, -1).transpose(0, 2, 1))


#: Winograd F(2x2, 3x3)'s filter transform U = G g G^T (Lavin & Gray, 2016) as one
#: (16, 9) matrix on the flattened 3x3 filter: kron(G, G), exact in float32.
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
_GG = np.kron(_G, _G).astype(np.float32)


def _winograd_packed(wp: np.ndarray) -> np.ndarray:
    """The transformed filters ``U = G g G^T`` packed (16, blocks, C, mr) from the
    direct kernel's packing ``wp`` (blocks, C*9, mr) of 3x3 filters: one small GEMM."""
    blocks, K, mr = wp.shape
    return np.tensordot(_GG, wp.reshape(blocks, K // 9, 9, mr), axes=([1], [2]))


#: Multiply-adds below which a convolution stays on the calling thread (about 20 us):
#: handing a part to another thread costs tens of microseconds.
PARALLEL_MACS = 1 << 20


def _parts(macs: int) -> int:
    """At most how many threads a convolution of ``macs`` multiply-adds is split among."""
    return max(1, macs // max(1, PARALLEL_MACS))


def _correlate(
    img: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    stride: int,
    OH: int,
    OW: int,
    name: str,
    relu: bool = False,
) -> np.ndarray:
    """The (FN, OH, OW, N) cross-correlation of ``img`` (C, Hp, Wp, N), C-contiguous
    and already padded, with ``W`` (FN, C, FH, FW), plus ``b`` (``relu``: then clamped
    at 0, NaN to 0, as :func:`xpcnn.ops.relu_forward`); output rows shared out among
    the fast paths' threads."""
    FN, C, FH, FW = W.shape
    _, Hp, Wp, N = img.shape
    wp = _packed(W, _conv.tile(name))
    bias = np.ascontiguousarray(b, dtype=np.float32)
    out = np.empty((FN, OH, OW, N), dtype=np.float32)
    geom = (C, Hp, Wp, N, FN, FH, FW, stride, OH, OW)

    wino = _winograd(W.shape, stride)
    up = _winograd_packed(wp) if wino else None

    def rows(r: range) -> None:
        _conv.forward(img, wp, bias, out, geom, r.start, r.stop, relu, name, up)

    _map_rows(rows, OH, wino, _parts(out.size * C * FH * FW))
    return out


def _winograd(W_shape: tuple[int, ...], stride: int, dW: bool = False) -> bool:
    """Whether a convolution with filters of ``W_shape`` (FN, C, FH, FW) runs as
    Winograd F(2x2, 3x3): its forward pass (or with ``dW``, its filter gradient)."""
    FN, C, FH, FW = W_shape
    return (
        FH == FW == 3
        and stride == 1
        and min(C, FN) >= WINOGRAD_MIN_C
        and (not dW or C * FN >= WINOGRAD_MIN_DW)
        and _winograd_on()
    )


def _map_rows(fn: Callable[[range], Any], OH: int, tiles: bool, parts: int) -> list[Any]:
    """``fn`` over ranges of ``OH`` output rows shared out among the threads; with
    ``tiles``, whole rows of Winograd's 2x2 tiles, so no tile's transforms run twice."""
    if not tiles:
        return _threads.map_ranges(fn, OH, parts)
    return _threads.map_ranges(
        lambda r: fn(range(2 * r.start, min(2 * r.stop, OH))), (OH + 1) // 2, parts
    )


def conv2d_forward(
    x: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    stride: int,
    pad: int,
    OH: int,
    OW: int,
    img: np.ndarray,
    relu: bool = False,
) -> tuple[np.ndarray, CompiledConvCache]:
    """The compiled forward pass: ``img`` is ``x`` zero-padded and stored (C, H + 2P,
    W + 2P, N), C-contiguous (:func:`xpcnn._fast.numpy_conv.chwn`). The output (N, FN,
    OH, OW) is a view of the (FN, OH, OW, N) result, as on the NumPy path. ``relu``:
    a ReLU follows in the same pass (and its mask in the backward pass's)."""
    name = isa()
    assert name is not None  # available() said so
    W = np.ascontiguousarray(W)
    out = _correlate(img, W, b, stride, OH, OW, name, relu)
    cache = CompiledConvCache(tuple(x.shape), img, W, stride, pad, name, out if relu else None)
    return out.transpose(3, 0, 1, 2), cache


@dataclass(frozen=True)
class CompiledConvCache:
    """The compiled convolution's cache: ``img`` the zero-padded input stored (C, H +
    2P, W + 2P, N), ``W`` the filters, the instruction set of the forward pass (the
    backward pass runs the same one), and with a fused ReLU its output ``relu_out``
    (FN, OH, OW, N): ``dout`` counts where it is > 0."""

    x_shape: tuple[int, ...]
    img: np.ndarray
    W: np.ndarray
    stride: int
    pad: int
    isa: str
    relu_out: np.ndarray | None = None

    def backward(
        self, dout: np.ndarray, *, need_dx: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """``(dx or None, dW, db)`` for ``dout`` (N, FN, OH, OW) float32 (the gradient of
        the ReLU's output where one is fused)."""
        FN, C, FH, FW = self.W.shape
        N, _, OH, OW = dout.shape
        d = np.ascontiguousarray(dout.transpose(1, 2, 3, 0), dtype=np.float32)  # (FN, OH, OW, N)
        _, Hp, Wp, _ = self.img.shape
        geom = (C, Hp, Wp, N, FN, FH, FW, self.stride, OH, OW)

        wino = _winograd(self.W.shape, self.stride, dW=True)

        def rows(r: range) -> tuple[np.ndarray, np.ndarray]:
            dW = np.empty((FN, C * FH * FW), dtype=np.float32)
            db = np.empty(FN, dtype=np.float32)
            if len(r):
                _conv.weight_grad(
                    self.img, d, dW, db, geom, r.start, r.stop, self.isa, self.relu_out, wino
                )
            else:
                dW[...], db[...] = 0, 0
            return dW, db

        (dW, db), *more = _map_rows(rows, OH, wino, _parts(d.size * C * FH * FW))
        for dW_part, db_part in more:
            dW += dW_part
            db += db_part
        dx = self._input_gradient(d) if need_dx else None
        return dx, dW.reshape(self.W.shape), db

    def _input_gradient(self, d: np.ndarray) -> np.ndarray:
        """``dx`` (N, C, H, W): ``d`` (FN, OH, OW, N) placed in a zero (FN, H + FH - 1,
        W + FW - 1, N) image at rows ``FH - 1 - pad + oh * stride`` (columns alike; those
        that fall outside it reach only padding; a fused ReLU's mask applied on the
        way), cross-correlated with the filters flipped and transposed to (C, FN, FH, FW)."""
        FN, C, FH, FW = self.W.shape
        N, _, H, W = self.x_shape
        OH, OW = d.shape[1], d.shape[2]
        img = np.empty((FN, H + FH - 1, W + FW - 1, N), dtype=np.float32)
        geom = (
            FN,
            OH,
            OW,
            N,
            H + FH - 1,
            W + FW - 1,
            FH - 1 - self.pad,
            FW - 1 - self.pad,
            self.stride,
        )
        # Stride 1: dout fills all but a border as wide as the padding it stands for.
        border = self.stride == 1 and self.pad < min(FH, FW)

        def channels(r: range) -> None:
            part = img[r.start : r.stop]
            if border:
                zero_border(part, FH - 1 - self.pad, FW - 1 - self.pad)
            else:
                part[...] = 0
            _conv.place(d, self.relu_out, img, geom, r.start, r.stop, self.isa)

        _threads.by_size(channels, FN, img.size)
        W_T = self.W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        zeros = np.zeros(C, dtype=np.float32)
        return _correlate(img, W_T, zeros, 1, H, W, self.isa).transpose(3, 0, 1, 2)


# -- max pooling --------------------------------------------------------------------------


def pool_available(x: np.ndarray, pool_h: int, pool_w: int, stride: int, pad: int) -> bool:
    """Whether the compiled max pooling takes this call: float32 ``x`` (N, C, H, W)
    stored (C, H, W, N) (as the fast convolution leaves it), disjoint windows (stride
    at least the window: each input element has at most one gradient, so the results
    are the generic ones exactly), no padding, a non-empty batch."""
    return (
        x.dtype == np.float32
        and pad == 0
        and stride >= max(pool_h, pool_w)
        and x.shape[0] > 0
        and x.transpose(1, 2, 3, 0).flags.c_contiguous
        and isa() is not None
    )


def max_pool2d_forward(
    x: np.ndarray, pool_h: int, pool_w: int, stride: int, OH: int, OW: int, skip_nan: bool
) -> tuple[np.ndarray, CompiledPoolCache]:
    """Max pooling of ``x`` (N, C, H, W), checked by :func:`pool_available`: the
    output (N, C, OH, OW) stored (C, OH, OW, N). ``skip_nan``: a NaN loses to any
    number (the ReLU-then-pool fusion's rule) instead of winning."""
    name = isa()
    assert name is not None  # pool_available() said so
    N, C, H, W = x.shape
    img = x.transpose(1, 2, 3, 0)
    out = np.empty((C, OH, OW, N), dtype=np.float32)
    geom = (C, H, W, N, pool_h, pool_w, stride, OH, OW)

    def channels(r: range) -> None:
        _conv.pool_forward(img, out, geom, skip_nan, r.start, r.stop, name)

    _threads.by_size(channels, C, x.size)
    return out.transpose(3, 0, 1, 2), CompiledPoolCache(img, out, geom, name)


@dataclass(frozen=True)
class CompiledPoolCache:
    """The compiled max pooling's cache: its input and output, stored (C, H, W, N)
    and (C, OH, OW, N), and the geometry."""

    img: np.ndarray
    out: np.ndarray
    geom: tuple[int, ...]
    isa: str

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """``dx`` (N, C, H, W), stored (C, H, W, N), for ``dout`` (N, C, OH, OW):
        each gradient to its window's first maximum (the generic ``arg``)."""
        d = np.ascontiguousarray(dout.transpose(1, 2, 3, 0), dtype=np.float32)
        dx = np.empty_like(self.img)
        C = self.img.shape[0]

        def channels(r: range) -> None:
            _conv.pool_backward(self.img, self.out, d, dx, self.geom, r.start, r.stop, self.isa)

        _threads.by_size(channels, C, dx.size)
        return dx.transpose(3, 0, 1, 2)
