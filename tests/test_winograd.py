"""Winograd F(2x2, 3x3) (xpcnn._fast.winograd) against naive loops and the generic ops.

Tolerance, derived rather than picked. Every value Winograd computes is a chain of
roundings; with u the unit roundoff (2^-24 float32, 2^-53 float64), the standard
bound for such a chain of depth k is |error| <= gamma_k * S, gamma_k = k*u / (1 - k*u),
where S is the same computation carried out on absolute values: |A^T| (sum_c
(|G| |g| |G^T|) * (|B^T| |d| |B|)) |A| per output tile, plus |b|. The transforms'
entries are 0, +-1, +-1/2, so S stays a small multiple of the direct sum |W| * |x|
(on these random shapes: median 7x, at most 25x where padding makes the direct sum
small). Depth along any path
(an n-term dot product counts n): filter transform G W G^T 3 + 3 (float64) + 1 (cast),
input transform 2, the GEMM over C channels C, bias 1, output transform 4 (two 3-term
sums per direction): k = C + 14. The input gradient is the same computation with FN
channels summed and no bias. The weight gradient: dout transform 2, input transform 2,
the GEMM and its accumulation over blocks, over all T tiles-times-images (<= 2T),
G^T P G 4 + 4 (float64) + 1 (cast): k = 2T + 13. A wrong index or sign gives errors
of the size of the output itself, about 1/(k*u) times the bound.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from xpcnn import _fast
from xpcnn._fast import winograd
from xpcnn.ops import conv2d_backward, conv2d_forward

# (C, FN, H, W, N, pad): odd and even sizes, N=1, pad 0..2, more filters than channels
SHAPES = [
    (3, 4, 7, 5, 2, 1),
    (2, 3, 6, 6, 1, 0),
    (5, 2, 9, 8, 3, 2),
    (1, 4, 5, 5, 1, 1),
    (16, 8, 8, 8, 4, 1),
    (4, 6, 3, 4, 2, 0),
]

BT, G, AT = winograd.BT, winograd.G, winograd.AT


def gamma(k: int, dtype: np.dtype) -> float:
    u = np.finfo(dtype).eps / 2
    return k * u / (1 - k * u)


def naive_conv(x: np.ndarray, W: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """(FN, OH, OW, N) float64 by loops over the 3x3 offsets; x (C, H, W, N)."""
    x, W = x.astype(np.float64), W.astype(np.float64)
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    OH, OW = xp.shape[1] - 2, xp.shape[2] - 2
    out = np.zeros((W.shape[0], OH, OW, x.shape[3]))
    for i in range(3):
        for j in range(3):
            out += np.einsum("fc,chwn->fhwn", W[:, :, i, j], xp[:, i : i + OH, j : j + OW])
    return out + b.astype(np.float64)[:, None, None, None]


def tiles(x: np.ndarray, pad: int, size: int, step: int, T: tuple[int, int]) -> np.ndarray:
    """(C, TH, TW, N, size, size) float64 tiles of ``x`` (C, H, W, N) zero-padded by
    ``pad`` on top/left and enough on bottom/right for T = (TH, TW) tiles."""
    C, H, W, N = x.shape
    TH, TW = T
    Hp, Wp = step * (TH - 1) + size, step * (TW - 1) + size
    xp = np.zeros((C, max(Hp, H + 2 * pad), max(Wp, W + 2 * pad), N))
    xp[:, pad : pad + H, pad : pad + W] = x
    win = sliding_window_view(xp[:, :Hp, :Wp], (size, size), axis=(1, 2))[:, ::step, ::step]
    return win.transpose(0, 1, 2, 3, 4, 5)  # (C, TH, TW, N, size, size)


def abs_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """S of the module docstring: Winograd on absolute values, (FN, OH, OW, N)."""
    OH, OW = x.shape[1] + 2 * pad - 2, x.shape[2] + 2 * pad - 2
    TH, TW = -(-OH // 2), -(-OW // 2)
    d = np.abs(tiles(x, pad, 4, 2, (TH, TW)))
    V = np.einsum("ik,cthnkl,jl->cthnij", np.abs(BT), d, np.abs(BT))
    U = np.einsum("ik,fckl,jl->fcij", np.abs(G), np.abs(W.astype(np.float64)), np.abs(G))
    M = np.einsum("fcij,cthnij->fthnij", U, V)
    Y = np.einsum("ai,fthnij,bj->ftahbn", np.abs(AT), M, np.abs(AT))
    FN, N = W.shape[0], x.shape[3]
    Y = Y.reshape(FN, 2 * TH, 2 * TW, N)[:, :OH, :OW]
    return Y + np.abs(b.astype(np.float64))[:, None, None, None]


def abs_weight_gradient(dout: np.ndarray, x: np.ndarray, pad: int) -> np.ndarray:
    """S for dW: G^T (sum over tiles of (|A| |dout| |A^T|) * (|B^T| |d| |B|)) G."""
    OH, OW = dout.shape[1:3]
    TH, TW = -(-OH // 2), -(-OW // 2)
    d = np.abs(tiles(x, pad, 4, 2, (TH, TW)))
    g = np.abs(tiles(dout, 0, 2, 2, (TH, TW)))
    V = np.einsum("ik,cthnkl,jl->cthnij", np.abs(BT), d, np.abs(BT))
    D = np.einsum("ki,fthnkl,lj->fthnij", np.abs(AT), g, np.abs(AT))
    P = np.einsum("fthnij,cthnij->fcij", D, V)
    return np.einsum("ia,fcij,jb->fcab", np.abs(G), P, np.abs(G))


def data(shape: tuple[int, ...], dtype: str, seed: int):
    C, FN, H, W, N, pad = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((C, H, W, N)).astype(dtype)
    Wt = rng.standard_normal((FN, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(FN).astype(dtype)
    OH, OW = H + 2 * pad - 2, W + 2 * pad - 2
    dout = rng.standard_normal((FN, OH, OW, N)).astype(dtype)
    return x, Wt, b, dout, pad


def assert_within(got: np.ndarray, ref: np.ndarray, bound: np.ndarray) -> None:
    err = np.abs(got.astype(np.float64) - ref)
    worst = float(np.max(err / bound))
    assert worst <= 1.0, f"error {worst:.3g} x the rounding bound"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_naive_loops_within_rounding_bound(shape, dtype):
    x, W, b, _, pad = data(shape, dtype, 0)
    out = winograd.conv3x3_forward(x, W, b, pad)
    ref = naive_conv(x, W, b, pad)
    assert out.shape == ref.shape and out.dtype == np.dtype(dtype)
    assert out.flags.c_contiguous
    C = x.shape[0]
    # the float64 reference's own rounding (9C terms) is added for float64 inputs
    bound = (gamma(C + 14, np.dtype(dtype)) + gamma(9 * C + 1, np.float64)) * abs_forward(
        x, W, b, pad
    )
    assert_within(out, ref, bound)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_matches_naive_loops_within_rounding_bound(shape, dtype):
    x, W, _, dout, pad = data(shape, dtype, 1)
    C, H, Wd, N = x.shape
    FN, OH, OW, _ = dout.shape
    dx, dW, db = winograd.conv3x3_backward(dout, x, W, pad)
    assert dx.shape == x.shape and dW.shape == W.shape and db.shape == (FN,)
    assert dx.dtype == dW.dtype == db.dtype == np.dtype(dtype)
    d64, x64, W64 = dout.astype(np.float64), x.astype(np.float64), W.astype(np.float64)
    # dx: the adjoint by loops, scattering dout through each offset
    dxp = np.zeros((C, H + 2 * pad, Wd + 2 * pad, N))
    for i in range(3):
        for j in range(3):
            dxp[:, i : i + OH, j : j + OW] += np.einsum("fc,fhwn->chwn", W64[:, :, i, j], d64)
    dx_ref = dxp[:, pad : pad + H, pad : pad + Wd]
    Wt = W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    S_dx = abs_forward(dout, Wt, np.zeros(C, dtype), 2 - pad)
    assert_within(dx, dx_ref, (gamma(FN + 13, dx.dtype) + gamma(9 * FN, np.float64)) * S_dx)
    # dW: correlations of the padded input with dout, by loops
    xp = np.pad(x64, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dW_ref = np.empty((FN, C, 3, 3))
    for i in range(3):
        for j in range(3):
            dW_ref[:, :, i, j] = np.einsum("fhwn,chwn->fc", d64, xp[:, i : i + OH, j : j + OW])
    T = -(-OH // 2) * -(-OW // 2) * N
    k = 2 * T + 13
    S_dW = abs_weight_gradient(dout, x, pad)
    assert_within(dW, dW_ref, (gamma(k, dW.dtype) + gamma(OH * OW * N, np.float64)) * S_dW)
    db_ref = d64.sum(axis=(1, 2, 3))
    assert_within(db, db_ref, gamma(OH * OW * N, db.dtype) * np.abs(d64).sum(axis=(1, 2, 3)))
    assert winograd.conv3x3_backward(dout, x, W, pad, need_dx=False)[0] is None


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_generic_ops(shape, dtype):
    """Against xpcnn.ops' generic im2col path, arrays in its (N, C, H, W) order."""
    x, W, b, dout, pad = data(shape, dtype, 2)
    C, FN = x.shape[0], W.shape[0]
    with _fast.enabled(False):
        out, cache = conv2d_forward(x.transpose(3, 0, 1, 2), W, b, 1, pad)
        dx, dW, db = conv2d_backward(dout.transpose(3, 0, 1, 2), cache)
    g_ref = gamma(9 * C + 1, np.dtype(dtype))  # the generic path's own rounding
    S = abs_forward(x, W, b, pad)
    assert_within(
        winograd.conv3x3_forward(x, W, b, pad),
        out.transpose(1, 2, 3, 0).astype(np.float64),
        (gamma(C + 14, np.dtype(dtype)) + g_ref) * S,
    )
    wdx, wdW, wdb = winograd.conv3x3_backward(dout, x, W, pad)
    S_dx = abs_forward(dout, W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), np.zeros(C), 2 - pad)
    g_dx = gamma(FN + 13, np.dtype(dtype)) + gamma(9 * FN + 1, np.dtype(dtype))
    assert_within(wdx, dx.transpose(1, 2, 3, 0).astype(np.float64), g_dx * S_dx)
    _, OH, OW, N = dout.shape
    T = -(-OH // 2) * -(-OW // 2) * N
    g_dW = gamma(2 * T + 13, np.dtype(dtype)) + gamma(OH * OW * N, np.dtype(dtype))
    assert_within(wdW, dW.astype(np.float64), g_dW * abs_weight_gradient(dout, x, pad))
    np.testing.assert_allclose(wdb, db, rtol=10 * gamma(OH * OW * N, np.dtype(dtype)))


@pytest.mark.parametrize("shape", [(3, 4, 9, 8, 2, 1), (2, 5, 13, 11, 3, 0)], ids=str)
def test_blocks_of_tile_rows_give_the_same_result(shape, monkeypatch):
    """Several blocks, the last one partial: bit-equal to one block (the same sums)."""
    x, W, b, dout, pad = data(shape, "float64", 3)
    whole = winograd.conv3x3_forward(x, W, b, pad), *winograd.conv3x3_backward(dout, x, W, pad)
    monkeypatch.setattr(winograd, "_BLOCK_BYTES", 1)  # one tile row per block
    blocked = winograd.conv3x3_forward(x, W, b, pad), *winograd.conv3x3_backward(dout, x, W, pad)
    np.testing.assert_array_equal(blocked[0], whole[0])
    np.testing.assert_array_equal(blocked[1], whole[1])
    # dW's sum over blocks is split differently: within the rounding bound of the loops
    np.testing.assert_allclose(blocked[2], whole[2], rtol=1e-12, atol=1e-12)


def test_bound_is_not_vacuous():
    """A one-ulp-scale bound catches a swapped filter offset (the wrong answer by far)."""
    x, W, b, _, pad = data((4, 4, 8, 8, 2, 1), "float32", 4)
    ref = naive_conv(x, W, b, pad)
    bound = gamma(4 + 14, np.float32) * abs_forward(x, W, b, pad)
    wrong = winograd.conv3x3_forward(x, W[:, :, ::-1], b, pad)
    assert np.max(np.abs(wrong - ref) / bound) > 1e3
    right = winograd.conv3x3_forward(x, W, b, pad)
    # and the observed float32 error is a sizeable fraction of it, not 1e-6 of it
    assert np.max(np.abs(right - ref) / bound) > 1e-3
