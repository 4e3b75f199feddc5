"""Pure, array-agnostic operations: the namespace comes from the inputs.
They import neither NumPy nor CuPy.

The op contract, one for every op: a forward function returns ``(out, cache)``
and the cache knows its own backward, ``cache.backward(dout)``, which returns

- ``dx`` (the input's shape and dtype) for an op without parameters (ReLU,
  sigmoid, tanh, pooling, dropout, LRN, softmax cross-entropy, whose ``dout`` is
  a number, 1.0 by default);
- ``(dx, d<param>, ...)`` for an op with parameters: the input gradient, then one
  gradient per parameter argument of the forward function, in its order
  (``conv2d_forward(x, W, b)`` -> ``(dx, dW, db)``; ``affine_forward`` the same;
  ``batchnorm_forward(x, gamma, beta, ...)`` -> ``(dx, dgamma, dbeta)``).

A cache is an immutable value (a ``NamedTuple`` or a frozen dataclass) holding
what its backward needs, so a backward never has to be told the forward's
arguments again, and the backward of a fast path's forward is the fast one:
a fast path returns its own cache (:class:`ConvCache` and :class:`PoolCache`
are the protocols; the generic path returns :class:`Im2colCache`,
:class:`ArgmaxPoolCache` or :class:`AvgPoolCache`). A new op follows the same
pattern: a forward function and a cache class with ``backward``.

Imports point one way: the ops import :mod:`xpcnn._window` (window
arithmetic), :mod:`xpcnn._checks` (argument checks) and :mod:`xpcnn._fast`
(the fast-path seam); none imports the ops. The layers, models and optimizers
sit above.
"""

from .._window import conv_output_size
from .conv import (
    ConvCache,
    ConvReluMaxPoolCache,
    ConvThenCache,
    Im2colCache,
    col2im,
    conv2d_forward,
    conv2d_relu_forward,
    conv2d_relu_max_pool2d_forward,
    im2col,
)
from .dense import (
    AffineCache,
    ReluCache,
    SigmoidCache,
    SoftmaxCrossEntropyCache,
    TanhCache,
    affine_forward,
    cross_entropy_error,
    relu_forward,
    sigmoid_forward,
    softmax,
    softmax_cross_entropy_forward,
    tanh_forward,
)
from .dropout import DropoutCache, dropout_forward
from .norm import BatchNormCache, LRNCache, batchnorm_forward, lrn_forward
from .pool import (
    ArgmaxPoolCache,
    AvgPoolCache,
    PoolCache,
    avg_pool2d_forward,
    max_pool2d_forward,
    relu_max_pool2d_forward,
)

__all__ = [
    "AffineCache",
    "ArgmaxPoolCache",
    "AvgPoolCache",
    "BatchNormCache",
    "ConvCache",
    "ConvReluMaxPoolCache",
    "ConvThenCache",
    "DropoutCache",
    "Im2colCache",
    "LRNCache",
    "PoolCache",
    "ReluCache",
    "SigmoidCache",
    "SoftmaxCrossEntropyCache",
    "TanhCache",
    "affine_forward",
    "avg_pool2d_forward",
    "batchnorm_forward",
    "col2im",
    "conv2d_forward",
    "conv2d_relu_forward",
    "conv2d_relu_max_pool2d_forward",
    "conv_output_size",
    "cross_entropy_error",
    "dropout_forward",
    "im2col",
    "lrn_forward",
    "max_pool2d_forward",
    "relu_forward",
    "relu_max_pool2d_forward",
    "sigmoid_forward",
    "softmax",
    "softmax_cross_entropy_forward",
    "tanh_forward",
]
