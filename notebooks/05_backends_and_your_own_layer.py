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
# # 5. One layer, many array libraries, and a layer of your own
#
# The book's code is NumPy, and its GPU advice is to swap in CuPy by hand. xpcnn's compute
# code is written once against the [Python array API standard](https://data-apis.org/array-api/):
# every op takes its array namespace from its inputs, so the same `Convolution` runs on
# NumPy arrays, PyTorch tensors, JAX arrays, CuPy arrays (on a GPU) and `array-api-strict`
# (a strict reference implementation that refuses anything outside the standard).
#
# This notebook runs one layer on each library installed, then writes a new layer and tests
# it on all of them with `xpcnn.testing`. PyTorch and JAX are optional: a library that is
# not installed is skipped. Under a minute, offline.

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
from array_api_compat import array_namespace

import xpcnn
from xpcnn.data import load_dataset
from xpcnn.layers import Convolution, Layer
from xpcnn.testing import backends, check_jit, check_layer, enable_jax_x64

if importlib.util.find_spec("jax"):
    enable_jax_x64()  # float64 on JAX (the gradient checks below use it)
found = backends()
print("backends installed here:", [b.name for b in found])

# %% [markdown]
# Each backend is an `xpcnn.Device`: `.xp` is the array namespace, `.asarray(host_array,
# dtype)` moves NumPy data there, `.to_numpy(x)` brings any array back. (`strict-device1`
# is array-api-strict's second device, which behaves like a GPU: no silent copies to the
# host, no mixing of devices.)

# %% [markdown]
# ## The same convolution everywhere

# %%
rng = np.random.default_rng(0)
x_host = load_dataset("mnist-sample").x_test[:4].astype(np.float32) / 255  # (4, 1, 28, 28)
W_host = rng.standard_normal((8, 1, 5, 5)).astype(np.float32) * 0.1
b_host = np.zeros(8, dtype=np.float32)

reference = Convolution(W_host, b_host, pad=2).forward(x_host)
for b in found:
    conv = Convolution(b.asarray(W_host), b.asarray(b_host), pad=2)
    y = conv.forward(b.asarray(x_host))
    err = np.abs(b.to_numpy(y) - reference).max()
    print(f"{b.name:>15}: {type(y).__module__}.{type(y).__name__} {tuple(y.shape)}, "
          f"max difference from NumPy {err:.1e}")  # fmt: skip
    assert err < 1e-5

# %% [markdown]
# ## A whole network on another library
#
# `backend=` puts every parameter of a network on that library; `predict` moves host input
# there. The pretrained networks load onto any backend the same way.

# %%
images = load_dataset("mnist-sample").x_test[:8]
expected = xpcnn.load_pretrained("simple").predict(images).argmax(axis=1)
for b in found:
    net = xpcnn.load_pretrained("simple", device=b)
    labels = b.to_numpy(net.predict(images)).argmax(axis=1)
    print(f"{b.name:>15}: {labels}")
    assert (labels == expected).all()

# %% [markdown]
# ## A layer of your own
#
# A parametric ReLU: `y = x` where `x > 0`, else `a * x`, with one learned slope per
# feature. Written once: the namespace comes from the data (`array_namespace`), writes go
# through `where` (JAX arrays cannot be assigned to), and the parameters live in
# `self.params`, where optimizers and checkpoints find them.


# %%
class PReLU(Layer):
    """a: (D,); inputs and outputs (N, D), of a's dtype and device."""

    def __init__(self, a):
        super().__init__()
        self.params = {"a": a}

    def forward(self, x, train_flg=True):
        xp = array_namespace(x)
        self.x = x
        return xp.where(x > 0.0, x, self.params["a"] * x)

    def backward(self, dout):
        xp = array_namespace(dout)
        x, a = self.x, self.params["a"]
        self.grads["a"] = xp.sum(xp.where(x > 0.0, xp.zeros_like(x), dout * x), axis=0)
        return xp.where(x > 0.0, dout, a * dout)


# %% [markdown]
# `check_layer(layer, x)` runs forward and backward on `x`'s backend, checks that the
# output, `dx` and every gradient keep `x`'s library, device, dtype and shape, then compares
# the gradients with float64 central differences. It passes silently or raises an
# `AssertionError` that names the backend and the gradient.

# %%
for b in found:
    for dtype in ("float32", "float64"):
        a = b.asarray(rng.uniform(0.1, 0.3, 3), dtype)
        x = b.asarray(rng.standard_normal((4, 3)), dtype)
        check_layer(PReLU(a), x)
    print(f"{b.name:>15}: PReLU passes (float32, float64)")


# %% [markdown]
# A mistake shows up at once. This version forgets that the slope's gradient depends on
# `x`:


# %%
class BrokenPReLU(PReLU):
    def backward(self, dout):
        dx = super().backward(dout)
        xp = array_namespace(dout)
        self.grads["a"] = xp.sum(xp.where(self.x > 0.0, xp.zeros_like(dout), dout), axis=0)
        return dx


try:
    check_layer(
        BrokenPReLU(found[-1].asarray(np.full(3, 0.2))), found[-1].asarray(-np.ones((4, 3)))
    )
except AssertionError as exc:
    print(exc)

# %% [markdown]
# A compiled training step (`Trainer(..., compile=True)`, `xpcnn train --backend jax
# --compile`) traces the layer's code under `jax.jit`. `check_jit(layer, x)` checks that it
# traces there and computes what it computes eagerly; a failure names the line and the
# cause (Python control flow on an array value, item assignment, a conversion to the
# host, ...). It needs JAX:

# %%
jax_backends = [b for b in found if b.name == "jax"]
for b in jax_backends:
    check_jit(PReLU(b.asarray(np.full(3, 0.2), "float32")), b.asarray(-np.ones((4, 3)), "float32"))
    print("jax: PReLU traces under jax.jit and equals its eager passes")
if not jax_backends:
    print("JAX is not installed here: pip install jax")

# %% [markdown]
# In a test suite, the same check runs on every backend through the pytest plugin:
#
# ```python
# # test_my_layers.py
# import numpy as np
# import pytest
#
# from my_layers import PReLU
# from xpcnn.testing import check_layer
#
# pytest_plugins = ["xpcnn.testing"]
#
#
# @pytest.mark.parametrize("dtype", ["float32", "float64"])
# def test_prelu(xp_backend, dtype):
#     rng = np.random.default_rng(0)
#     a = xp_backend.asarray(rng.uniform(0.1, 0.3, 3), dtype)
#     x = xp_backend.asarray(rng.standard_normal((4, 3)), dtype)
#     check_layer(PReLU(a), x)
# ```
#
# `pytest -q test_my_layers.py` then runs `test_prelu[numpy-float32]` ...
# `test_prelu[jax-float64]`, and on a machine with a GPU and CuPy, two more.
