"""One compiled training step from the same layer code (``Trainer(compile=True)``).

:class:`CompiledUpdater` traces the whole step into one ``jax.jit`` function of
(parameters, optimizer state, buffers, batch, keys, step number, step scalars) that
returns the new parameters, state and buffers and the loss. The batch goes in as the
training set (an argument: no copy) and the batch's row indices, so taking the rows,
augmenting them and converting pixels to floats
(:meth:`~xpcnn.train.updater.StandardUpdater.rows`) are part of the function too,
then forward, backward and the optimizer's update. Nothing is written twice: the
function runs the network's and the optimizer's own methods on traced values, as
``torch.func.functional_call`` does,

1. installing the traced arrays in place of the concrete ones (``params``,
   ``buffers``, the optimizer's ``state``; each random layer draws from a key,
   :meth:`~xpcnn.layers.Layer.draw_from`),
2. running ``network.gradient`` and ``optimizer.apply`` (the eager code),
3. reading the new values out, and restoring every attribute of the network, its
   layers and the optimizer as it was, so no traced value stays in a Python
   object (checked after every trace: :func:`leaked_tracers`).

So a compiled step carries out what lives in ``params``, ``buffers`` and the
optimizer's ``state``: anything else a layer sets during a pass (a cache, the book's
``self.x``) is put back as it was, and state that must outlive a step belongs in
``buffers`` (batch normalisation's running statistics).

The arrays the forward pass caches for the backward pass (:func:`residuals`: the
argmax of max pooling, ``col``) are outputs of the function too, dropped on return: so
XLA computes each once, as the eager step does. Otherwise it fuses their computation
into the backward pass's loops and recomputes it there for every element that reads it
(the pooling argmax four times per window, in a loop it could not vectorise): keeping
them made the step 1.1-1.3x faster (``scripts/BENCHMARKS.md``). Boolean masks (a
ReLU's ``x > 0``) are the exception: one comparison, which XLA recomputes in the loop
that reads it anyway, so writing them out only cost time (SimpleConvNet 1.06x).

After the call the concrete results are assigned to the network and optimizer,
which stay the one source of truth: checkpoints, evaluation and extensions see
them as after an eager step (the layers' ``grads`` and caches are not filled).

Randomness is an input: a layer's key is ``fold_in(fold_in(key(seed), step), n)``
for its :meth:`~xpcnn.layers.Layer.random_seed`, the optimizer step and the n-th
draw of the pass, so masks differ every step, a seed repeats them, and a resumed
run (which restores the step) continues them exactly. The numbers differ from the
eager path's host generators: a compiled run and an eager run with dropout agree
in distribution, not in bits.

What varies between steps goes in as values (:meth:`~xpcnn.optim.Optimizer.step_scalars`:
the learning rate, Adam's bias correction), so schedules never retrace. What does
not (the optimizer's other hyperparameters) is part of the cache key: changing one
compiles again. Each batch shape compiles once; a last short batch is not padded
(padding would change the mean loss and the batch statistics) but compiled once more.

Host-side parts stay outside the function: the batch's indices and shuffles, the
loss check (a NaN loss comes out as a value and stops the run at the next copy to
the host), signals, progress, evaluation and checkpoints. A data-parallel run wraps
this updater as it wraps the eager one: :meth:`CompiledUpdater.gradients` and
:meth:`CompiledUpdater.apply` are compiled separately, and the ranks' gradients
are summed between them on the host.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

from ..backend import Compiler, Device, is_traced
from ..errors import XpcnnError
from ..models import Sequential
from ..optim import Optimizer
from .augment import Augment
from .batches import Batch
from .updater import StandardUpdater

__all__ = [
    "CompileError",
    "CompiledPredictor",
    "CompiledUpdater",
    "assign",
    "check_backend",
    "check_compilable",
    "functional",
    "keyed_uniform",
    "leaked_tracers",
    "residuals",
    "restored",
    "traced_values",
]


class CompileError(XpcnnError, ValueError):
    """The step cannot be compiled: a backend without a compiler, or a layer whose
    random numbers would become constants of the compiled function. Every rank of a
    data-parallel run raises it alike (collective)."""

    collective = True


def check_backend(device: Device) -> None:
    """Raise :class:`CompileError` unless a step on ``device`` can be compiled (JAX)."""
    if device.adapter.compiler() is None:
        raise CompileError(
            f"compiling the training step needs the JAX backend, not {device.backend}: "
            "use --backend jax, or train without --compile"
        )


def check_compilable(network: Sequential) -> None:
    """Raise :class:`CompileError` unless ``network``'s step can be compiled: it must
    live on JAX, and every layer that draws random numbers must take them from a key."""
    check_backend(network.device)
    for i, layer in enumerate(network.layers):
        if layer.rng_state() is not None and layer.random_seed() is None:
            raise CompileError(
                f"layer {i} ({layer!r}) draws random numbers but has no random_seed(): "
                "compiled, they would be constants (the same every step); implement "
                "Layer.random_seed and Layer.draw_from (see Dropout)"
            )


def _compiler(network: Sequential) -> Compiler:
    """The compiler of ``network``'s library (:class:`CompileError` when it has none)."""
    check_backend(network.device)
    return cast(Compiler, network.device.adapter.compiler())


