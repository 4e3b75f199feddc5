"""Trainer: shuffling, learning, checkpoints, exact resume, Ctrl-C and divergence."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from xpcnn.backend import to_numpy
from xpcnn.checkpoint import CheckpointError, load_checkpoint
from xpcnn.data import load_dataset
from xpcnn.models import SimpleConvNet
from xpcnn.train import (
    Augment,
    EpochEndCallback,
    Extension,
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    load_network_with_meta,
)

SMALL = {
    "conv_param": {"filter_num": 4, "filter_size": 5, "pad": 0, "stride": 1},
    "hidden_size": 16,
}


@pytest.fixture(scope="module")
def data():
    d = load_dataset("mnist-sample")
    return d.x_train[:300], d.t_train[:300], d.x_test[:100], d.t_test[:100]


def make_trainer(data, epochs, dtype="float64", **kw):
    net = SimpleConvNet(**SMALL, dtype=dtype, seed=0)
    kw.setdefault("mini_batch_size", 50)
    return Trainer(net, *data, epochs=epochs, verbose=False, seed=1, **kw)


def params_of(trainer):
    return {k: np.asarray(v) for k, v in trainer.network.params.items()}


def test_each_epoch_visits_every_example_once(data):
    tr = make_trainer(data, epochs=1, mini_batch_size=64)  # 300 = 4*64 + 44: a partial last batch
    seen = []
    step = tr.updater.gradients

    def spy(x, t):
        seen.append(np.asarray(t))
        return step(x, t)

    tr.updater.gradients = spy
    tr.train()
    labels = np.concatenate(seen)
    assert len(seen) == tr.steps_per_epoch == 5
    assert np.array_equal(np.sort(labels), np.sort(data[1]))  # without replacement


def test_history_lengths_and_learning(data):
    tr = make_trainer(
        data, epochs=4, mini_batch_size=30, dtype="float32", optimizer_param={"lr": 0.01}
    )
    h = tr.train()
    assert len(h["train_loss"]) == 4 * 10
    assert len(h["train_acc"]) == len(h["test_acc"]) == 4
    assert np.mean(h["train_loss"][-5:]) < np.mean(h["train_loss"][:5])
    assert h["train_acc"][-1] > 0.5


def test_resume_equals_uninterrupted_training(data, tmp_path):
    straight = make_trainer(data, epochs=4)
    straight.train()

    first = make_trainer(data, epochs=2)
    first.train()
    first.save_checkpoint(tmp_path / "ck.npz")
    resumed = make_trainer(data, epochs=4)
    resumed.load_checkpoint(tmp_path / "ck.npz")
    assert resumed.epoch == 2
    resumed.train()

    a, b = params_of(straight), params_of(resumed)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-12, err_msg=k)
    assert resumed.train_loss_list == pytest.approx(straight.train_loss_list, abs=1e-12)
    assert resumed.test_acc_list == straight.test_acc_list


def test_ctrl_c_stops_after_a_whole_step_and_resumes_exactly(data, tmp_path):
    straight = make_trainer(data, epochs=2)
    straight.train()

    tr = make_trainer(data, epochs=2)
    step = tr.updater.update
    calls = []

    def step_then_ctrl_c(batch):
        out = step(batch)
        calls.append(1)
        if len(calls) == 8:  # mid-way through epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return out

    tr.updater.update = step_then_ctrl_c
    with pytest.raises(TrainingInterrupted):
        tr.train()
    assert (tr.epoch, tr.step_in_epoch) == (1, 2)
    tr.save_checkpoint(tmp_path / "ck.npz")

    resumed = make_trainer(data, epochs=2)
    resumed.load_checkpoint(tmp_path / "ck.npz")
    resumed.train()
    a, b = params_of(straight), params_of(resumed)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-12, err_msg=k)


def assert_divergence_keeps_last_good_checkpoint(make, path) -> None:
    """``make(extensions)`` -> a 3-epoch Trainer. After its first epoch is saved to
    ``path``, a NaN weight makes every loss NaN: training must stop with one clear
    error and the epoch-1 checkpoint kept, finite."""

    def save_then_explode(trainer):
        trainer.save_checkpoint(path)
        trainer.network.params["W3"] = trainer.network.params["W3"] * float("nan")

    tr = make([EpochEndCallback(save_then_explode)])
    with pytest.raises(TrainingDiverged, match=r"diverged.*lower the learning rate"):
        tr.train()
    arrays, meta = load_checkpoint(path)
    assert meta["trainer"]["epoch"] == 1
    assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")


def test_divergence_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    assert_divergence_keeps_last_good_checkpoint(
        lambda extensions: make_trainer(
            data,
            epochs=3,
            optimizer="SGD",
            optimizer_param={"lr": 0.01},
            extensions=extensions,
            log_every=2,
        ),
        tmp_path / "ck.npz",
    )


def test_checkpoint_of_another_architecture_is_refused(data, tmp_path):
    tr = make_trainer(data, epochs=1)
    tr.train()
    tr.save_checkpoint(tmp_path / "ck.npz")
    other = Trainer(SimpleConvNet(hidden_size=8, seed=0), *data, epochs=1, verbose=False)
    before = params_of(other)
    with pytest.raises(CheckpointError, match="W1"):
        other.load_checkpoint(tmp_path / "ck.npz")
    after = params_of(other)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing half-loaded


def test_load_network_rebuilds_the_trained_model(data, tmp_path):
    tr = make_trainer(data, epochs=1, dtype="float32")
    tr.train()
    tr.save_checkpoint(tmp_path / "ck.npz")
    net, meta = load_network_with_meta(tmp_path / "ck.npz")
    x = data[0][:20].astype(np.float32) / 255
    np.testing.assert_array_equal(np.asarray(net.predict(x)), np.asarray(tr.network.predict(x)))
    assert meta["model"]["model"] == "simple"


def test_bad_trainer_arguments(data):
    with pytest.raises(ValueError, match="mini_batch_size must be a positive integer"):
        make_trainer(data, epochs=1, mini_batch_size=0)
    with pytest.raises(ValueError, match="differ in length"):
        Trainer(SimpleConvNet(**SMALL), data[0], data[1][:10], data[2], data[3])
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_trainer(data, epochs=1, optimizer="adamw")
    with pytest.raises(ValueError, match="lr must be a positive number"):
        make_trainer(data, epochs=1, optimizer_param={"lr": -1.0})


def test_trainer_runs_on_every_backend(backend, data, tmp_path):
    """The whole loop (device-side batching with take, uint8 -> float on the
    device, evaluation, checkpoint) on each backend, including strict's GPU-like
    device1, which refuses implicit host copies."""
    from xpcnn.backend import Device

    dev = Device(backend.name, backend.xp, backend.device)
    net = SimpleConvNet(**SMALL, dtype="float32", device=dev, seed=0)
    tr = Trainer(net, *data, epochs=1, mini_batch_size=64, verbose=False, seed=1)
    h = tr.train()
    assert len(h["train_loss"]) == tr.steps_per_epoch == 5  # partial last batch included
    assert all(np.isfinite(h["train_loss"]))
    assert 0.0 <= tr.test_accuracy() <= 1.0
    tr.save_checkpoint(tmp_path / "ck.npz")
    net_cpu, _ = load_network_with_meta(
        tmp_path / "ck.npz", "cpu"
    )  # trained anywhere, evaluated on the CPU
    np.testing.assert_allclose(
        np.asarray(net_cpu.params["W1"]), backend.to_numpy(net.params["W1"]), rtol=0, atol=0
    )


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_resume_of_a_dropout_net_draws_the_same_masks(data, tmp_path, backend_name):
    """Dropout generators travel in the checkpoint: resuming a net with dropout
    gives the parameters of an uninterrupted run."""
    from xpcnn.backend import Device
    from xpcnn.models import NetBuilder

    if backend_name == "torch":
        xp = pytest.importorskip("array_api_compat.torch")
        dev = Device("torch", xp, "cpu")
    else:
        dev = "cpu"

    def make(epochs):
        b = NetBuilder((1, 28, 28), seed=0, dtype="float64", device=dev, weight_init="he")
        net = b.conv(3, 5).relu().pool(2).affine(16).relu().dropout(0.5).affine(10).build()
        return Trainer(net, *data, epochs=epochs, mini_batch_size=50, verbose=False, seed=1)

    straight = make(3)
    straight.train()
    first = make(1)
    first.train()
    first.save_checkpoint(tmp_path / "ck.npz")
    resumed = make(3)
    resumed.load_checkpoint(tmp_path / "ck.npz")
    resumed.train()
    for k, v in straight.network.params.items():
        np.testing.assert_allclose(
            to_numpy(resumed.network.params[k]), to_numpy(v), rtol=0, atol=1e-12, err_msg=k
        )


# -- the parts: batch iterator, extensions, checkpoint validation ---------------------


def test_images_per_second_counts_the_partial_last_batch(data):
    tr = make_trainer(data, epochs=1, mini_batch_size=64)  # 4*64 + 44 images, not 5*64
    h = tr.train()
    assert h["images_per_sec"][0] * h["epoch_seconds"][0] == pytest.approx(300, rel=1e-9)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_batch_iterator_shares_cover_each_global_batch(size):
    from xpcnn.train import BatchIterator

    its = [BatchIterator(11, 4, np.random.default_rng(7), rank=r, size=size) for r in range(size)]
    for _ in range(2):  # two epochs: a new permutation each
        seen = []
        for batches in zip(*(it.epoch_batches() for it in its), strict=True):
            lens = [len(b.indices) for b in batches]
            assert max(lens) - min(lens) <= 1
            whole = np.concatenate([b.indices for b in batches])
            assert len(whole) == batches[0].global_size == min(4, 11 - len(seen))
            seen.extend(whole)
        assert sorted(seen) == list(range(11))
        for it in its:
            it.end_epoch()
    assert all(it.epoch == 2 and it.step == 0 for it in its)


def test_extensions_run_in_order_and_rank0_only_is_respected(data):
    from xpcnn.train import Extension

    calls = []

    class Record(Extension):
        def on_epoch_end(self, trainer):
            calls.append(("epoch_end", trainer.epoch, len(trainer.test_acc_list)))

        def on_train_end(self, trainer):
            calls.append(("train_end",))

    class Rank0(Extension):
        rank0_only = True

        def on_epoch_begin(self, trainer):
            calls.append(("rank0",))

    make_trainer(data, epochs=2, extensions=[Record(), Rank0()]).train()
    # evaluation (built in) ran before the user's extension saw the epoch's end
    assert calls == [
        ("rank0",),
        ("epoch_end", 1, 1),
        ("rank0",),
        ("epoch_end", 2, 2),
        ("train_end",),
    ]
    calls.clear()
    # two ranks (threads): both evaluate, only rank 0 runs a rank0_only extension
    ranks = run_ranks(2, lambda comm: make_trainer(data, epochs=1, extensions=[Rank0()], comm=comm))
    assert calls == [("rank0",)] and all(len(tr.test_acc_list) == 1 for tr in ranks)


def test_single_process_is_a_communicator():
    from xpcnn.train import Communicator, SingleProcess

    c = SingleProcess()
    assert isinstance(c, Communicator) and (c.rank, c.size) == (0, 1)
    x = np.arange(3.0)
    assert c.allreduce(x) is x and c.bcast(x) is x and c.bcast_object({"a": 1}) == {"a": 1}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"mini_batch_size": 30}, "mini_batch_size 50, not 30"),
        ({"optimizer": "SGD"}, "optimizer Adam, not SGD"),
    ],
)
def test_a_refused_checkpoint_changes_nothing(data, tmp_path, change, match):
    tr = make_trainer(data, epochs=1)
    tr.train()
    tr.save_checkpoint(tmp_path / "ck.npz")
    other = make_trainer(data, epochs=2, **change)
    other.train()  # its own parameters, optimizer state and progress
    before, progress = params_of(other), other.epoch
    state = {k: to_numpy(v) for k, v in other.optimizer.state_arrays().items()}  # copies
    with pytest.raises(CheckpointError, match=match):
        other.load_checkpoint(tmp_path / "ck.npz")
    after = params_of(other)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert other.optimizer.state_arrays().keys() == state.keys()
    assert all(
        np.array_equal(to_numpy(other.optimizer.state_arrays()[k]), v) for k, v in state.items()
    )
    assert other.epoch == progress


def test_a_mid_epoch_checkpoint_of_another_training_set_is_refused(data, tmp_path):
    tr = make_trainer(data, epochs=1)
    tr.train()
    tr.step_in_epoch, tr.batches.perm = 2, np.arange(300)
    tr.save_checkpoint(tmp_path / "ck.npz")
    small = make_trainer((data[0][:200], data[1][:200], data[2], data[3]), epochs=1)
    with pytest.raises(CheckpointError, match="training set of 300 examples, not 200"):
        small.load_checkpoint(tmp_path / "ck.npz")


# -- data parallel, with ranks as threads (the MPI communicator is tested under mpiexec) --


class ThreadComm:
    """A communicator for ranks run as threads of one process: sums in rank order."""

    def __init__(self, group, rank):
        self.group, self.rank, self.size = group, rank, group["size"]

    def _exchange(self, value):
        g = self.group
        g["slots"][self.rank] = value
        g["barrier"].wait()
        slots = list(g["slots"])
        g["barrier"].wait()
        return slots

    def allreduce(self, x, *, in_place=False):
        slots = self._exchange(np.array(x, copy=True))
        total = slots[0].copy()
        for s in slots[1:]:
            total += s
        return total

    def bcast(self, x, root=0):
        return np.array(self._exchange(x)[root], copy=True)

    def bcast_object(self, obj, root=0):
        return self._exchange(obj)[root]

    def barrier(self):
        self.group["barrier"].wait()


def run_ranks(size, make, errors=None):
    """make(comm) -> trainer, run on ``size`` threads; returns the trainers.
    The first exception of a rank is raised, or collected in ``errors``."""
    import threading

    group = {"size": size, "slots": [None] * size, "barrier": threading.Barrier(size, timeout=120)}
    trainers, raised = [None] * size, []

    def rank_main(r):
        try:
            trainers[r] = make(ThreadComm(group, r))
            trainers[r].train()
        except BaseException as exc:  # re-raised below
            raised.append(exc)
            if not isinstance(exc, TrainingInterrupted):
                group["barrier"].abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors is not None:
        errors.extend(raised)
    elif raised:
        raise raised[0]
    return trainers


def test_three_ranks_equal_one_process(data, tmp_path):
    """Shares of 22/21/21 (and 15/15/14 in the partial batch) weighted by
    share size: the same computation as one process up to summation order."""
    straight = make_trainer(data, epochs=2, mini_batch_size=64)
    straight.train()

    def make(comm):
        # rank 1 starts from other weights: the broadcast from rank 0 must fix that
        net = SimpleConvNet(**SMALL, dtype="float64", seed=0 if comm.rank != 1 else 9)
        return Trainer(net, *data, epochs=2, mini_batch_size=64, verbose=False, seed=1, comm=comm)

    ranks = run_ranks(3, make)
    a = params_of(straight)
    for tr in ranks:
        b = params_of(tr)
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-9, err_msg=k)
        assert tr.train_loss_list == pytest.approx(straight.train_loss_list, abs=1e-9)
        assert tr.test_acc_list == straight.test_acc_list  # sharded (correct, count) sums
        assert tr.train_acc_list == straight.train_acc_list

    # A checkpoint written by rank 0 of the 3-rank run resumes in one process.
    first = run_ranks(3, lambda comm: make_trainer(data, epochs=1, mini_batch_size=64, comm=comm))
    first[0].save_checkpoint(tmp_path / "ck.npz")
    resumed = make_trainer(data, epochs=2, mini_batch_size=64)
    resumed.load_checkpoint(tmp_path / "ck.npz")
    resumed.train()
    b = params_of(resumed)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-9, err_msg=k)


def test_a_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(data):
    """The flag travels in the step's allreduce: a Ctrl-C that reaches rank 1
    after step 3's reduction stops both ranks after step 4, never one alone."""

    def make(comm):
        tr = make_trainer(data, epochs=1, mini_batch_size=30, comm=comm)
        if comm.rank == 1:
            step = tr.updater.update

            def late_ctrl_c(batch):
                out = step(batch)
                if tr.step_in_epoch == 3:
                    tr._on_signal(signal.SIGINT)  # what the SIGINT handler does
                return out

            tr.updater.update = late_ctrl_c
        return tr

    errors = []
    ranks = run_ranks(2, make, errors)
    assert len(errors) == 2 and all(isinstance(e, TrainingInterrupted) for e in errors)
    assert [tr.step_in_epoch for tr in ranks] == [4, 4]


