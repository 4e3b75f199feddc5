"""The figures of a trained network: what ``xpcnn visualize`` draws, for a notebook too.

:func:`network_figures` assembles them from a network, its data set and its
checkpoint's metadata; each is a :class:`~matplotlib.figure.Figure` keyed by the
file stem the command line writes it under (``filters_after`` ->
``filters_after.png``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..backend import to_numpy
from ..data import Dataset
from ..inputs import as_input
from ..layers import Convolution
from ..metrics import predict_labels
from ..models import Sequential, build_model
from .classification import plot_confusion_matrix, plot_misclassified
from .filters import plot_filter_responses, plot_filters
from .history import plot_history
from .maps import plot_feature_maps

__all__ = ["VISUALS", "conv_feature_maps", "first_conv", "network_figures"]

#: What :func:`network_figures` can draw (``xpcnn visualize --what``).
VISUALS = ("filters", "responses", "features", "curves", "errors", "confusion")


def first_conv(network: Sequential) -> Convolution | None:
    """The network's first :class:`~xpcnn.layers.Convolution` layer, or None."""
    return next((layer for layer in network.layers if isinstance(layer, Convolution)), None)


def conv_feature_maps(network: Sequential, image: Any) -> list[tuple[str, np.ndarray]]:
    """Every convolution's output maps for one ``image`` (C, H, W), as host arrays
    ``[("conv1", (FN, OH, OW)), ...]`` in the network's dtype."""
    maps: list[tuple[str, np.ndarray]] = []
    x = network.device.asarray(np.asarray(image)[None], network.dtype)
    for layer in network.layers:
        x = layer.forward(x, False)
        if isinstance(layer, Convolution):
            maps.append((f"conv{len(maps) + 1}", to_numpy(x)[0]))
    return maps


def network_figures(
    network: Sequential,
    dataset: Dataset,
    meta: Mapping[str, Any] | None = None,
    *,
    what: Sequence[str] = VISUALS,
    image_index: int = 0,
    filters: Sequence[int] | None = None,
) -> dict[str, Figure]:
    """The figures of :data:`VISUALS` named in ``what``, by file stem.

    ``filters``: ``filters_after`` (first-layer filters) and, when ``meta`` holds the
    run's seed and model, ``filters_before`` (the same network rebuilt untrained);
    ``responses``: ``filter_responses`` of test image ``image_index`` to the first-layer
    ``filters`` (default the first four); ``features``: ``feature_maps`` of every
    convolution for that image; ``curves``: ``meta["history"]``, when it holds
    accuracies; ``errors`` / ``confusion``: ``misclassified`` / ``confusion_matrix``
    of the whole test set. A network without a convolution has no filter figures.

    ``meta`` is a checkpoint's metadata (:func:`xpcnn.load_network_with_meta`).
    Raises ValueError for an unknown name in ``what`` or a bad index.
    """
    unknown = sorted(set(what) - set(VISUALS))
    if unknown:
        raise ValueError(f"unknown figures {unknown}: choose from {', '.join(VISUALS)}")
    meta = meta or {}
    figures: dict[str, Figure] = {}
    conv = first_conv(network)
    image = as_input(dataset.x_test[image_index], np.float32)  # IndexError when outside
    if conv is not None:
        if "filters" in what:
            figures.update(_filter_figures(conv, meta))
        if "responses" in what:
            figures["filter_responses"] = plot_filter_responses(
                image[0], to_numpy(conv.W), filter_indices=filters
            )
        if "features" in what:
            figures["feature_maps"] = plot_feature_maps(image[0], conv_feature_maps(network, image))
    if "curves" in what and meta.get("history", {}).get("test_acc"):
        figures["curves"] = plot_history(meta["history"])
    if "errors" in what or "confusion" in what:
        pred = to_numpy(predict_labels(network, dataset.x_test))
        x, t, names = dataset.x_test, dataset.t_test, dataset.class_names
        if "errors" in what:
            figures["misclassified"] = plot_misclassified(x, t, pred, class_names=names)
        if "confusion" in what:
            figures["confusion_matrix"] = plot_confusion_matrix(t, pred, class_names=names)
    return figures


def _filter_figures(conv: Convolution, meta: Mapping[str, Any]) -> dict[str, Figure]:
    """First-layer filters after training, and before when the run's seed is known."""
    figures = {}
    seed = meta.get("run", {}).get("seed")
    if seed is not None and "model" in meta:
        initial = first_conv(build_model(meta["model"], seed=seed))
        if initial is not None:
            figures["filters_before"] = plot_filters(
                to_numpy(initial.W), title="first-layer filters before training"
            )
    figures["filters_after"] = plot_filters(
        to_numpy(conv.W), title="first-layer filters after training"
    )
    return figures
