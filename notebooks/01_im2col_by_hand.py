# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. im2col and a convolution layer by hand
#
# Chapter 7 of *Deep Learning from Scratch* turns a convolution into one matrix product:
# `im2col` unfolds every filter-sized patch of the input into a row, the filters become
# the columns of `col_W`, and `col @ col_W + b` is the whole layer. This notebook writes
# `im2col`, the forward pass, the backward pass (`col2im`) and max pooling by hand with
# NumPy loops, and checks each against `xpcnn.ops` and `xpcnn.layers`, which run the same
# algorithm on any array library.
#
# It runs offline on the MNIST sample bundled with xpcnn, in under a minute.

# %%
# Setup: a hosted notebook (Colab, Binder, ...) installs xpcnn here; a kernel that already
# has it skips the install. "xpcnn" is the name a release publishes; before one, set
# XPCNN_PIP to a wheel, a clone's folder or a git URL.
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("xpcnn") is None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", os.environ.get("XPCNN_PIP", "xpcnn")],
        check=True,
    )
# %matplotlib inline

# %%
import numpy as np

from xpcnn import ops, viz
from xpcnn.data import load_dataset
from xpcnn.layers import Convolution, Pooling

data = load_dataset("mnist-sample")  # 5,000 training and 1,000 test images, uint8
x = data.x_test[:2].astype(np.float64) / 255  # two digits, (N, C, H, W) = (2, 1, 28, 28)
print(x.shape, data.t_test[:2])

# %% [markdown]
# ## im2col
#
# For a filter of `FH x FW` moved with `stride` over an input padded by `pad`, the output
# is `OH x OW` with `OH = (H + 2*pad - FH) // stride + 1`. Each of the `N*OH*OW` output
# positions gets one row of `col`: the `C*FH*FW` input values under the filter there,
# channel first, then filter row, then filter column. The book fills `col` with one loop
# per filter offset; the plainest version loops over the output positions instead.


# %%
def im2col_by_hand(x, FH, FW, stride=1, pad=0):
    N, C, H, W = x.shape
    OH = (H + 2 * pad - FH) // stride + 1
    OW = (W + 2 * pad - FW) // stride + 1
    img = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    col = np.empty((N * OH * OW, C * FH * FW), dtype=x.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                patch = img[n, :, i * stride : i * stride + FH, j * stride : j * stride + FW]
                col[(n * OH + i) * OW + j] = patch.reshape(-1)  # channel, row, column
    return col


col = im2col_by_hand(x, 5, 5, stride=1, pad=0)
print("col:", col.shape)  # (2 * 24 * 24, 1 * 5 * 5)
np.testing.assert_array_equal(col, ops.im2col(x, 5, 5, stride=1, pad=0))
np.testing.assert_array_equal(
    im2col_by_hand(x, 3, 3, stride=2, pad=1), ops.im2col(x, 3, 3, stride=2, pad=1)
)
print("im2col by hand == xpcnn.ops.im2col")

# %% [markdown]
# ## The forward pass: one matrix product
#
# `W` has shape `(FN, C, FH, FW)`: `FN` filters. Reshaped to `(FN, C*FH*FW)` and
# transposed, it is `col_W`; `col @ col_W + b` gives `(N*OH*OW, FN)`, one row per output
# position, which reshapes to `(N, OH, OW, FN)` and transposes to `(N, FN, OH, OW)`.
# Three hand-made filters make the result easy to read: vertical edges, horizontal
# edges, and a blur.

# %%
sobel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64)
W = np.stack([sobel, sobel.T, np.full((3, 3), 1 / 9)])[:, None]  # (FN, C, FH, FW) = (3, 1, 3, 3)
b = np.zeros(3)


def conv_forward_by_hand(x, W, b, stride=1, pad=0):
    FN, _, FH, FW = W.shape
    N, _, H, Wd = x.shape
    OH = (H + 2 * pad - FH) // stride + 1
    OW = (Wd + 2 * pad - FW) // stride + 1
    col = im2col_by_hand(x, FH, FW, stride, pad)
    col_W = W.reshape(FN, -1).T
    out = col @ col_W + b
    return out.reshape(N, OH, OW, FN).transpose(0, 3, 1, 2), col, col_W


out, col, col_W = conv_forward_by_hand(x, W, b, pad=1)
print("out:", out.shape)

# An independent reference: the definition, a sum over the window at every position.
img = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)])
direct = np.zeros_like(out)
for f in range(3):
    for i in range(28):
        for j in range(28):
            direct[:, f, i, j] = (img[:, :, i : i + 3, j : j + 3] * W[f]).sum(axis=(1, 2, 3))
np.testing.assert_allclose(out, direct, atol=1e-12)

y, cache = ops.conv2d_forward(x, W, b, stride=1, pad=1)
np.testing.assert_allclose(y, out, atol=1e-12)
print("forward by hand == the definition == xpcnn.ops.conv2d_forward")