# -- early stops: SIGTERM, request_stop, and sets smaller than the evaluation ------------


def test_sigterm_stops_after_a_whole_step_and_restores_the_handler(data, tmp_path):
    """A scheduler's SIGTERM is handled like Ctrl-C (status 143), and the handler
    that was installed before train() is back afterwards (library use)."""
    straight = make_trainer(data, epochs=2)
    straight.train()

    seen = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        tr = make_trainer(data, epochs=2)
        step = tr.updater.update

        def step_then_sigterm(batch):
            out = step(batch)
            if tr.epoch == 1 and tr.step_in_epoch == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        tr.updater.update = step_then_sigterm
        with pytest.raises(TrainingInterrupted) as info:
            tr.train()
        assert (info.value.signum, info.value.status) == (signal.SIGTERM, 143)
        assert (tr.epoch, tr.step_in_epoch) == (1, 3)
        assert tr.stop_reason == "interrupted by SIGTERM" == tr.history()["stop_reason"]
        os.kill(os.getpid(), signal.SIGTERM)  # the previous handler is back
        assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)
    tr.save_checkpoint(tmp_path / "ck.npz")
    resumed = make_trainer(data, epochs=2)
    resumed.load_checkpoint(tmp_path / "ck.npz")
    resumed.train()
    a, b = params_of(straight), params_of(resumed)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-12, err_msg=k)


