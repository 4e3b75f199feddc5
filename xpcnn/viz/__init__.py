"""Headless figures for chapter 7: filters, responses, feature maps, training, errors.

Every ``plot_*`` function takes NumPy arrays (move data off the device with
``xpcnn.backend.to_numpy``), draws on a fresh :class:`matplotlib.figure.Figure`
with an Agg canvas — never ``pyplot`` and its global state, so this works with
no display and from several threads — and returns the figure: a notebook shows
it inline. Given a ``path``, it also writes the figure there as a PNG, atomically
(:func:`save_figure`: a temporary file beside ``path``, then a rename); the
folder must exist.

Figure sizes are fixed inches at :data:`DPI` (whole multiples of 1/4 inch, so
``inches * DPI`` is an exact integer); the pixel size therefore depends only on
the layout (number of filters, layers, ...), never on the data or on
``rcParams["savefig.*"]``. Each function documents its size.

Modules, by job: :mod:`.filters` (filters and their responses), :mod:`.maps`
(feature maps), :mod:`.history` (training curves), :mod:`.classification`
(misclassified images, confusion matrix), :mod:`.network` (all of them for a
trained network: :func:`network_figures`, what ``xpcnn visualize`` writes).
"""

from ._figure import DPI, save_figure
from .classification import confusion_matrix, plot_confusion_matrix, plot_misclassified
from .filters import filter_responses, plot_filter_responses, plot_filters
from .history import plot_history
from .maps import plot_feature_maps
from .network import VISUALS, conv_feature_maps, first_conv, network_figures

__all__ = [
    "DPI",
    "VISUALS",
    "confusion_matrix",
    "conv_feature_maps",
    "filter_responses",
    "first_conv",
    "network_figures",
    "plot_confusion_matrix",
    "plot_feature_maps",
    "plot_filter_responses",
    "plot_filters",
    "plot_history",
    "plot_misclassified",
    "save_figure",
]