# -- keys -----------------------------------------------------------------------------


def keyed_uniform(compiler: Compiler, key: Any) -> Callable[[tuple[int, ...], Any], Any]:
    """``uniform(shape, like)`` for :meth:`~xpcnn.layers.Layer.draw_from`: the n-th call
    draws from ``fold_in(key, n)``, in ``like``'s dtype."""
    count = itertools.count()

    def uniform(shape: tuple[int, ...], like: Any) -> Any:
        return compiler.uniform(compiler.fold_in(key, next(count)), shape, like.dtype)

    return uniform


# -- the stateful objects as a pure function ---------------------------------------------


def _snapshot(obj: Any) -> dict[str, tuple[Any, dict[Any, Any] | None]]:
    """Each attribute of ``obj``, with a copy of the contents of a dict attribute
    (the layers write ``params[k] = ...`` into their own dicts)."""
    return {k: (v, dict(v) if isinstance(v, dict) else None) for k, v in vars(obj).items()}


def _restore(obj: Any, snap: dict[str, tuple[Any, dict[Any, Any] | None]]) -> None:
    for k in [k for k in vars(obj) if k not in snap]:
        delattr(obj, k)
    for k, (v, contents) in snap.items():
        if contents is not None:
            v.clear()
            v.update(contents)
        setattr(obj, k, v)


@contextlib.contextmanager
def restored(*objects: Any) -> Iterator[None]:
    """Put every attribute of ``objects`` back as it was when the block ends (the
    contents of their dict attributes too), whatever the block assigned."""
    saved = [(obj, _snapshot(obj)) for obj in objects]
    try:
        yield
    finally:
        for obj, snap in saved:
            _restore(obj, snap)