class StopAt(Extension):
    """Requests a stop at step ``step`` of epoch ``epoch`` (0: at that epoch's end)."""

    def __init__(self, epoch, step=0, rank0_only=False):
        self.epoch, self.step, self.rank0_only = epoch, step, rank0_only

    def on_step_end(self, trainer):
        if self.step and (trainer.epoch + 1, trainer.step_in_epoch) == (self.epoch, self.step):
            trainer.request_stop(f"step {self.step} of epoch {self.epoch}")

    def on_epoch_end(self, trainer):
        if not self.step and trainer.epoch == self.epoch:
            trainer.request_stop("no better for 2 epochs")


def test_request_stop_ends_training_normally(data):
    tr = make_trainer(data, epochs=5, extensions=[StopAt(epoch=2)])
    h = tr.train()  # returns: an early stop is not an error
    assert tr.epoch == 2 and tr.step_in_epoch == 0
    assert len(h["test_acc"]) == 2 and h["stop_reason"] == "no better for 2 epochs"
    assert len(h["train_loss"]) == 2 * tr.steps_per_epoch  # every loss reached the host

    tr = make_trainer(data, epochs=5, extensions=[StopAt(epoch=2, step=3)])
    h = tr.train()
    assert (tr.epoch, tr.step_in_epoch) == (1, 3)  # after the step that asked
    assert h["stop_reason"] == "step 3 of epoch 2" and len(h["test_acc"]) == 1
    assert len(h["train_loss"]) == tr.steps_per_epoch + 3
    tr.extensions.pop()
    tr.epochs = 2
    assert tr.train()["stop_reason"] is None  # the next train() starts without the request
    assert (tr.epoch, tr.step_in_epoch) == (2, 0)


