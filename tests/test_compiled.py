"""The compiled convolution kernels (``xpcnn._fast._conv``) against the generic path.

Every instruction set this CPU runs is tested here (AVX-512, AVX2 and the portable
one on an AVX-512 machine), each selected with ``compiled.using``. References are
the generic array-API path in float64:

* on small integers every product and partial sum is exact in float32, so the
  compiled results must equal the reference exactly: a missing, doubled or
  misplaced term cannot hide in rounding;
* on random normals the error of each float32 sum of n terms is within the
  classic bound ``n * eps * sum|terms|``.

The extension is built by ``pip install .``; without it (no compiler) these tests
are skipped and the NumPy path serves (``tests/test_fast_paths.py``).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from helpers import pool_inputs

import xpcnn
from xpcnn import _fast
from xpcnn._fast import _threads, compiled
from xpcnn.ops import conv2d_forward, max_pool2d_forward, relu_max_pool2d_forward
from xpcnn.testing import assert_close_scaled

ISAS = compiled.isas()
pytestmark = pytest.mark.skipif(not ISAS, reason="compiled kernels not built (no C compiler)")
EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(params=ISAS or ["none"])
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each instruction set the CPU runs, with fast paths on."""
    with _fast.enabled(True), compiled.using(request.param):
        yield request.param


