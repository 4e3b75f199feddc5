"""The compiled training step (``Trainer(compile=True)``, ``xpcnn train --compile``):
one ``jax.jit`` function from the same layer and optimizer code, equal to the eager
step; randomness from keys; state out as values; no tracer left behind."""

from __future__ import annotations

import json

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from test_train import (  # noqa: E402
    SMALL,
    assert_divergence_keeps_last_good_checkpoint,
    run_ranks,
)

from xpcnn.backend import resolve_device  # noqa: E402
from xpcnn.cli import main  # noqa: E402
from xpcnn.data import load_dataset  # noqa: E402
from xpcnn.layers import (  # noqa: E402
    LRN,
    Affine,
    BatchNormalization,
    Convolution,
    Dropout,
    Layer,
    Pooling,
    Relu,
    Sigmoid,
    Tanh,
)
from xpcnn.metrics import count_correct  # noqa: E402
from xpcnn.models import NetBuilder, SimpleConvNet  # noqa: E402
from xpcnn.optim import OPTIMIZERS, make_optimizer  # noqa: E402
from xpcnn.testing import check_jit  # noqa: E402
from xpcnn.train import (  # noqa: E402
    Augment,
    EarlyStopping,
    StepLR,
    Trainer,
)
from xpcnn.train.batches import Batch  # noqa: E402
from xpcnn.train.compiled import (  # noqa: E402
    CompiledPredictor,
    CompiledUpdater,
    CompileError,
    assign,
    functional,
    leaked_tracers,
)
from xpcnn.train.updater import StandardUpdater  # noqa: E402

JAX = resolve_device("cpu", "jax")


@pytest.fixture(scope="module")
def data():
    d = load_dataset("mnist-sample")
    return d.x_train[:200], d.t_train[:200], d.x_test[:100], d.t_test[:100]


def simple(dtype="float64", seed=0):
    return SimpleConvNet(**SMALL, dtype=dtype, device=JAX, seed=seed)


def dropout_net(seed=0, dtype="float64", batchnorm=False):
    """A small dense net with two dropout layers (and batch normalisation)."""
    b = NetBuilder((1, 28, 28), seed=seed, dtype=dtype, device=JAX).affine(16)
    if batchnorm:
        b = b.batchnorm()
    return b.relu().dropout(0.5).affine(10).dropout(0.3).build()


def first_dropout(net):
    return next(layer for layer in net.layers if isinstance(layer, Dropout))


def trainer(net, data, *, compile, epochs=1, **kw):
    kw.setdefault("mini_batch_size", 40)
    kw.setdefault("evaluate_sample_num_per_epoch", 20)
    return Trainer(net, *data, epochs=epochs, verbose=False, seed=1, compile=compile, **kw)


def host(net):
    return {k: np.asarray(v) for k, v in [*net.params.items(), *net.buffers.items()]}