@pytest.mark.parametrize("step", [0, 2])
def test_a_stop_requested_on_rank_0_alone_stops_every_rank_together(data, step):
    """A rank0_only extension's request reaches the others: in the next step's
    allreduce (mid-epoch), or in one small collective at the epoch's end."""
    ranks = run_ranks(
        2,
        lambda comm: make_trainer(
            data, epochs=3, mini_batch_size=64, extensions=[StopAt(2, step, True)], comm=comm
        ),
    )
    if step:  # asked after step 2's allreduce: carried by step 3's
        assert [(tr.epoch, tr.step_in_epoch) for tr in ranks] == [(1, 3), (1, 3)]
    else:
        assert [(tr.epoch, tr.step_in_epoch) for tr in ranks] == [(2, 0), (2, 0)]
    reason = "step 2 of epoch 2" if step else "no better for 2 epochs"
    assert [tr.stop_reason for tr in ranks] == [reason, "stop requested on another rank"]
    a, b = params_of(ranks[0]), params_of(ranks[1])
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_one_process_never_touches_the_data_parallel_parts(data):
    from xpcnn.train import DataParallelUpdater, StandardUpdater

    tr = make_trainer(data, epochs=1)
    assert type(tr.updater) is StandardUpdater
    two = run_ranks(2, lambda comm: make_trainer(data, epochs=1, comm=comm))
    assert all(isinstance(t.updater, DataParallelUpdater) for t in two)


