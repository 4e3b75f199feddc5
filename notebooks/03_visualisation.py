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
# # 3. What a convolutional network learns: filters, feature maps, mistakes
#
# Chapter 7.6 of the book shows the first layer's filters before and after training
# (figure 7-24) and what some of them respond to (figure 7-25). This notebook draws those
# figures, and more, for the SimpleConvNet that xpcnn ships trained on full MNIST (the
# book's `train_convnet.py` recipe, 0.989 test accuracy), for a network trained here for a
# few seconds, and for the deeper DeepConvNet of chapter 8.
#
# Every `xpcnn.viz.plot_*` function returns a matplotlib `Figure`, which the notebook
# shows; given a path, it also writes a PNG. About a minute, offline.

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

import xpcnn
from xpcnn import SimpleConvNet, Trainer, to_numpy, viz
from xpcnn.data import load_dataset
from xpcnn.models import build_model
from xpcnn.pretrained import checkpoint_path, provenance

data = load_dataset("mnist-sample")
print(provenance()["simple"]["recipe"])
print("full-test-set accuracy:", provenance()["simple"]["test_accuracy"])

# %% [markdown]
# ## First-layer filters, before and after training
#
# The pretrained network's metadata records its configuration and its seed, so the
# untrained network it started from is one call away. Before training the 30 filters of
# 5x5 are noise; after, many are edge and stroke detectors (dark = large weight).

# %%
trained, meta = xpcnn.load_network_with_meta(checkpoint_path("simple"))
untrained = build_model(meta["model"], seed=meta["run"]["seed"])
viz.plot_filters(to_numpy(untrained.params["W1"]), title="before training (seed 0)")

# %%
viz.plot_filters(to_numpy(trained.params["W1"]), title="after 20 epochs on full MNIST")

# %% [markdown]
# ## What the filters respond to
#
# Each filter slid over one test digit (figure 7-25 of the book): bright where the image
# looks like the filter. Some filters pick out vertical strokes, some horizontal ones,
# some one side of a stroke.

# %%
image = data.x_test[0, 0] / 255  # a 9
viz.plot_filter_responses(image, to_numpy(trained.params["W1"]), filter_indices=[0, 3, 7, 12, 20])

# %% [markdown]
# ## Feature maps through a deeper network
#
# DeepConvNet (chapter 8) stacks six 3x3 convolutions. `viz.conv_feature_maps` runs one
# image through the network and keeps every convolution's output; deeper maps are
# smaller and more abstract.

# %%
deep = xpcnn.load_pretrained("deep")
maps = viz.conv_feature_maps(deep, data.x_test[0] / 255)
print([(name, m.shape) for name, m in maps])
viz.plot_feature_maps(image, maps, max_channels=10)

# %% [markdown]
# ## Your own run: filters after a few seconds
#
# Training on the sample for three epochs already turns the noise into strokes.

# %%
mine = SimpleConvNet(seed=0)
before = to_numpy(mine.params["W1"]).copy()
Trainer(mine, data.x_train, data.t_train, data.x_test, data.t_test, epochs=3, verbose=False).train()
print("test accuracy after 3 epochs on the sample:", mine.accuracy(data.x_test, data.t_test))
print("largest change of a first-layer weight:", np.abs(to_numpy(mine.params["W1"]) - before).max())
viz.plot_filters(to_numpy(mine.params["W1"]), title="after 3 epochs on the sample")

# %% [markdown]
# ## Mistakes
#
# The 1,000 test images of the sample, classified by the two pretrained networks. The
# images they get wrong are few, and often ambiguous.

# %%
for name, net in [("simple", trained), ("deep", deep)]:
    pred = net.predict(data.x_test).argmax(axis=1)
    wrong = np.flatnonzero(pred != data.t_test)
    print(f"{name}: {len(wrong)} wrong, test images {wrong.tolist()}")
viz.plot_misclassified(data.x_test, data.t_test, deep.predict(data.x_test))

# %%
viz.plot_confusion_matrix(data.t_test, trained.predict(data.x_test), class_names=data.class_names)

# %% [markdown]
# ## All of them at once
#
# `viz.network_figures` draws everything `xpcnn visualize` writes as PNG files, keyed by
# file name; the training curves come from the metadata's history (here the 20 epochs on
# full MNIST). The same figures from the command line:
#
# ```bash
# xpcnn visualize pretrained:simple --dataset mnist-sample --out figures/
# ```

# %%
figures = viz.network_figures(trained, data, meta)
print(sorted(figures))
figures["curves"]