def assert_same(a, b, atol, rtol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


# -- the compiled step equals the eager one -------------------------------------------------


def steps(net, data, optimizer, n, batch=10, *, compile):
    """``n`` steps of an eager or compiled updater on consecutive batches; the losses."""
    dev = net.device
    cls = CompiledUpdater if compile else StandardUpdater
    up = cls(net, optimizer, dev.asarray(data[0]), dev.asarray(data[1]))
    losses = []
    for i in range(n):
        idx = np.arange(i * batch, (i + 1) * batch) % data[0].shape[0]
        losses.append(float(up.update(Batch(i + 1, idx, batch))))
    return losses


def test_compiled_parameters_after_20_steps_equal_eager_float64(data):
    """The issue's target: float64, no dropout, 20 steps (Adam), to 1e-9."""
    nets = {c: simple() for c in (False, True)}
    opts = {c: make_optimizer("Adam") for c in (False, True)}
    losses = {c: steps(nets[c], data, opts[c], 20, compile=c) for c in (False, True)}
    assert_same(host(nets[True]), host(nets[False]), atol=1e-9)
    np.testing.assert_allclose(losses[True], losses[False], rtol=0, atol=1e-9)
    assert_same(opts[True].state_arrays(), opts[False].state_arrays(), atol=1e-9)
    assert opts[True].iter == 20


def test_compiled_float32_is_close_to_eager(data):
    """float32: XLA fuses and reorders the arithmetic, so the bits may differ."""
    nets = {c: simple("float32") for c in (False, True)}
    for c, net in nets.items():
        steps(net, data, make_optimizer("Adam"), 5, compile=c)
    assert_same(host(nets[True]), host(nets[False]), atol=1e-5, rtol=1e-4)


def dense(batchnorm=True):
    b = NetBuilder((6,), seed=0, dtype="float64", device=JAX).affine(5)
    return (b.batchnorm() if batchnorm else b).relu().affine(3).build()


RANDOM_DATA = (
    np.random.default_rng(0).standard_normal((40, 6)),
    np.random.default_rng(1).integers(0, 3, 40),
)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_and_batch_norm_compiled_equal_eager(name):
    """Optimizer state and running statistics come out of the compiled step as values."""
    nets = {c: dense() for c in (False, True)}
    opts = {c: make_optimizer(name, lr=0.01) for c in (False, True)}
    for c in (False, True):
        steps(nets[c], RANDOM_DATA, opts[c], 5, compile=c)
    assert_same(host(nets[True]), host(nets[False]), atol=1e-9)
    assert "running_mean2" in host(nets[True])
    assert_same(opts[True].state_arrays(), opts[False].state_arrays(), atol=1e-9)
    assert opts[True].iter == opts[False].iter == 5


def test_a_learning_rate_change_applies_without_compiling_again():
    """The learning rate is an input of the compiled step (schedules); a fixed
    hyperparameter (momentum) is a constant of it: changing one compiles again."""
    nets = {c: dense(batchnorm=False) for c in (False, True)}
    opts = {c: make_optimizer("Momentum", lr=0.1) for c in (False, True)}
    ups = {}
    for c in (False, True):
        cls = CompiledUpdater if c else StandardUpdater
        ups[c] = cls(nets[c], opts[c], JAX.asarray(RANDOM_DATA[0]), JAX.asarray(RANDOM_DATA[1]))
    for change in (None, ("lr", 0.01), ("momentum", 0.5)):
        for c in (False, True):
            if change:
                setattr(opts[c], *change)
            for i in range(3):
                ups[c].update(Batch(i + 1, np.arange(i * 10, i * 10 + 10), 10))
        assert_same(host(nets[True]), host(nets[False]), atol=1e-12)
    assert [fn._cache_size() for fn in ups[True]._compiled.values()] == [1, 1]  # momentum 0.9, 0.5


def test_compiled_evaluation_counts_as_the_eager_one(data):
    net = dropout_net(seed=3)  # inference: no dropout
    x, t = data[2], data[3]
    assert count_correct(CompiledPredictor(net), x, t, 30) == count_correct(net, x, t, 30)
    assert leaked_tracers(net, *net.layers) == []


def test_the_last_short_batch_compiles_once_more_and_no_step_retraces(data):
    tr = trainer(dropout_net(), data, compile=True, epochs=2, mini_batch_size=70)  # 70, 70, 60
    tr.train()
    (fn,) = tr.updater._compiled.values()
    assert fn._cache_size() == 2
    assert len(tr.train_loss_list) == 6


def test_split_schedule_augmentation_and_early_stopping_compiled_equal_eager(data):
    """Main's run extensions around a compiled step: the validation split and its
    metrics (compiled evaluation), a step schedule (the rate is an input: each batch
    shape compiles once over three rates), crops (applied in ``take``, before the
    compiled function) and early stopping, as in the eager run (float64, no dropout)."""
    runs = {}
    for c in (False, True):
        tr = trainer(
            simple(),
            data,
            compile=c,
            epochs=4,
            val_split=0.25,  # 150 train: batches of 40, 40, 40, 30
            augment=Augment("crop", pad=2, seed=5),
            extensions=[
                StepLR(step_size=1, gamma=0.5),
                EarlyStopping(2, monitor="val_loss", min_delta=1.0),  # stops after epoch 3
            ],
        )
        tr.train()
        runs[c] = tr
    eager, compiled = runs[False], runs[True]
    assert_same(host(compiled.network), host(eager.network), atol=1e-9)
    h, e = compiled.history(), eager.history()
    assert h["lr"] == e["lr"] == [0.001, 0.0005, 0.00025]
    for key in ("val_acc", "val_loss", "train_loss"):
        np.testing.assert_allclose(h[key], e[key], rtol=0, atol=1e-9, err_msg=key)
    assert h["stop_reason"] == e["stop_reason"] and "val_loss" in h["stop_reason"]
    (fn,) = compiled.updater._compiled.values()
    assert fn._cache_size() == 2  # batch shapes 40 and 30, whatever the rate


def test_cli_compile_with_split_schedule_augmentation_and_early_stopping(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--backend", "jax", "--compile", "--epochs", "2", "--train-size", "100"]
    argv += ["--eval-samples", "50", "--batch-size", "50", "--out", str(out), "--no-progress"]
    argv += ["--val-split", "0.2", "--lr-schedule", "step", "--lr-step-size", "1"]
    argv += ["--augment", "crop", "--early-stopping", "3"]
    assert main(argv) == 0
    history = json.loads((out / "history.json").read_text())
    assert history["lr"] == [0.001, 0.0001]
    assert len(history["val_acc"]) == 2
    assert (out / "best.npz").exists()


# -- randomness from keys --------------------------------------------------------------------


def test_dropout_masks_differ_every_step_and_repeat_with_the_seed():
    """Under jax.jit the mask is fold_in(key(seed), step)'s: an input, not a constant."""
    x = JAX.asarray(np.ones((50, 1, 28, 28)), "float64")

    def mask(seed, step):
        net = dropout_net(seed)
        up = CompiledUpdater(net, make_optimizer("SGD"), x, x)

        @jax.jit
        def f(params, keys, step):
            with functional(net, params=params, keys=keys, step=step):
                net.predict(x, train_flg=True)
                return first_dropout(net).mask

        return np.asarray(f(dict(net.params), up.inputs()["keys"], step))

    first = mask(0, 1)
    assert 0.4 < first.mean() < 0.6  # dropout_ratio 0.5
    assert np.array_equal(mask(0, 1), first)
    assert not np.array_equal(mask(0, 2), first)
    assert not np.array_equal(mask(1, 1), first)  # another seed


def test_same_seed_same_parameters_another_seed_others(data):
    runs = {}
    for seed in (0, 0, 1):
        net = dropout_net()
        for layer in net.layers:  # the nets differ in their dropout seeds only
            layer.reseed(lambda s, seed=seed: None if s is None else s + seed)
        trainer(net, data, compile=True).train()
        runs.setdefault(seed, []).append(host(net))
    assert_same(runs[0][0], runs[0][1], atol=0)
    assert any(not np.array_equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])


def test_compiled_step_with_dropout_equals_the_same_function_run_eagerly(data):
    """The traced function, run eagerly on the same keys, gives the same numbers: the
    compiled step is the layers' own code, masks included."""
    x = JAX.asarray(data[0][:40].astype(np.float64) / 255, "float64")
    t = JAX.asarray(data[1][:40])
    ups = [
        CompiledUpdater(dropout_net(batchnorm=True), make_optimizer("Adam"), x, t) for _ in range(2)
    ]
    for i in range(3):
        idx = np.arange(i * 10, i * 10 + 10)
        ups[0].update(Batch(i + 1, idx, 10))
        eager = ups[1]
        a = eager.inputs()
        rows = eager.source(idx)
        p, s, b, _, kept = eager.step_fn(
            a["params"], a["state"], a["buffers"], rows, a["keys"], a["step"], a["s"]
        )
        assert kept == []  # run eagerly, nothing is traced: nothing to keep
        assign(eager.network, eager.optimizer, params=p, buffers=b, state=s)
        eager.optimizer.iter = a["step"]
    assert_same(host(ups[0].network), host(ups[1].network), atol=1e-9)


def test_compiled_step_keeps_the_forward_caches_and_only_them(data):
    """The arrays the caches hold come out of the step (so XLA computes them once rather
    than inside the backward pass): the pooling argmax and ``colT`` among them, not the
    ReLU masks (one comparison, recomputed where it is read); no input (a parameter, the
    batch) and no other output (a gradient, the loss) twice."""
    x = JAX.asarray(data[0][:20].astype(np.float32) / 255, "float32")
    t = JAX.asarray(data[1][:20])
    up = CompiledUpdater(
        SimpleConvNet(dtype="float32", device=JAX, seed=0), make_optimizer("Adam"), x, t
    )
    a = up.inputs()
    rows = up.source(np.arange(10))
    args = (a["params"], a["state"], a["buffers"], rows, a["keys"], a["step"], a["s"])
    *_, kept = jax.eval_shape(up.step_fn, *args)
    got = {(tuple(k.shape), str(k.dtype)) for k in kept}
    assert ((10, 30, 144), "int16") in got  # the max-pooling argmax
    assert ((25, 10 * 24 * 24), "float32") in got  # the first convolution's colT
    assert not {k for k in got if k[1] == "bool"}  # ReLU masks: cheaper recomputed
    params = {(tuple(v.shape), str(v.dtype)) for v in a["params"].values()}
    assert not got & params  # neither a parameter nor its gradient
    assert ((), "float32") not in got and ((10, 1, 28, 28), "float32") not in got
    assert leaked_tracers(up.network, *up.network.layers, up.optimizer) == []


def test_resume_of_a_compiled_dropout_run_is_exact(data, tmp_path):
    straight = trainer(dropout_net(), data, compile=True, epochs=2)
    straight.train()
    first = trainer(dropout_net(), data, compile=True, epochs=1)
    first.train()
    first.save_checkpoint(tmp_path / "ck.npz")
    resumed = trainer(dropout_net(), data, compile=True, epochs=2)
    resumed.load_checkpoint(tmp_path / "ck.npz")
    resumed.train()
    assert_same(host(resumed.network), host(straight.network), atol=0)


# -- nothing traced outlives the step ----------------------------------------------------------


def test_no_tracer_is_left_in_any_layer_or_the_optimizer(data):
    tr = trainer(dropout_net(batchnorm=True), data, compile=True)
    tr.train()
    net = tr.network
    assert leaked_tracers(net, *net.layers, net.last_layer, tr.optimizer, tr.updater) == []
    for view in (net.params, net.buffers):
        assert all(isinstance(v, jax.Array) for v in view.values())
    for slots in tr.optimizer.state.values():
        assert all(isinstance(v, jax.Array) for v in slots.values())


def test_the_leak_check_finds_tracers_at_any_depth():
    class Holder:
        pass

    found = []

    @jax.jit
    def f(x):
        h = Holder()
        h.inner = {"a": [1, (2, x)]}
        found.extend(leaked_tracers(h))
        return x

    f(JAX.asarray(np.ones(2), "float64"))
    assert found == ["Holder.inner['a'][1][1]"]


# -- what cannot be compiled: one clear error ---------------------------------------------------


def test_compile_on_another_backend_is_refused(data):
    net = SimpleConvNet(**SMALL, dtype="float64", seed=0)
    with pytest.raises(CompileError, match="needs the JAX backend, not numpy: use --backend jax"):
        Trainer(net, *data, compile=True, verbose=False)


def test_cli_compile_without_jax_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["train", "--compile", "--epochs", "1", "--train-size", "50", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().splitlines() == [
        "xpcnn train: error: compiling the training step needs the JAX backend, not numpy: "
        "use --backend jax, or train without --compile"
    ]
    assert not out.exists()


class HostRandom(Layer):
    """Draws its numbers on the host and says so (rng_state), but takes no key."""

    def rng_state(self):
        return {}

    def forward(self, x, train_flg=True):
        return x

    def backward(self, dout):
        return dout


class BookStyle(Layer):
    """The book's style: the input kept in a public attribute for the backward pass."""

    def forward(self, x, train_flg=True):
        self.x = x
        return x * x

    def backward(self, dout):
        return 2.0 * self.x * dout


def _with(layer):
    b = NetBuilder((4,), seed=0, dtype="float64", device=JAX).affine(3)
    return b.add(layer).build()


def test_a_layer_drawing_on_the_host_is_refused():
    net = _with(HostRandom())
    x, t = JAX.asarray(np.ones((2, 4)), "float64"), JAX.asarray(np.zeros(2, dtype=np.int64))
    with pytest.raises(CompileError, match=r"layer 1 \(HostRandom\(\)\) draws random numbers"):
        CompiledUpdater(net, make_optimizer("SGD"), x, t)


def test_attributes_set_in_a_pass_are_put_back_after_a_compiled_step():
    """Only params, buffers and the optimizer state come out of the step; what a layer
    keeps of a pass for its backward (the book's self.x) is restored, never traced."""
    layer = BookStyle()
    layer.x = "before"
    net = _with(layer)
    x, t = JAX.asarray(np.ones((2, 4)), "float64"), JAX.asarray(np.zeros(2, dtype=np.int64))
    up = CompiledUpdater(net, make_optimizer("SGD"), x, t)
    up.update(Batch(1, np.arange(2), 2))
    assert layer.x == "before"
    check_jit(BookStyle(), x)


# -- host-side parts: divergence, checkpoints, the command, data parallel ----------------------


def test_a_nan_loss_in_a_compiled_step_stops_with_the_last_good_checkpoint(data, tmp_path):
    assert_divergence_keeps_last_good_checkpoint(
        lambda extensions: trainer(
            simple(), data, compile=True, epochs=3, extensions=extensions, log_every=2
        ),
        tmp_path / "ck.npz",
    )


def test_cli_train_compile_on_jax(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--backend", "jax", "--compile", "--epochs", "1", "--train-size", "100"]
    argv += ["--eval-samples", "50", "--batch-size", "50", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "on jax:cpu:0, compiled, float32" in captured.err
    assert "test accuracy" in captured.out
    assert (out / "checkpoint.npz").exists()


def test_two_ranks_compiled_equal_one_process(data):
    """The compiled gradients are summed over the ranks between the compiled
    gradient and update functions, as in an eager data-parallel run."""

    def net():
        return NetBuilder((1, 28, 28), seed=0, dtype="float64", device=JAX).affine(8).build()

    straight = trainer(net(), data, compile=True, epochs=2, mini_batch_size=64)
    straight.train()

    def make(comm):
        return trainer(net(), data, compile=True, epochs=2, mini_batch_size=64, comm=comm)

    for tr in run_ranks(2, make):
        assert_same(host(tr.network), host(straight.network), atol=1e-9)
        assert tr.train_loss_list == pytest.approx(straight.train_loss_list, abs=1e-9)


# -- xpcnn.testing.check_jit ------------------------------------------------------------------


def _arr(rng, *shape):
    return JAX.asarray(rng.standard_normal(shape), "float64")


BUILT_IN = {
    "convolution": lambda r: (Convolution(_arr(r, 2, 3, 3, 3), _arr(r, 2), 2, 1), (2, 3, 6, 6)),
    "max-pooling": lambda r: (Pooling(2, 2, stride=1, pad=1), (2, 3, 5, 5)),
    "avg-pooling": lambda r: (Pooling(2, 2, mode="avg"), (2, 3, 6, 6)),
    "affine": lambda r: (Affine(_arr(r, 12, 4), _arr(r, 4)), (2, 3, 2, 2)),
    "relu": lambda r: (Relu(), (2, 5)),
    "sigmoid": lambda r: (Sigmoid(), (2, 5)),
    "tanh": lambda r: (Tanh(), (2, 5)),
    "dropout": lambda r: (Dropout(0.4, seed=3), (4, 6)),
    "batchnorm": lambda r: (BatchNormalization(_arr(r, 3), _arr(r, 3)), (4, 3, 2, 2)),
    "lrn": lambda r: (LRN(size=3), (2, 4, 3, 3)),
}


@pytest.mark.parametrize("train_flg", [True, False], ids=["train", "inference"])
@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_check_jit_passes_every_built_in_layer(name, train_flg):
    rng = np.random.default_rng(0)
    layer, shape = BUILT_IN[name](rng)
    check_jit(layer, _arr(rng, *shape), train_flg=train_flg)
    assert leaked_tracers(layer) == []


class BranchOnValue(Layer):
    def forward(self, x, train_flg=True):
        if x[0, 0] > 0:  # Python control flow on an array value
            return x
        return -x

    def backward(self, dout):
        return dout


class AssignItem(Layer):
    def forward(self, x, train_flg=True):
        y = x * 1.0
        y[0, 0] = 0.0  # item assignment
        return y

    def backward(self, dout):
        return dout


class ToHost(Layer):
    def forward(self, x, train_flg=True):
        return x * float(np.asarray(x).max())  # host conversion

    def backward(self, dout):
        return dout


class DrawsOnHost(Layer):
    """Random like dropout, but from a host generator: constants under jax.jit."""

    def __init__(self):
        super().__init__()
        self._rng = np.random.default_rng(0)

    def forward(self, x, train_flg=True):
        return x * JAX.asarray(self._rng.random(tuple(x.shape)), "float64")

    def backward(self, dout):
        return dout


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (
            BranchOnValue(),
            r"BranchOnValue does not trace .* forward at .*test_compile.py:\d+ "
            r"\(if x\[0, 0\] > 0:.*\): Python control flow on an array value",
        ),
        (
            AssignItem(),
            r"AssignItem does not trace .* forward at .*y\[0, 0\] = 0.0.*: item "
            r"assignment .* array_api_extra.at",
        ),
        (ToHost(), r"ToHost does not trace .* forward .*: a conversion to the host"),
        (DrawsOnHost(), r"DrawsOnHost draws random numbers but not from Layer.draw_from"),
    ],
    ids=["control-flow", "item-assignment", "host-conversion", "host-random"],
)
def test_check_jit_names_the_layer_and_the_cause(layer, message):
    x = _arr(np.random.default_rng(0), 3, 4)
    with pytest.raises(AssertionError, match=message):
        check_jit(layer, x)


def test_check_jit_needs_jax_arrays():
    with pytest.raises(AssertionError, match=r"check_jit: Relu: x is a numpy array; .* on JAX"):
        check_jit(Relu(), np.ones((2, 2)))