def test_stop_flags_agree_across_ranks():
    from xpcnn.train.stopping import StopRequest, agreed_request, stop_flags

    term = StopRequest.from_signal(signal.SIGTERM)
    req = StopRequest("early")
    total = np.add(stop_flags(None), stop_flags(req))
    assert agreed_request(total, None) == StopRequest("stop requested on another rank")
    assert agreed_request(total, req) is req
    total = np.add(total, stop_flags(StopRequest.from_signal(signal.SIGINT)))
    assert agreed_request(total, req).signum == signal.SIGINT  # a signal wins over a request
    total = np.add(total, stop_flags(term))
    assert agreed_request(total, term) is term  # SIGTERM over SIGINT
    assert agreed_request(stop_flags(None), None) is None


def test_sets_smaller_than_the_evaluation_train_on_every_backend(backend, data):
    """--eval-samples above the set sizes evaluates all of each set and never slices
    past its end (array-api-strict refuses that: the standard leaves it unspecified)."""
    from xpcnn.backend import Device

    dev = Device(backend.name, backend.xp, backend.device)
    small = (data[0][:120], data[1][:120], data[2][:40], data[3][:40])
    net = SimpleConvNet(**SMALL, dtype="float32", device=dev, seed=0)
    tr = Trainer(
        net, *small, epochs=1, mini_batch_size=50, evaluate_sample_num_per_epoch=10000,
        verbose=False, seed=1,
    )  # fmt: skip
    h = tr.train()
    assert len(h["train_loss"]) == 3 and all(np.isfinite(h["train_loss"]))
    assert h["test_acc"] == [tr.test_accuracy()]
    assert h["train_acc"] == tr.accuracies((tr.x_train, tr.t_train))


