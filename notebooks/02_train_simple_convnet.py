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
# # 2. Training SimpleConvNet
#
# The book's `SimpleConvNet` (chapter 7.5): `conv - relu - pool - affine - relu - affine -
# softmax`, trained with Adam as `ch07/train_convnet.py` trains it. Here it learns from the
# MNIST sample bundled with xpcnn (5,000 training and 1,000 test images), so the notebook
# runs offline in about a minute; `load_dataset("mnist")` gives the full 60,000 / 10,000
# (downloaded once and checked).

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
import time
from pathlib import Path

import numpy as np

import xpcnn
from xpcnn import SimpleConvNet, Trainer, viz
from xpcnn.data import load_dataset

data = load_dataset("mnist-sample")
print(data)
print(data.x_train.dtype, data.x_train.shape, data.t_train[:10])

# %% [markdown]
# ## The network
#
# The book's constructor and defaults: 30 filters of 5x5, a hidden layer of 100, weights
# drawn with standard deviation 0.01. `seed` fixes them, so every run of this notebook
# trains the same network. Parameters are float32 NumPy arrays, named as in the book.

# %%
net = SimpleConvNet(
    input_dim=(1, 28, 28),
    conv_param={"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1},
    hidden_size=100,
    output_size=10,
    weight_init_std=0.01,
    seed=0,
)
print(net.summary())
print({k: v.shape for k, v in net.params.items()})

# %% [markdown]
# The network takes the images as they are stored, uint8 pixels of shape `(N, 1, 28, 28)`,
# and scales them to [0, 1] itself (float arrays are taken as they are). Untrained, it
# guesses: about one image in ten is right.

# %%
print("accuracy before training:", net.accuracy(data.x_test, data.t_test))

# %% [markdown]
# ## Training
#
# `Trainer` is the book's: epochs of mini-batches drawn without replacement, Adam with
# `lr=0.001`, the accuracies measured after each epoch. With `verbose=True` it prints one
# line per epoch. Ten epochs of 5,000 images take about 10 seconds on two cores.

# %%
trainer = Trainer(
    net,
    data.x_train,
    data.t_train,
    data.x_test,
    data.t_test,
    epochs=10,
    mini_batch_size=100,
    optimizer="Adam",
    optimizer_param={"lr": 0.001},
    verbose=True,
)
start = time.perf_counter()
with xpcnn.cpu_threads(2):  # xpcnn's own threads for the NumPy fast paths
    trainer.train()
print(f"{time.perf_counter() - start:.1f} s; test accuracy {trainer.test_accuracy():.4f}")

# %% [markdown]
# The loss of every step and the accuracies of every epoch are in `trainer.history()`;
# `viz.plot_history` draws them. Train and test accuracy close together mean little
# overfitting; on a sample this small, the gap opens after a few more epochs.

# %%
viz.plot_history(trainer.history())

# %% [markdown]
# ## Where it goes wrong
#
# `net.predict` gives the scores `(N, 10)`; their argmax is the predicted digit. The
# misclassified test images are often ones a person would hesitate over too.

# %%
scores = net.predict(data.x_test)
pred = scores.argmax(axis=1)
print("wrong:", int((pred != data.t_test).sum()), "of", len(pred))
viz.plot_misclassified(data.x_test, data.t_test, pred, max_images=10)

# %%
viz.plot_confusion_matrix(data.t_test, pred, class_names=data.class_names)

# %% [markdown]
# ## Saving and loading, without pickle
#
# The book pickles its parameters (`params.pkl`); xpcnn writes an `.npz` of plain arrays
# with a SHA-256 digest, read back with `allow_pickle=False`. `save_params` keeps the
# network's configuration too, so `xpcnn.load_network` rebuilds it.

# %%
folder = Path("runs") / "notebook-02"
folder.mkdir(parents=True, exist_ok=True)
net.save_params(folder / "params.npz")

same = SimpleConvNet(seed=1)  # other weights...
same.load_params(folder / "params.npz")  # ...replaced by the saved ones
rebuilt = xpcnn.load_network(folder / "params.npz")
for other in (same, rebuilt):
    np.testing.assert_array_equal(other.predict(data.x_test[:50]), scores[:50])
print("reloaded networks predict the same scores")

# %% [markdown]
# ## The book's gradient check
#
# `net.gradient` (backpropagation) against `net.numerical_gradient` (central differences),
# on a small network in float64. The book's step `h = 1e-4` can straddle a kink of ReLU or
# max pooling, where the difference quotient is not the derivative; a smaller step avoids
# most of them. (`b1` keeps an error at any step: on MNIST's black background the first
# convolution's output sits exactly at ReLU's kink.)

# %%
small = SimpleConvNet(
    conv_param={"filter_num": 2, "filter_size": 5, "pad": 0, "stride": 1},
    hidden_size=10,
    dtype="float64",
    seed=0,
)
x, t = data.x_train[:2], data.t_train[:2]
grad = small.gradient(x, t)
for h in (1e-4, 1e-6):
    num = small.numerical_gradient(x, t, h=h)
    print(f"h={h:g}:", {k: f"{np.abs(num[k] - grad[k]).max():.1e}" for k in grad})