def assign(
    network: Sequential,
    optimizer: Optimizer | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    buffers: Mapping[str, Any] | None = None,
    state: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Give ``network`` these parameters and buffers (by network-level name) and
    ``optimizer`` this state (``{slot: {key: array}}``, copied into new dicts)."""
    for view, values in ((network.params, params), (network.buffers, buffers)):
        for k, v in (values or {}).items():
            view[k] = v
    if state is not None and optimizer is not None:
        optimizer.state = {slot: dict(d) for slot, d in state.items()}


@contextlib.contextmanager
def functional(
    network: Sequential,
    optimizer: Optimizer | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    buffers: Mapping[str, Any] | None = None,
    state: Mapping[str, Mapping[str, Any]] | None = None,
    keys: Mapping[int, Any] | None = None,
    step: Any = 0,
) -> Iterator[None]:
    """Run ``network`` (and ``optimizer``) on the given values inside the block, then
    put every attribute back as it was.

    ``params`` / ``buffers`` (by network-level name) and ``state`` (the optimizer's
    ``{slot: {key: array}}``) replace the objects' own; ``keys`` maps a layer's index
    to its key, and the layer draws from ``fold_in(key, step)`` (:func:`keyed_uniform`).
    Read the results out before the block ends: what the block wrote (new
    parameters, caches, the loss) is gone after it.
    """
    objects = [network, *network.layers, network.last_layer]
    if optimizer is not None:
        objects.append(optimizer)
    with restored(*objects):
        assign(network, optimizer, params=params, buffers=buffers, state=state)
        if keys:
            c = _compiler(network)
            for i, key in keys.items():
                network.layers[i].draw_from(keyed_uniform(c, c.fold_in(key, step)))
        yield


def leaked_tracers(*objects: Any, limit: int = 10) -> list[str]:
    """Where a JAX tracer is held in ``objects`` (their attributes, and the dicts,
    lists and tuples inside, to any depth), as ``"Dropout._cache.mask"``-like paths."""
    return [path for path, _ in traced_values(*objects, limit=limit)]


def traced_values(*objects: Any, limit: int | None = None) -> list[tuple[str, Any]]:
    """The traced arrays held in ``objects`` (as :func:`leaked_tracers` searches), each
    once, with its path; at most ``limit``."""
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def visit(v: Any, path: str) -> None:
        if (limit is not None and len(found) >= limit) or id(v) in seen:
            return
        seen.add(id(v))
        if is_traced(v):
            found.append((path, v))
        elif isinstance(v, dict):
            for k, item in v.items():
                visit(item, f"{path}[{k!r}]")
        elif isinstance(v, (list, tuple)):
            names = getattr(v, "_fields", None) or range(len(v))
            for k, item in zip(names, v, strict=False):
                visit(item, f"{path}.{k}" if isinstance(k, str) else f"{path}[{k}]")
        elif hasattr(v, "__dict__") and not isinstance(v, type) and _ours(v):
            for k, item in vars(v).items():
                visit(item, f"{path}.{k}")

    for obj in objects:
        visit(obj, type(obj).__name__)
    return found


def residuals(network: Sequential, *exclude: Any) -> list[Any]:
    """The arrays the network's caches hold after a traced forward pass
    (:meth:`Sequential.caches <xpcnn.models.Sequential.caches>`), less those in
    ``exclude`` (dicts of arrays, or arrays: the function's inputs and outputs) and
    boolean masks (cheaper recomputed than stored: see the module docstring)."""
    skip = {
        id(v) for group in exclude for v in (group.values() if isinstance(group, dict) else [group])
    }
    xp = network.device.xp
    return [
        v
        for _, v in traced_values(*network.caches())
        if id(v) not in skip and not xp.isdtype(v.dtype, "bool")
    ]


def _ours(v: Any) -> bool:
    """Objects whose attributes are searched: xpcnn's and users' (not modules, functions
    or library internals such as generators)."""
    return not type(v).__module__.startswith(("builtins", "numpy", "jax", "jaxlib", "torch"))


# -- the updater ------------------------------------------------------------------------


class CompiledUpdater(StandardUpdater):
    """:class:`~xpcnn.train.updater.StandardUpdater`'s step, compiled with ``jax.jit``
    (see the module docstring). ``network`` must live on JAX (:class:`CompileError`
    otherwise). :meth:`update` runs one compiled function per step; :meth:`gradients`
    and :meth:`apply` (a data-parallel run reduces between them) one each.
    """

    def __init__(
        self,
        network: Sequential,
        optimizer: Optimizer,
        x_train: Any,
        t_train: Any,
        augment: Augment | None = None,
    ):
        check_compilable(network)
        super().__init__(network, optimizer, x_train, t_train, augment)
        self._compiled: dict[Any, Callable[..., Any]] = {}
        self._keys: dict[int, Any] = {}  # seed -> key
        self._traced = False  # set while a function is traced: then leaks are looked for

    # -- the pure functions (traced; also callable eagerly, on concrete arrays) -----------
    def grad_fn(
        self, params: Any, buffers: Any, x: Any, t: Any, keys: Any, step: Any
    ) -> tuple[dict[str, Any], Any, dict[str, Any], list[Any]]:
        """``(grads, loss, new buffers, kept)`` of a batch: ``network.gradient``; ``kept``
        holds the forward pass's cached arrays (:func:`residuals`), to be dropped."""
        self._traced = True
        net = self.network
        with functional(net, params=params, buffers=buffers, keys=keys, step=step):
            grads = net.gradient(x, t)
            loss, new_buffers = net.last_layer.loss, dict(net.buffers)
            kept = residuals(net, params, buffers, grads, new_buffers, x, t, loss)
            return grads, loss, new_buffers, kept

    def apply_fn(
        self, params: Any, state: Any, grads: Any, s: Any
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """``(new params, new state)``: ``optimizer.apply`` with step scalars ``s``."""
        self._traced = True
        net, opt = self.network, self.optimizer
        with functional(net, opt, params=params, state=state):
            opt.apply(net.params, grads, s)
            return dict(net.params), {slot: dict(d) for slot, d in opt.state.items()}

    def step_fn(
        self, params: Any, state: Any, buffers: Any, batch: Any, keys: Any, step: Any, s: Any
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any], Any, list[Any]]:
        """One whole step, from the batch's rows to the update: ``(new params, new state,
        new buffers, loss, kept)``; ``batch`` is what :meth:`rows` takes (:meth:`source`)."""
        x, t = self.rows(*batch)
        grads, loss, buffers, kept = self.grad_fn(params, buffers, x, t, keys, step)
        params, state = self.apply_fn(params, state, grads, s)
        return params, state, buffers, loss, kept

    # -- the steps -------------------------------------------------------------------------
    def inputs(self) -> dict[str, Any]:
        """The current values the pure functions take, from the network and optimizer:
        ``params``, ``buffers``, ``state``, ``keys`` (a random layer's index -> the key
        of its seed), ``step`` (the coming optimizer step) and its scalars ``s``."""
        net, opt = self.network, self.optimizer
        opt.init_state(net.params)  # zeros before the first trace: one structure throughout
        keys = {}
        for i, layer in enumerate(net.layers):
            seed = layer.random_seed()
            if seed is not None:
                if seed not in self._keys:
                    self._keys[seed] = _compiler(net).key(seed)
                keys[i] = self._keys[seed]
        step = opt.iter + 1
        return {
            "params": dict(net.params),
            "buffers": dict(net.buffers),
            "state": {slot: dict(d) for slot, d in opt.state.items()},
            "keys": keys,
            "step": step,
            "s": opt.step_scalars(step),
        }

    def _jit(self, name: str) -> Callable[..., Any]:
        """The compiled ``<name>_fn``, one per value of the optimizer's hyperparameters
        that are constants of it (all but the step scalars)."""
        opt = self.optimizer
        scalars = opt.step_scalars(1)
        fixed = tuple((k, v) for k, v in opt.hyperparameters().items() if k not in scalars)
        cache_key = (name, fixed)
        if cache_key not in self._compiled:
            method = getattr(self, f"{name}_fn")

            # A new function for each key: jax reuses the trace of a function equal to
            # one it has seen, and bound methods of one object compare equal.
            def fn(*args: Any) -> Any:
                return method(*args)

            self._compiled[cache_key] = _compiler(self.network).jit(fn)
        return self._compiled[cache_key]

    def _call(self, name: str, *args: Any) -> Any:
        self._traced = False
        out = self._jit(name)(*args)
        if self._traced:  # traced now: no traced value may outlive it
            leaks = leaked_tracers(self.network, *self.network.layers, self.optimizer)
            if leaks:
                raise CompileError(
                    f"the compiled step left traced values in {', '.join(leaks)}: a layer keeps "
                    "state that a compiled step cannot carry out; keep it in layer.buffers"
                )
        return out

    def update(self, batch: Batch) -> Any:
        a = self.inputs()
        rows = self.source(batch.indices, batch.epoch)  # taken and augmented in the step
        params, state, buffers, loss, _ = self._call(
            "step", a["params"], a["state"], a["buffers"], rows, a["keys"], a["step"], a["s"]
        )
        assign(self.network, self.optimizer, params=params, buffers=buffers, state=state)
        self.optimizer.iter = a["step"]
        return loss

    def gradients(self, x: Any, t: Any) -> tuple[dict[str, Any], Any]:
        a = self.inputs()
        grads, loss, buffers, _ = self._call(
            "grad", a["params"], a["buffers"], x, t, a["keys"], a["step"]
        )
        assign(self.network, buffers=buffers)
        return grads, loss

    def apply(self, grads: dict[str, Any]) -> None:
        a = self.inputs()
        params, state = self._call("apply", a["params"], a["state"], grads, a["s"])
        assign(self.network, self.optimizer, params=params, state=state)
        self.optimizer.iter = a["step"]


class CompiledPredictor:
    """``network`` with its inference (``predict(x)``, ``train_flg=False``) compiled,
    one function per input shape; every other attribute is the network's. What a
    compiled run's evaluation counts with (:func:`xpcnn.metrics.count_correct`)."""

    def __init__(self, network: Sequential) -> None:
        self._network = network
        self._fn: Callable[..., Any] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._network, name)

    def _predict_fn(self, params: Any, buffers: Any, x: Any) -> Any:
        net = self._network
        with functional(net, params=params, buffers=buffers):
            return net.predict(x, keep_cache=False)

    def predict(self, x: Any, train_flg: bool = False, *, keep_cache: bool = True) -> Any:
        """Scores (N, K), as :meth:`Sequential.predict <xpcnn.models.Sequential.predict>`;
        compiled for inference (training mode, or a cache kept, runs the network's own)."""
        net = self._network
        if train_flg or keep_cache:
            return net.predict(x, train_flg, keep_cache=keep_cache)
        if self._fn is None:
            self._fn = _compiler(net).jit(self._predict_fn)
        return self._fn(dict(net.params), dict(net.buffers), net.device.asarray(x))
