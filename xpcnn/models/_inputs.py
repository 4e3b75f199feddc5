"""How a network takes its inputs: from the host or its own device, integer pixels
or floats, batched (N, *input_dim) or flat (N, D); anything else is refused in one
line that says how to build a network for it."""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import array_namespace, is_numpy_array

from ..backend import Device
from ..inputs import as_input

__all__ = ["network_input"]


def network_input(net: Any, x: Any) -> Any:
    """``x`` as the input of ``net`` (a :class:`~xpcnn.models.Sequential`, which is
    not imported here: it imports this module): on its device (host arrays are copied
    there), integer pixels scaled to [0, 1] and floats cast to its dtype
    (:func:`xpcnn.inputs.as_input`, as the Trainer does), flat (N, D) rows
    reshaped to (N, *input_dim). Any other shape, or an array of another
    library than the network's (NumPy excepted), is refused in one line."""
    _check_library(net, x)
    shape, D = tuple(x.shape), math.prod(net.input_dim)
    if shape[1:] != net.input_dim:
        # A 1-D input_dim (a stack of Affine layers) flattens whatever it gets.
        flat_ok = len(shape) >= 2 and math.prod(shape[1:]) == D
        if not flat_ok or (len(shape) > 2 and len(net.input_dim) > 1):
            raise ValueError(_shape_error(net, shape))
    x = net.device.asarray(x)
    if net.dtype is not None:
        x = as_input(x, net.dtype)
    if len(shape) == 2 and len(net.input_dim) > 1:
        x = net.device.xp.reshape(x, (shape[0], *net.input_dim))
    return x


def _shape_error(net: Any, shape: tuple[int, ...]) -> str:
    want = f"(N, {', '.join(map(str, net.input_dim))})"
    if len(net.input_dim) > 1:
        want += f" or flat (N, {math.prod(net.input_dim)})"
    got = shape[1:] if len(shape) > 1 else shape
    name = type(net).__name__
    if shape == net.input_dim:
        return f"{name} got one example of shape {shape}: add the batch axis (x[None])"
    fix = net._build_hint(got)
    return f"{name} expects inputs {want}, got {shape}; build the network for it: {fix}"


def _check_library(net: Any, x: Any) -> None:
    """One clear line when ``x`` comes from another array library than the network's
    parameters (instead of array-api-compat's "Multiple namespaces for array inputs").
    NumPy arrays are host data: they are copied to the network's device."""
    try:
        xp = array_namespace(x)
    except TypeError:
        return  # not an array: the first layer says what it expects
    if xp is not net.device.xp and not is_numpy_array(x):
        theirs = Device.of(x).backend
        raise TypeError(
            f"{type(net).__name__} holds {net.device.backend} arrays ({net.device.name}) but was "
            f"given a {theirs} array: move the input with net.device.asarray(x), or build the "
            f"network with backend={theirs!r}"
        )
