"""Pure, array-agnostic operations: the namespace comes from the inputs.

Forward functions return ``(out, cache)``; backward functions take ``dout``
and the cache. They import neither NumPy nor CuPy.

Convolution and pooling caches own their backward (``cache.backward(dout)``;
:class:`ConvCache` and :class:`PoolCache` are the protocols): the generic code
returns :class:`Im2colCache`, :class:`ArgmaxPoolCache` or
:class:`AvgPoolCache`, a fast path its own cache, and ``conv2d_backward`` /
``max_pool2d_backward`` just ask the cache.

Imports point one way: the ops import :mod:`xpcnn._window` (window
arithmetic), :mod:`xpcnn._checks` (argument checks) and :mod:`xpcnn._fast`
(the fast-path seam); none imports the ops. The layers, models and optimizers sit above.
"""

from .._window import conv_output_size
from .conv import ConvCache, Im2colCache, col2im, conv2d_backward, conv2d_forward, im2col
from .dense import (
    affine_backward,
    affine_forward,
    cross_entropy_error,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    softmax,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
    tanh_backward,
    tanh_forward,
)
from .dropout import DropoutCache, dropout_backward, dropout_forward
from .norm import (
    BatchNormCache,
    LRNCache,
    batchnorm_backward,
    batchnorm_forward,
    lrn_backward,
    lrn_forward,
)
from .pool import (
    ArgmaxPoolCache,
    AvgPoolCache,
    PoolCache,
    avg_pool2d_backward,
    avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
    relu_max_pool2d_backward,
    relu_max_pool2d_forward,
)

__all__ = [
    "ArgmaxPoolCache",
    "AvgPoolCache",
    "BatchNormCache",
    "ConvCache",
    "DropoutCache",
    "Im2colCache",
    "LRNCache",
    "PoolCache",
    "affine_backward",
    "affine_forward",
    "avg_pool2d_backward",
    "avg_pool2d_forward",
    "batchnorm_backward",
    "batchnorm_forward",
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "conv_output_size",
    "cross_entropy_error",
    "dropout_backward",
    "dropout_forward",
    "im2col",
    "lrn_backward",
    "lrn_forward",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "relu_backward",
    "relu_forward",
    "relu_max_pool2d_backward",
    "relu_max_pool2d_forward",
    "sigmoid_backward",
    "sigmoid_forward",
    "softmax",
    "softmax_cross_entropy_backward",
    "softmax_cross_entropy_forward",
    "tanh_backward",
    "tanh_forward",
]