def _flushes() -> bool:
    """Whether this thread now treats a float32 subnormal as zero."""
    tiny = np.array([1e-40], np.float32)
    return float((tiny * np.float32(1.0))[0]) == 0.0


@pytest.mark.parametrize("flush", [True, False])
def test_training_flushes_subnormals_and_restores_the_callers_state(data, flush):
    """Training runs with flush-to-zero (the default) or without, and leaves the
    caller's floating-point state as it found it either way."""
    from xpcnn._fast import compiled

    if compiled.fp_control is None:
        pytest.skip("no flush-to-zero control here (compiled kernels not built)")
    seen = []

    class Probe(Extension):
        def on_step_end(self, trainer):
            seen.append(_flushes())

    tr = make_trainer(data, epochs=1, dtype="float32", extensions=[Probe()], flush_subnormals=flush)
    assert not _flushes()
    tr.train()
    assert seen and set(seen) == {flush}
    assert not _flushes()


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_training_on_numpy_keeps_blas_at_one_thread_and_restores_it(data):
    """xpcnn's threads split the work; BLAS's own, spinning between calls, would compete
    with them (a DeepConvNet epoch in a script took 1.6x as long on two cores). Inside
    train() BLAS runs one thread per call, as under ``xpcnn train``; after, as before."""
    from threadpoolctl import threadpool_limits

    from xpcnn.backend import fast_path_threads

    seen = []

    class Probe(Extension):
        def on_step_end(self, trainer):
            seen.append((_blas_threads(), fast_path_threads()))

    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        threads = fast_path_threads()
        make_trainer(data, epochs=1, extensions=[Probe()]).train()
        assert _blas_threads() == before
    if not before:
        pytest.skip("no BLAS library seen by threadpoolctl")
    assert seen and all(blas == [1] * len(before) and n == threads for blas, n in seen)


# -- augmentation: the same crops and flips after a resume and on any number of ranks --


def test_augmented_training_resumed_mid_epoch_equals_uninterrupted(data, tmp_path):
    def augmented(**kw):
        return make_trainer(data, epochs=2, augment=Augment("crop,flip", seed=4), **kw)

    straight = augmented()
    straight.train()
    plain = make_trainer(data, epochs=2)
    plain.train()
    assert straight.train_loss_list != plain.train_loss_list  # the batches were augmented

    first = augmented(extensions=[StopAt(epoch=2, step=3)])
    first.train()
    assert (first.epoch, first.step_in_epoch) == (1, 3)
    first.save_checkpoint(tmp_path / "ck.npz")
    resumed = augmented()
    resumed.load_checkpoint(tmp_path / "ck.npz")
    resumed.train()
    a, b = params_of(straight), params_of(resumed)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-12, err_msg=k)
    assert resumed.train_loss_list == pytest.approx(straight.train_loss_list, abs=1e-12)


def test_augmented_training_on_three_ranks_equals_one_process(data):
    aug = {"augment": Augment("crop", seed=4), "mini_batch_size": 64}
    straight = make_trainer(data, epochs=2, **aug)
    straight.train()
    ranks = run_ranks(3, lambda comm: make_trainer(data, epochs=2, comm=comm, **aug))
    a = params_of(straight)
    for tr in ranks:
        b = params_of(tr)
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-9, err_msg=k)


def test_augmentation_needs_image_inputs(data):
    from xpcnn.models import NetBuilder

    net = NetBuilder((784,), seed=0).affine(10).build()
    with pytest.raises(ValueError, match=r"augment needs image inputs \(C, H, W\), not \(784,\)"):
        Trainer(net, *data, augment=Augment("crop"))