@pytest.fixture(
    params=[(i, w) for i in ISAS or ["none"] for w in (True, False)],
    ids=lambda p: p[0] + ("" if p[1] else "-direct"),
)
def conv_isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each instruction set, with 3x3 stride-1 convolutions on Winograd F(2x2, 3x3) (the
    default) and on the direct kernel."""
    name, on = request.param
    with _fast.enabled(True), compiled.using(name), compiled.winograd(on):
        yield name + ("" if on else "-direct")


def _cases() -> list[tuple[int, ...]]:
    """(N, C, H, W, FN, FH, FW, stride, pad): DeepConvNet's and SimpleConvNet's
    shapes, then seeded random ones: odd sizes, pad 0-3, stride 1-3, channel
    counts that are not multiples of a vector (4, 8, 16 floats), batch 1 and 257."""
    cases = [
        (100, 16, 8, 8, 16, 3, 3, 1, 1),
        (3, 1, 28, 28, 30, 5, 5, 1, 0),
        (257, 3, 6, 5, 17, 3, 3, 1, 1),
        (1, 5, 9, 7, 33, 3, 3, 2, 3),
        (2, 19, 9, 10, 35, 3, 3, 3, 0),
        (1, 1, 4, 4, 1, 1, 1, 1, 0),
    ]
    rng = np.random.default_rng(20)
    while len(cases) < 24:
        FH, FW = (int(v) for v in rng.integers(1, 6, 2))
        stride, pad = int(rng.integers(1, 4)), int(rng.integers(0, 4))
        H, W = (int(v) for v in rng.integers(1, 12, 2))
        if H + 2 * pad < FH or W + 2 * pad < FW:
            continue
        N = int(rng.choice([1, 2, 7, 20, 257]))
        C, FN = (int(v) for v in rng.integers(1, 40, 2))
        cases.append((N, C, H, W, FN, FH, FW, stride, pad))
    # Winograd's edges: odd output sizes (a last row or column of half tiles), one
    # output row, batches that are not whole vectors, many channels
    cases += [
        (7, 16, 7, 5, 32, 3, 3, 1, 1),
        (257, 32, 3, 4, 16, 3, 3, 1, 0),
        (2, 24, 9, 9, 24, 3, 3, 1, 2),
        (5, 40, 6, 11, 17, 3, 3, 1, 3),
    ]
    return cases


CASES = _cases()


def _data(rng: np.random.Generator, case: tuple[int, ...], integers: bool) -> list[np.ndarray]:
    N, C, H, W, FN, FH, FW, stride, pad = case
    OH, OW = (H + 2 * pad - FH) // stride + 1, (W + 2 * pad - FW) // stride + 1
    shapes = ((N, C, H, W), (FN, C, FH, FW), (FN,), (N, FN, OH, OW))
    if integers:
        return [rng.integers(-3, 4, s).astype(np.float32) for s in shapes]
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def _run(x, w, b, dout, stride, pad, need_dx=True) -> list[np.ndarray]:
    out, cache = conv2d_forward(x, w, b, stride, pad)
    return [out, *cache.backward(dout, need_dx=need_dx)]


def _reference(x, w, b, dout, stride, pad) -> list[np.ndarray]:
    """The generic path in float64 (exact for these float32 values' products)."""
    with _fast.enabled(False):
        return _run(*(a.astype(np.float64) for a in (x, w, b, dout)), stride, pad)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_equal_to_generic_exactly_on_integers(conv_isa, rng, case):
    x, w, b, dout = _data(rng, case, integers=True)
    stride, pad = case[7], case[8]
    got = _run(x, w, b, dout, stride, pad)
    assert type(conv2d_forward(x, w, b, stride, pad)[1]) is compiled.CompiledConvCache
    for name, g, r in zip(
        ("out", "dx", "dW", "db"), got, _reference(x, w, b, dout, stride, pad), strict=True
    ):
        assert g.dtype == np.float32 and g.shape == r.shape, name
        np.testing.assert_array_equal(g, r, err_msg=f"{conv_isa} {name}")


@pytest.mark.parametrize("case", CASES[::3], ids=lambda c: "x".join(map(str, c)))
def test_close_to_generic_within_the_float32_sum_bound(conv_isa, rng, case):
    """``|got - exact| <= n * eps32 * sum|terms|`` for every output element, n being
    the number of terms of its sum (the absolute values' convolution gives the
    right-hand side, computed the same generic way)."""
    x, w, b, dout = _data(rng, case, integers=False)
    N, C, _, _, FN, FH, FW, stride, pad = case
    OH, OW = dout.shape[2:]
    got = _run(x, w, b, dout, stride, pad)
    exact = _reference(x, w, b, dout, stride, pad)
    abs_sums = _reference(np.abs(x), np.abs(w), np.abs(b), np.abs(dout), stride, pad)
    terms = (C * FH * FW + 1, FN * FH * FW, N * OH * OW, N * OH * OW)
    for name, g, e, a, n in zip(
        ("out", "dx", "dW", "db"), got, exact, abs_sums, terms, strict=True
    ):
        bound = n * EPS32 * a + np.finfo(np.float32).tiny
        excess = np.abs(g - e) - bound
        assert excess.max() <= 0, f"{conv_isa} {name}: error above the bound by {excess.max()}"


@pytest.mark.parametrize("case", CASES[:6], ids=lambda c: "x".join(map(str, c)))
def test_on_threads_equal_to_one_thread(conv_isa, rng, threads_used, case):
    """Each thread computes its own output rows (forward, dx: the same bits as one
    thread); the filter gradient adds the threads' parts (exact on integers)."""
    x, w, b, dout = _data(rng, case, integers=True)
    with xpcnn.cpu_threads(1):
        one = _run(x, w, b, dout, case[7], case[8])
    many = _run(x, w, b, dout, case[7], case[8])
    assert len(threads_used) > 1 or dout.shape[2] == 1
    for name, m, o in zip(("out", "dx", "dW", "db"), many, one, strict=True):
        np.testing.assert_array_equal(m, o, err_msg=name)


@pytest.mark.parametrize("case", CASES[:12], ids=lambda c: "x".join(map(str, c)))
def test_fused_relu_equal_to_convolution_then_relu(conv_isa, rng, case):
    """With ``relu=True`` the kernel clamps its output (NaN to 0) and the backward pass
    counts ``dout`` only where that output is > 0: the generic convolution followed
    by the generic ReLU, exactly on integers (many outputs are exactly 0 there)."""
    from xpcnn._fast.numpy_conv import chwn as _chwn
    from xpcnn.ops import relu_forward

    x, w, b, dout = _data(rng, case, integers=True)
    stride, pad = case[7], case[8]
    OH, OW = dout.shape[2:]
    out, cache = compiled.conv2d_forward(
        x, w, b, stride, pad, OH, OW, _chwn(x, pad, pad), relu=True
    )
    got = [out, *cache.backward(dout)]
    with _fast.enabled(False):
        pre, conv = conv2d_forward(*(a.astype(np.float64) for a in (x, w, b)), stride, pad)
        y, relu = relu_forward(pre)
        ref = [y, *conv.backward(relu.backward(dout.astype(np.float64)))]
    assert (ref[0] == 0).any() and (ref[0] > 0).any()
    for name, g, r in zip(("out", "dx", "dW", "db"), got, ref, strict=True):
        np.testing.assert_array_equal(g, r, err_msg=f"{conv_isa} {name}")


def test_first_layer_without_dx(isa, rng):
    x, w, b, dout = _data(rng, CASES[1], integers=True)
    got = _run(x, w, b, dout, 1, 0, need_dx=False)
    ref = _reference(x, w, b, dout, 1, 0)
    assert got[1] is None
    for name, g, r in zip(("out", "dW", "db"), [got[0], *got[2:]], [ref[0], *ref[2:]], strict=True):
        np.testing.assert_array_equal(g, r, err_msg=name)


@pytest.mark.parametrize(
    "case", [CASES[0], CASES[3], CASES[4], CASES[-1]], ids=["s1", "s2", "s3", "winograd-dW"]
)
def test_nan_and_inf_propagate_as_on_the_generic_path(conv_isa, rng, case):
    """No fast-math: NaN and +-inf in the input and in dout reach the same outputs
    as on the generic float32 path (inf - inf gives NaN on both)."""
    x, w, b, dout = _data(rng, case, integers=False)
    x.reshape(-1)[:: max(1, x.size // 5)] = np.nan
    x.reshape(-1)[3 :: max(1, x.size // 4)] = np.inf
    x.reshape(-1)[5 :: max(1, x.size // 4)] = -np.inf
    dout.reshape(-1)[:: max(1, dout.size // 3)] = np.nan
    dout.reshape(-1)[1 :: max(1, dout.size // 3)] = np.inf
    stride, pad = case[7], case[8]
    with np.errstate(invalid="ignore", over="ignore"):
        got = _run(x, w, b, dout, stride, pad)
        with _fast.enabled(False):
            generic = _run(x, w, b, dout, stride, pad)
    for name, g, r in zip(("out", "dx", "dW", "db"), got, generic, strict=True):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(r), err_msg=f"{name}: NaN")
        np.testing.assert_array_equal(np.isposinf(g), np.isposinf(r), err_msg=f"{name}: +inf")
        np.testing.assert_array_equal(np.isneginf(g), np.isneginf(r), err_msg=f"{name}: -inf")
        finite = np.isfinite(r)
        assert_close_scaled(g[finite], r[finite], rtol=1e-5, atol=1e-5, err_msg=name)


def test_winograd_runs_on_3x3_stride_1_and_direct_when_off(isa, rng):
    """The two paths round differently on random normals: equal bits would mean that
    Winograd never ran (or that the switch does nothing)."""
    x, w, b, dout = _data(rng, (20, 32, 8, 8, 16, 3, 3, 1, 1), integers=False)
    wino = _run(x, w, b, dout, 1, 1)
    with compiled.winograd(False):
        direct = _run(x, w, b, dout, 1, 1)
    for name, g, d in zip(("out", "dx", "dW", "db"), wino, direct, strict=True):
        assert not np.array_equal(g, d), name
        assert_close_scaled(g, d, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("split", [1, 2, 3, 6])
def test_winograd_row_ranges_split_anywhere(isa, rng, split):
    """Threads get ranges of tile rows, but any range of output rows must give the bits
    of the whole: a range starting or ending inside a tile writes only its own rows."""
    N, C, H, FN = 9, 10, 7, 6  # OH = 7: a last row of half tiles
    img = rng.standard_normal((C, H + 2, H + 2, N)).astype(np.float32)
    W = rng.standard_normal((FN, C, 3, 3)).astype(np.float32)
    mr = compiled._conv.tile(isa)
    wp = compiled._packed(W, mr)
    up = compiled._winograd_packed(wp)
    bias = rng.standard_normal(FN).astype(np.float32)
    geom = (C, H + 2, H + 2, N, FN, 3, 3, 1, H, H)
    whole, parts = (np.full((FN, H, H, N), np.nan, np.float32) for _ in range(2))
    compiled._conv.forward(img, wp, bias, whole, geom, 0, H, True, isa, up)
    compiled._conv.forward(img, wp, bias, parts, geom, 0, split, True, isa, up)
    compiled._conv.forward(img, wp, bias, parts, geom, split, H, True, isa, up)
    np.testing.assert_array_equal(parts, whole)
    direct = np.empty_like(whole)
    compiled._conv.forward(img, wp, bias, direct, geom, 0, H, True, isa)
    assert_close_scaled(whole, direct, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", [1, 2, 3, 6])
def test_winograd_weight_gradient_of_row_ranges_adds_up(isa, rng, split):
    """Each output row counts once whichever thread has it: the parts' filter and bias
    gradients add up to the whole's (exact on integers), which is the direct kernel's."""
    N, C, H, FN = 9, 10, 7, 6
    img = rng.integers(-3, 4, (C, H + 2, H + 2, N)).astype(np.float32)
    d = rng.integers(-3, 4, (FN, H, H, N)).astype(np.float32)
    mask = rng.integers(-1, 2, d.shape).astype(np.float32)
    geom = (C, H + 2, H + 2, N, FN, 3, 3, 1, H, H)

    def grad(r0: int, r1: int, wino: bool) -> np.ndarray:
        dW, db = np.empty((FN, C * 9), np.float32), np.empty(FN, np.float32)
        compiled._conv.weight_grad(img, d, dW, db, geom, r0, r1, isa, mask, wino)
        return np.concatenate([dW.ravel(), db])

    whole = grad(0, H, True)
    np.testing.assert_array_equal(grad(0, split, True) + grad(split, H, True), whole)
    np.testing.assert_array_equal(whole, grad(0, H, False))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_winograd_keeps_a_non_finite_input_in_its_windows(isa, rng, value):
    """One non-finite pixel: raw Winograd would spread it over whole 2x2 tiles (and turn
    inf into NaN through the transforms' differences); the outputs must be those of the
    generic path, finite outside the pixel's windows."""
    x, w, b, _ = _data(rng, CASES[0], integers=False)
    x[3, 2, 4, 5] = value
    with np.errstate(invalid="ignore", over="ignore"):
        got = conv2d_forward(x, w, b, 1, 1)[0]
        with _fast.enabled(False):
            ref = conv2d_forward(x, w, b, 1, 1)[0]
    assert np.isfinite(ref).sum() > 0 and (~np.isfinite(ref)).sum() > 0
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(got), test(ref), err_msg=test.__name__)
    finite = np.isfinite(ref)
    assert_close_scaled(got[finite], ref[finite], rtol=1e-5, atol=1e-5)


def test_winograd_refuses_bad_arguments():
    img, wp, bias, out, geom, r0, r1, relu, name = _args()
    img[...] = 1.0
    up = compiled._winograd_packed(wp + 1.0)
    compiled._conv.forward(img, wp, bias, out, geom, r0, r1, relu, name, up)
    assert (out == 27.0).all()  # 3 channels x 3x3 ones: Winograd is exact here
    with pytest.raises(ValueError, match="transformed filters holds"):
        compiled._conv.forward(img, wp, bias, out, geom, r0, r1, relu, name, up.reshape(-1)[:10])
    with pytest.raises(TypeError, match="transformed filters must be float32"):
        compiled._conv.forward(img, wp, bias, out, geom, r0, r1, relu, name, up.astype(float))
    strided = (*geom[:7], 2, 2, 2)
    with pytest.raises(ValueError, match="needs 3x3 filters and stride 1"):
        compiled._conv.forward(img, wp, bias, out, strided, 0, 2, relu, name, up)


def test_xpcnn_winograd_variable_is_checked():
    code = "from xpcnn._fast import compiled; print(compiled._winograd_on())"
    for value, expect in (("0", "False"), ("1", "True")):
        env = {**os.environ, "XPCNN_WINOGRAD": value}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert run.stdout.strip() == expect, run.stderr
    env = {**os.environ, "XPCNN_WINOGRAD": "yes"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "XPCNN_WINOGRAD=yes: use 1 (the default) or 0" in run.stderr


# -- max pooling -----------------------------------------------------------------------------

# (N, C, H, W, pool_h, pool_w, stride): disjoint windows, tiling or not, odd sizes
POOL_CASES = [
    (100, 16, 28, 28, 2, 2, 2),
    (3, 5, 7, 9, 2, 2, 2),
    (257, 2, 6, 6, 3, 3, 3),
    (1, 3, 8, 7, 2, 3, 3),
    (20, 4, 9, 10, 1, 2, 4),
]


def _chwn(a: np.ndarray) -> np.ndarray:
    """``a`` (N, C, H, W) stored (C, H, W, N), as the fast convolution leaves it."""
    return np.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)


@pytest.mark.parametrize("fused", [False, True], ids=["pool", "relu-pool"])
@pytest.mark.parametrize("kind", ["distinct", "ties", "constant", "special"])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "x".join(map(str, c)))
def test_max_pool_equal_to_generic_bit_for_bit(isa, rng, case, kind, fused):
    """Maximum, ties to the first, NaN (wins, or loses when pooling before a ReLU),
    infinities and signed zeros: the generic path's bits, forward and backward."""
    N, C, H, W, ph, pw, s = case
    x = _chwn(pool_inputs(rng, (N, C, H, W), kind).astype(np.float32))
    OH, OW = (H - ph) // s + 1, (W - pw) // s + 1
    dout = _chwn(pool_inputs(rng, (N, C, OH, OW), "special").astype(np.float32))
    forward = relu_max_pool2d_forward if fused else max_pool2d_forward

    def run() -> list[np.ndarray]:
        out, cache = forward(x, ph, pw, s, 0)
        return [out, cache.backward(dout)]

    got = run()
    with _fast.enabled(False):
        generic = run()
    inner = max_pool2d_forward(x, ph, pw, s, 0)[1]
    assert type(inner) is compiled.CompiledPoolCache
    for name, g, r in zip(("out", "dx"), got, generic, strict=True):
        assert g.dtype == np.float32 and g.shape == r.shape, name
        np.testing.assert_array_equal(g.view(np.uint32), r.view(np.uint32), err_msg=name)
    assert got[1].transpose(1, 2, 3, 0).flags.c_contiguous  # the layout flows on


def test_max_pool_on_threads_equal_to_one_thread(isa, rng, threads_used):
    x = _chwn(pool_inputs(rng, (7, 5, 8, 8), "special").astype(np.float32))
    dout = _chwn(pool_inputs(rng, (7, 5, 4, 4), "special").astype(np.float32))

    def run() -> list[np.ndarray]:
        out, cache = max_pool2d_forward(x, 2, 2, 2, 0)
        return [out, cache.backward(dout)]

    with xpcnn.cpu_threads(1):
        one = run()
    many = run()
    assert len(threads_used) > 1
    for m, o in zip(many, one, strict=True):
        np.testing.assert_array_equal(m.view(np.uint32), o.view(np.uint32))


@pytest.mark.parametrize(
    ("x", "args"),
    [
        (np.zeros((2, 3, 4, 4), np.float32), (2, 2, 2, 0)),  # NCHW storage
        (_chwn(np.zeros((2, 3, 4, 4))), (2, 2, 2, 0)),  # float64
        (_chwn(np.zeros((2, 3, 5, 5), np.float32)), (3, 3, 2, 0)),  # overlapping windows
        (_chwn(np.zeros((2, 3, 5, 5), np.float32)), (2, 2, 2, 1)),  # padding
    ],
    ids=["nchw", "float64", "overlapping", "padded"],
)
def test_max_pool_outside_the_kernel_takes_the_numpy_path(isa, x, args):
    assert type(max_pool2d_forward(x, *args)[1]).__name__ == "MaxPoolCache"


def test_pool_kernels_refuse_bad_arguments():
    name = ISAS[0]
    x, out = np.zeros((3, 4, 4, 2), np.float32), np.zeros((3, 2, 2, 2), np.float32)
    geom = (3, 4, 4, 2, 2, 2, 2, 2, 2)
    compiled._conv.pool_forward(x, out, geom, False, 0, 3, name)
    with pytest.raises(ValueError, match="disjoint"):
        compiled._conv.pool_forward(x, out, (3, 4, 4, 2, 3, 3, 2, 2, 2), False, 0, 3, name)
    with pytest.raises(ValueError, match="does not fit"):
        compiled._conv.pool_forward(x, out, (3, 4, 4, 2, 2, 2, 2, 3, 2), False, 0, 3, name)
    with pytest.raises(ValueError, match="channels"):
        compiled._conv.pool_forward(x, out, geom, False, 0, 4, name)
    with pytest.raises(ValueError, match="x holds"):
        compiled._conv.pool_forward(x[:2].copy(), out, geom, False, 0, 3, name)
    with pytest.raises(ValueError, match="dx holds"):
        compiled._conv.pool_backward(x, out, out, out.copy(), geom, 0, 3, name)
    with pytest.raises(ValueError, match="C-contiguous"):
        compiled._conv.pool_backward(x, out, out.transpose(1, 0, 2, 3), x.copy(), geom, 0, 3, name)


# -- what the extension refuses -----------------------------------------------------------


def _args(N=2, C=3, H=6, W=6, FN=5, F=3, isa_name=None):
    """Valid arguments of ``_conv.forward`` for a stride-1, pad-0 convolution."""
    name = isa_name or ISAS[0]
    OH, OW = H - F + 1, W - F + 1
    img = np.zeros((C, H, W, N), np.float32)
    mr = compiled._conv.tile(name)
    wp = np.zeros((-(-FN // mr), C * F * F, mr), np.float32)
    bias = np.zeros(FN, np.float32)
    out = np.zeros((FN, OH, OW, N), np.float32)
    geom = (C, H, W, N, FN, F, F, 1, OH, OW)
    return [img, wp, bias, out, geom, 0, OH, False, name]


def test_valid_arguments_run():
    args = _args()
    args[0][...] = 1.0
    args[1][...] = 1.0
    compiled._conv.forward(*args)
    assert (args[3] == 27.0).all()  # 3 channels x 3x3 ones


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: a.__setitem__(0, a[0].astype(np.float64)), TypeError, "img must be float32"),
        (lambda a: a.__setitem__(0, np.zeros(10, np.float32)), ValueError, "img holds"),
        (lambda a: a.__setitem__(0, np.asfortranarray(a[0])), ValueError, "C-contiguous"),
        (lambda a: a.__setitem__(0, a[0].transpose(3, 0, 1, 2)), ValueError, "C-contiguous"),
        (lambda a: a.__setitem__(1, a[1][:1, :4]), ValueError, "packed filters holds"),
        (lambda a: a.__setitem__(2, a[2][:2]), ValueError, "bias holds"),
        (lambda a: a.__setitem__(3, np.zeros((5, 2), np.float32)), ValueError, "out holds"),
        (lambda a: a[3].setflags(write=False), ValueError, "writable"),
        (lambda a: a.__setitem__(3, bytearray(4096)), TypeError, "out must be float32"),
        (lambda a: a.__setitem__(4, (3, 6, 6, 2, 5, 3, 3, 1, 5, 4)), ValueError, "does not fit"),
        (lambda a: a.__setitem__(4, (3, 6, 6, 2, 5, 3, 3, 0, 4, 4)), ValueError, "positive"),
        (lambda a: a.__setitem__(4, (3, 6, 6, 2)), TypeError, "geometry"),
        (lambda a: a.__setitem__(6, 5), ValueError, "rows"),
        (lambda a: a.__setitem__(5, -1), ValueError, "rows"),
        (lambda a: a.__setitem__(8, "sse9"), ValueError, "no sse9 kernels"),
    ],
    ids=[
        "float64",
        "short",
        "fortran",
        "strided",
        "short-filters",
        "short-bias",
        "short-out",
        "read-only-out",
        "bytes-out",
        "output-too-big",
        "stride-0",
        "geometry-tuple",
        "rows-past-end",
        "negative-row",
        "unknown-isa",
    ],
)
def test_forward_refuses_bad_arguments(change, error, match):
    args = _args()
    change(args)
    with pytest.raises(error, match=match):
        compiled._conv.forward(*args)


def test_weight_grad_refuses_bad_arguments():
    img, _, _, out, geom, r0, r1, _, name = _args()
    dW, db = np.zeros((5, 27), np.float32), np.zeros(5, np.float32)
    compiled._conv.weight_grad(img, out, dW, db, geom, r0, r1, name)
    with pytest.raises(ValueError, match="dW holds"):
        compiled._conv.weight_grad(img, out, np.zeros((5, 20), np.float32), db, geom, r0, r1, name)
    with pytest.raises(ValueError, match="dout holds"):
        compiled._conv.weight_grad(img, out[:1].copy(), dW, db, geom, r0, r1, name)
    with pytest.raises(TypeError, match="db must be float32"):
        compiled._conv.weight_grad(img, out, dW, db.astype(np.float64), geom, r0, r1, name)


def test_float64_and_mixed_dtypes_take_the_numpy_path(rng):
    x, w, b, _ = _data(rng, CASES[0], integers=True)
    for args in ((x.astype(np.float64), w, b), (x, w.astype(np.float64), b)):
        _, cache = conv2d_forward(*args, 1, 1)
        assert type(cache).__name__ == "ChwnConvCache"


# -- selection: XPCNN_ISA, using(), xpcnn info ------------------------------------------------


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
        timeout=120,
    )


@pytest.mark.parametrize("name", [*ISAS, "none"])
def test_xpcnn_isa_forces_a_path(name):
    code = (
        "import numpy as np; from xpcnn.ops import conv2d_forward; from xpcnn._fast import compiled\n"
        "x = np.ones((2, 1, 5, 5), np.float32); w = np.ones((2, 1, 3, 3), np.float32)\n"
        "out, cache = conv2d_forward(x, w, np.zeros(2, np.float32))\n"
        "print(compiled.isa(), type(cache).__name__, float(out.sum()))"
    )
    proc = _python(code, XPCNN_ISA=name)
    assert proc.returncode == 0, proc.stderr
    cache = "CompiledConvCache" if name != "none" else "ChwnConvCache"
    assert proc.stdout.split() == [name if name != "none" else "None", cache, "324.0"]


def test_xpcnn_isa_unknown_is_refused_in_one_line():
    code = (
        "import numpy as np; from xpcnn.ops import conv2d_forward\n"
        "conv2d_forward(np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 3, 3), np.float32),"
        " np.zeros(1, np.float32))"
    )
    proc = _python(code, XPCNN_ISA="avx9000")
    assert proc.returncode != 0
    assert f"XPCNN_ISA=avx9000: this CPU runs {', '.join(ISAS)}; choose one of them or none" in (
        proc.stderr
    )


@pytest.mark.parametrize(
    ("variable", "says"),
    [
        ("XPCNN_ISA", "XPCNN_ISA=bad: this CPU runs"),
        ("XPCNN_WINOGRAD", "XPCNN_WINOGRAD=bad: use 1 (the default) or 0"),
    ],
)
def test_cli_refuses_a_bad_kernel_variable_in_one_line_before_work(tmp_path, variable, says):
    """Even for a network without a 3x3 layer: checked at start, not at first use."""
    proc = subprocess.run(
        [sys.executable, "-m", "xpcnn", "train", "--epochs", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, variable: "bad"},
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"xpcnn train: error: {says}"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_using_refuses_an_unknown_isa_and_restores():
    before = compiled.isa()
    with pytest.raises(ValueError, match="isa=avx9000"), compiled.using("avx9000"):
        pass
    with compiled.using(None):
        assert compiled.isa() is None
    assert compiled.isa() == before


@pytest.mark.parametrize(
    ("winograd", "says"), [("1", "3x3 stride 1 by Winograd F(2x2, 3x3)"), ("0", "Winograd off")]
)
def test_xpcnn_info_names_the_convolution_path(winograd, says):
    proc = subprocess.run(
        [sys.executable, "-m", "xpcnn", "info"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "XPCNN_ISA": ISAS[-1], "XPCNN_WINOGRAD": winograd},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    line = f"convolution: compiled {ISAS[-1]} (this CPU runs: {', '.join(ISAS)}); {says}"
    assert line in proc.stdout


# -- flushing subnormals ----------------------------------------------------------------------


def _flushes() -> bool:
    """Whether this thread now treats a float32 subnormal as zero."""
    tiny = np.array([1e-40], np.float32)
    return float((tiny * np.float32(1.0))[0]) == 0.0


@pytest.mark.skipif(compiled.fp_control is None, reason="no flush-to-zero control on this CPU")
def test_flush_subnormals_on_every_thread_and_restored(isa):
    assert not _flushes()
    # A convolution of subnormals: zero with flushing, subnormal without. (Made
    # outside the block: with flushing on, the conversion itself gives 0.)
    x = np.full((2, 1, 4, 4), 1e-39, np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    with xpcnn.flush_subnormals() as on, xpcnn.cpu_threads(3):
        assert on
        assert _flushes()
        assert _threads.map_ranges(lambda r: _flushes(), 3) == [True, True, True]
        flushed, _ = conv2d_forward(x, w, np.zeros(1, np.float32))
    assert (flushed == 0).all()
    assert not _flushes()
    with xpcnn.cpu_threads(3):
        assert _threads.map_ranges(lambda r: _flushes(), 3) == [False, False, False]
    plain, _ = conv2d_forward(x, w, np.zeros(1, np.float32))
    assert (plain > 0).all()
    with xpcnn.flush_subnormals(False) as on:
        assert not on and not _flushes()


@pytest.mark.skipif(compiled.fp_control is None, reason="no flush-to-zero control on this CPU")
def test_flush_subnormals_keeps_a_callers_own_setting():
    previous = compiled.fp_control(True)
    try:
        with xpcnn.flush_subnormals():
            assert _flushes()
        assert _flushes()  # the caller had set it: still set
    finally:
        compiled.fp_control(previous)
    assert not _flushes()


def test_default_threads_every_cpu_and_blas_work_on_one():
    """Unset, kernels that never call BLAS share work among every CPU the process may
    use (as PyTorch does); the NumPy GEMM path leaves the threads to BLAS."""
    assert _threads.num_threads() == _threads.cpus() == len(os.sched_getaffinity(0))
    assert _threads.num_threads(blas=True) == 1
    with xpcnn.cpu_threads(3):
        assert _threads.num_threads() == _threads.num_threads(blas=True) == 3


# -- the heap: xpcnn train keeps freed memory -------------------------------------------------

_FAULTS = (
    "import resource, numpy as np\n"
    "from xpcnn._fast._heap import keep_freed_memory\n"
    "kept = keep_freed_memory() if KEEP else None\n"
    "def step():  # arrays of 4-10 MiB made and freed, as in a DeepConvNet step\n"
    "    arrays = [np.ones(n, np.float32) for n in (1 << 20, 3 << 19, 1 << 21, 5 << 19)]\n"
    "step()\n"
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
    "for _ in range(20):\n"
    "    step()\n"
    "print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
)


def _faults(keep: bool, **env: str) -> tuple[str, int]:
    """(what keep_freed_memory returned, page faults of 20 steps' arrays) in a child
    whose environment sets no malloc option unless ``env`` does."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUN"))}
    proc = subprocess.run(
        [sys.executable, "-c", _FAULTS.replace("KEEP", str(keep))],
        capture_output=True,
        text=True,
        check=True,
        env={**clean, **env},
        timeout=120,
    )
    kept, faults = proc.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc thresholds")
@pytest.mark.skipif(bool(os.environ.get("LD_PRELOAD")), reason="another allocator preloaded")
def test_keep_freed_memory_stops_the_page_faults_of_freed_arrays():
    """Without it glibc maps most of a step's arrays afresh (about 1,500 faults a step
    here); with it the heap's pages are reused. A malloc setting of the user's is kept."""
    _, fresh = _faults(False)
    kept, reused = _faults(True)
    assert fresh > 20 * 1000
    assert kept == "True" and reused < fresh / 20, (reused, fresh)
    kept, faults = _faults(True, MALLOC_TRIM_THRESHOLD_="131072")
    assert kept == "False" and faults > 20 * 1000  # the user's setting wins
    kept, _ = _faults(True, LD_PRELOAD=" ")  # a preloaded allocator: glibc's may not serve
    assert kept == "False"
