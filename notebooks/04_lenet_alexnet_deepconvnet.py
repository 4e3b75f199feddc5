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
# # 4. LeNet, AlexNet and DeepConvNet
#
# Chapter 7.7 of the book introduces the two classic networks, LeNet (1998) and AlexNet
# (2012); chapter 8 builds a deeper network, DeepConvNet, which reaches about 99.4% on
# MNIST but takes long to train, so the book ships its trained parameters. xpcnn builds
# all three from the same layers, and ships DeepConvNet trained on full MNIST.
#
# Here: LeNet as designed (sigmoid, average-pool subsampling) against its modern variant
# (ReLU, max pooling), the full AlexNet's shapes and a reduced one trained on MNIST, and the
# pretrained DeepConvNet. About two minutes, offline.

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

import xpcnn
from xpcnn import Trainer, viz
from xpcnn.data import load_dataset
from xpcnn.models import AlexNet, DeepConvNet, LeNet
from xpcnn.pretrained import provenance

data = load_dataset("mnist-sample")
x_train, t_train, x_test, t_test = data.x_train, data.t_train, data.x_test, data.t_test


def train(net, epochs):
    """Train on the sample; returns the trainer and the seconds it took."""
    trainer = Trainer(net, x_train, t_train, x_test, t_test, epochs=epochs, verbose=False)
    start = time.perf_counter()
    with xpcnn.cpu_threads(2):
        trainer.train()
    return trainer, time.perf_counter() - start


# %% [markdown]
# ## LeNet
#
# `conv 5x5 (6) - sigmoid - subsample - conv 5x5 (16) - sigmoid - subsample - affine 120 -
# affine 84 - affine 10`. The original takes 32x32 images; for MNIST's 28x28 the first
# convolution pads by 2, which gives the same feature-map sizes.

# %%
lenet = LeNet(input_dim=(1, 28, 28), seed=0)
print(lenet.summary())

# %% [markdown]
# The book points out two differences from today's networks: sigmoid instead of ReLU, and
# subsampling instead of max pooling. Trained the same way for five epochs, the sigmoid
# network is still finding its way while the ReLU one is already good: sigmoid's small
# gradients slow learning (chapter 6).

# %%
histories = {}
for activation, pool in [("sigmoid", "avg"), ("relu", "max")]:
    net = LeNet(input_dim=(1, 28, 28), activation=activation, pool=pool, seed=0)
    trainer, seconds = train(net, epochs=5)
    histories[activation] = trainer.history()
    print(
        f"LeNet {activation}/{pool}: test accuracy {trainer.test_accuracy():.3f} ({seconds:.0f} s)"
    )
viz.plot_history(histories["sigmoid"])

# %%
viz.plot_history(histories["relu"])

# %% [markdown]
# ## AlexNet
#
# The full AlexNet is made for 3x227x227 ImageNet photos and has 62 million parameters
# (250 MB of float32). `shape_only=True` builds it without drawing any weight, to read its
# shapes:

# %%
print(AlexNet(shape_only=True).summary())

# %% [markdown]
# `AlexNet.small` keeps the layer pattern (ReLU, local response normalisation, overlapping
# 3x3 max pooling with stride 2, dropout) with fewer channels, for 28x28 or 32x32 images.
# Two epochs on the sample:

# %%
alex = AlexNet.small(input_dim=(1, 28, 28), seed=0)
print(alex.summary())
trainer, seconds = train(alex, epochs=2)
print(f"AlexNet.small: test accuracy {trainer.test_accuracy():.3f} ({seconds:.0f} s)")

# %% [markdown]
# ## DeepConvNet, pretrained
#
# Six 3x3 convolutions with He initialisation, dropout, Adam: the book's `train_deepnet.py`.
# Training it for 20 epochs on full MNIST took 22 minutes on one CPU core; xpcnn ships the
# result, as the book ships `deep_convnet_params.pkl` (but as an `.npz`, checked against
# its SHA-256 before it is read).

# %%
record = provenance()["deep"]
print(record["recipe"])
print("command:", record["command"])
print("accuracy on the 10,000 MNIST test images:", record["test_accuracy"])

deep = xpcnn.load_pretrained("deep")
print(deep.summary())

# %% [markdown]
# The same architecture, untrained, against the pretrained weights, on the sample's 1,000
# test images (drawn from MNIST's test set, which training never saw):

# %%
untrained = DeepConvNet(seed=0)
print("untrained:", untrained.accuracy(x_test, t_test))
start = time.perf_counter()
print("pretrained:", deep.accuracy(x_test, t_test), f"({time.perf_counter() - start:.2f} s)")
viz.plot_misclassified(x_test, t_test, deep.predict(x_test))

# %% [markdown]
# Its training curves, stored with the weights (20 epochs on full MNIST):

# %%
_, meta = xpcnn.load_network_with_meta(xpcnn.pretrained.checkpoint_path("deep"))
viz.plot_history(meta["history"])

# %% [markdown]
# From the command line, the same network evaluates the full test set (downloaded once,
# checked against its published digests), classifies your own images or exports to ONNX:
#
# ```bash
# xpcnn evaluate pretrained:deep --dataset mnist
# xpcnn predict pretrained:deep my_digit.png
# xpcnn export pretrained:deep deep.onnx
# ```