# %% [markdown]
# What the three filters see, drawn by `xpcnn.viz` (every `plot_*` returns a matplotlib
# figure, which the notebook shows):

# %%
viz.plot_feature_maps(x[0, 0], [("vertical, horizontal, blur", out[0])])

# %% [markdown]
# ## The backward pass: col2im
#
# Given `dout`, the gradient of the loss with respect to the output, the product rule of
# `out = col @ col_W + b` gives `db` (a sum over positions), `dW` (`col.T @ dout`) and
# `dcol` (`dout @ col_W.T`). `col2im` is im2col run backwards: each row of `dcol` is added
# back onto the patch it came from, so a pixel under several windows collects several
# contributions.


# %%
def col2im_by_hand(dcol, x_shape, FH, FW, stride=1, pad=0):
    N, C, H, W = x_shape
    OH = (H + 2 * pad - FH) // stride + 1
    OW = (W + 2 * pad - FW) // stride + 1
    img = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=dcol.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                patch = dcol[(n * OH + i) * OW + j].reshape(C, FH, FW)
                img[n, :, i * stride : i * stride + FH, j * stride : j * stride + FW] += patch
    return img[:, :, pad : pad + H, pad : pad + W]


rng = np.random.default_rng(0)
dout = rng.standard_normal(out.shape)
FN = W.shape[0]
dout_rows = dout.transpose(0, 2, 3, 1).reshape(-1, FN)  # (N*OH*OW, FN), as out was built
db = dout_rows.sum(axis=0)
dW = (col.T @ dout_rows).T.reshape(W.shape)
dx = col2im_by_hand(dout_rows @ col_W.T, x.shape, 3, 3, pad=1)

dx_ops, dW_ops, db_ops = cache.backward(dout)  # the op's cache owns its backward
np.testing.assert_allclose(dx, dx_ops, atol=1e-12)
np.testing.assert_allclose(dW, dW_ops, atol=1e-12)
np.testing.assert_allclose(db, db_ops, atol=1e-12)
print("dx, dW, db by hand == xpcnn.ops")

# %% [markdown]
# ...and both agree with central differences of `L = sum(out * dout)`, whose gradient
# with respect to `out` is `dout`:

# %%
eps = 1e-6
for idx in [(0, 0, 1, 1), (2, 0, 0, 2)]:
    Wp, Wm = W.copy(), W.copy()
    Wp[idx] += eps
    Wm[idx] -= eps
    numeric = (
        (conv_forward_by_hand(x, Wp, b, pad=1)[0] * dout).sum()
        - (conv_forward_by_hand(x, Wm, b, pad=1)[0] * dout).sum()
    ) / (2 * eps)
    print(f"dW{idx}: backward {dW[idx]:.8f}, numerical {numeric:.8f}")
    assert abs(dW[idx] - numeric) < 1e-6

# %% [markdown]
# ## The layer
#
# `xpcnn.layers.Convolution` is the book's class: it keeps `W`, `b` in `params`, its
# forward's cache, and after `backward` the gradients in `grads`.

# %%
conv = Convolution(W, b, stride=1, pad=1)
np.testing.assert_allclose(conv.forward(x), out, atol=1e-12)
np.testing.assert_allclose(conv.backward(dout), dx, atol=1e-12)
np.testing.assert_allclose(conv.grads["W"], dW, atol=1e-12)
print({k: v.shape for k, v in conv.params.items()}, {k: v.shape for k, v in conv.grads.items()})

# %% [markdown]
# ## Max pooling through im2col
#
# Pooling unfolds each channel's windows into rows and takes each row's maximum. With
# channels folded into the batch, `im2col` does the unfolding; the backward pass sends
# `dout` to the position of each maximum (the `argmax`).


# %%
def max_pool_by_hand(x, ph, pw, stride):
    N, C, H, W = x.shape
    OH, OW = (H - ph) // stride + 1, (W - pw) // stride + 1
    col = im2col_by_hand(x.reshape(N * C, 1, H, W), ph, pw, stride)  # (N*C*OH*OW, ph*pw)
    return col.max(axis=1).reshape(N, C, OH, OW)


pooled = max_pool_by_hand(out, 2, 2, 2)
np.testing.assert_array_equal(pooled, Pooling(2, 2, stride=2).forward(out))
print("pooled:", pooled.shape, "== xpcnn.layers.Pooling")
viz.plot_feature_maps(x[0, 0], [("conv", out[0]), ("pool", pooled[0])])

# %% [markdown]
# The same `ops.im2col`, `ops.conv2d_forward` and layers take float32 inputs (the default
# for training), and CuPy, PyTorch or JAX arrays: notebook 5 runs them there. On NumPy,
# xpcnn replaces this generic algorithm by faster code paths (compiled kernels that never
# hold the whole `col` in memory); the test suite checks that they give the same numbers.
