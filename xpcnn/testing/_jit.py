"""``check_jit``: does a layer trace under ``jax.jit``, as a compiled training step
(``Trainer(compile=True)``) will trace it?"""

from __future__ import annotations

import traceback
from typing import Any

import numpy as np

from ..backend import Compiler, Device, to_numpy

__all__ = ["check_jit"]

# (exception class name in jax.errors, the cause in the words of the array API rules)
_CAUSES = {
    "TracerBoolConversionError": "Python control flow on an array value (if, while, and, or, "
    "bool() of an array): use xp.where",
    "ConcretizationTypeError": "a Python number taken from an array value (int(), float(), "
    "a shape or a slice bound computed from the data)",
    "TracerIntegerConversionError": "a Python integer taken from an array value (int(), an "
    "index or a range bound)",
    "TracerArrayConversionError": "a conversion to the host (numpy.asarray, to_numpy, .item() "
    "or a NumPy function on an array)",
    "NonConcreteBooleanIndexError": "boolean-mask indexing (x[mask], whose shape depends on "
    "the values): use xp.where",
}
_ITEM_ASSIGNMENT = (
    "item assignment (x[i] = v; JAX arrays are immutable): write through "
    "array_api_extra.at(x, i).set(v), or xp.where"
)


def _cause(exc: BaseException) -> str:
    name = type(exc).__name__
    if name in _CAUSES:
        return _CAUSES[name]
    text = str(exc)
    if isinstance(exc, TypeError) and ("item assignment" in text or "immutable" in text):
        return _ITEM_ASSIGNMENT
    return f"{name}: {text.splitlines()[0] if text else ''}"


def _where(exc: BaseException) -> str:
    """The innermost line of the traceback outside JAX (the user's code)."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if "/jax/" not in f.filename and "/jaxlib/" not in f.filename
    ]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno} ({(f.line or '').strip()})"


def _layer_fn(layer: Any, train_flg: bool, phase: list[str], compiler: Compiler) -> Any:
    """``f(params, x, dout, key) -> (out, dx, grads, buffers)``: the layer's forward and
    backward on the given values, its attributes restored after, drawing from ``key``."""
    from ..train.compiled import keyed_uniform, restored

    def f(params: Any, x: Any, dout: Any, key: Any) -> Any:
        with restored(layer):
            layer.params.update(params)
            if layer.random_seed() is not None:
                layer.draw_from(keyed_uniform(compiler, key))
            phase[0] = "forward"
            out = layer.forward(x, train_flg)
            if dout is None:  # the output's shape only (jax.eval_shape)
                return out
            phase[0] = "backward"
            dx = layer.backward(dout)
            return out, dx, dict(layer.grads), dict(layer.buffers)

    return f


def check_jit(
    layer: Any,
    x: Any,
    *,
    train_flg: bool = True,
    seed: int = 0,
    rtol: float = 1e-6,
    atol: float = 1e-8,
) -> None:
    """Check that ``layer`` traces under ``jax.jit`` as a compiled training step
    (``Trainer(compile=True)``) traces it, and computes there what it computes eagerly.

    1. ``forward(x, train_flg)`` and ``backward(dout)`` run under ``jax.jit`` with the
       parameters, ``x`` and ``dout`` as traced inputs. A failure names the layer, the
       pass, the cause in words (Python control flow on an array value, item
       assignment, a conversion to the host, boolean-mask indexing, ...) and the
       line of the layer's code. The layer's attributes are put back after the trace.
    2. The output, ``dx``, ``grads`` and ``buffers`` equal the eager ones (same key
       for a random layer) to ``rtol`` / ``atol``.
    3. A layer whose eager forward passes differ (it draws random numbers) gives
       different outputs for different keys: its numbers come from
       :meth:`~xpcnn.layers.Layer.draw_from`, not from a host generator, whose
       numbers would be constants of the compiled function.

    Parameters
    ----------
    layer : an :class:`xpcnn.layers.Layer` whose ``params`` are JAX arrays
    x : JAX array, an input the layer takes (small: it is compiled once)
    train_flg : passed to ``forward``
    seed : of ``dout`` and of the keys

    Raises
    ------
    AssertionError
        ``check_jit: <Layer> ...``, naming the problem.
    """
    name = type(layer).__name__
    dev = Device.of(x)
    compiler = dev.adapter.compiler()
    if compiler is None:
        raise AssertionError(
            f"check_jit: {name}: x is a {dev.backend} array; give the layer and x on JAX "
            '(xpcnn.backend.resolve_device("cpu", "jax").asarray(...))'
        )
    rng = np.random.default_rng(seed)
    phase = ["tracing"]
    f = _layer_fn(layer, train_flg, phase, compiler)
    params = dict(layer.params)
    key, other = compiler.key(seed), compiler.key(seed + 1)
    try:
        shape = tuple(compiler.eval_shape(f, params, x, None, key).shape)
        dout = dev.asarray(rng.standard_normal(shape), dtype=x.dtype)
        compiled = compiler.jit(f)(params, x, dout, key)
    except Exception as exc:
        raise AssertionError(
            f"check_jit: {name} does not trace under jax.jit, in its {phase[0]}"
            f"{_where(exc)}: {_cause(exc)}"
        ) from exc
    first, second = _eager_outputs(layer, x, train_flg)
    if not np.array_equal(to_numpy(first), to_numpy(second)):  # eager passes differ: random
        again = compiler.jit(f)(params, x, dout, other)
        if np.array_equal(to_numpy(again[0]), to_numpy(compiled[0])):
            raise AssertionError(
                f"check_jit: {name} draws random numbers but not from Layer.draw_from: "
                "compiled, they are constants (the same every step); implement "
                "Layer.random_seed and Layer.draw_from (see Dropout)"
            )
    _compare(name, compiled, f(params, x, dout, key), rtol, atol)


def _eager_outputs(layer: Any, x: Any, train_flg: bool) -> tuple[Any, Any]:
    """Two eager forward passes of ``layer`` on ``x`` (attributes restored after)."""
    from ..train.compiled import restored

    with restored(layer):
        return layer.forward(x, train_flg), layer.forward(x, train_flg)


def _compare(name: str, compiled: Any, eager: Any, rtol: float, atol: float) -> None:
    out, dx, grads, buffers = compiled
    e_out, e_dx, e_grads, e_buffers = eager
    pairs = [("forward output", out, e_out), ("dx", dx, e_dx)]
    pairs += [(f"grads[{k!r}]", grads[k], e_grads[k]) for k in e_grads]
    pairs += [(f"buffers[{k!r}]", buffers[k], e_buffers[k]) for k in e_buffers]
    for what, a, b in pairs:
        a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
        scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
        if a.shape != b.shape or not np.all(np.abs(a - b) <= atol * scale + rtol * np.abs(b)):
            err = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("nan")
            raise AssertionError(
                f"check_jit: {name}: {what} under jax.jit differs from the eager one "
                f"(shape {a.shape} vs {b.shape}, max abs error {err:.3g}; rtol {rtol:g}, "
                f"atol {atol:g})"
            )
