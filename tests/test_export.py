"""ONNX export: onnxruntime gives the logits of ``Sequential.predict`` for every named
network and every exportable layer (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package (extra [onnx])")
ort = pytest.importorskip("onnxruntime", reason="the export is checked with onnxruntime")

from xpcnn.cli import main  # noqa: E402
from xpcnn.data import load_dataset  # noqa: E402
from xpcnn.export import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx, to_onnx  # noqa: E402
from xpcnn.layers import Affine, Layer  # noqa: E402
from xpcnn.models import (  # noqa: E402
    AlexNet,
    DeepConvNet,
    LeNet,
    NetBuilder,
    Sequential,
    SimpleConvNet,
)
from xpcnn.optim import SGD  # noqa: E402
from xpcnn.train import load_network  # noqa: E402


def _trained_a_little(net):
    """A few SGD steps in training mode: batch norm's running statistics move off
    zeros/ones and the weights lose their initial symmetry."""
    rng = np.random.default_rng(1)
    opt = SGD(lr=0.05)
    for _ in range(3):
        x = rng.random((8, *net.input_dim)).astype(str(net.dtype))
        net.gradient(x, rng.integers(0, 10, 8))
        opt.update(net.params, {k: layer.grads[k2] for k, (layer, k2) in net._index.items()})
    return net


def _kitchen_sink():
    """Every exportable layer, with the paddings and modes the named nets do not use."""
    b = NetBuilder((3, 13, 11), weight_init="he", seed=0)
    b.conv(6, 3, pad=1).batchnorm().pool(3, stride=2, pad=1).relu()  # max pool with pad, x < 0
    b.conv(8, (3, 2), stride=2, pad=2).lrn(size=3, alpha=0.1, beta=0.6, k=1.5).tanh()
    b.pool(2, stride=1, pad=1, mode="avg")  # average pool with pad (zeros counted)
    b.affine(12).batchnorm().sigmoid().dropout(0.3).affine(10)
    return _trained_a_little(b.build())


NETS = {
    "simple": lambda: SimpleConvNet(seed=0),
    "deep": lambda: DeepConvNet(seed=0),
    "lenet": lambda: LeNet(seed=0),
    "lenet-28-tanh-max": lambda: LeNet((1, 28, 28), activation="tanh", pool="max", seed=0),
    "lenet-relu": lambda: LeNet(activation="relu", seed=0),
    "alexnet-small": lambda: AlexNet.small(seed=0),
    # The full configuration's layer pattern (11x11/4 first conv, 227x227) with few channels.
    "alexnet": lambda: AlexNet(conv_channels=(8, 8, 8, 8, 8), hidden_size=16, seed=0),
    "builder-every-layer": _kitchen_sink,
    "simple-float64": lambda: SimpleConvNet(seed=0, dtype="float64", weight_init_std="he"),
}


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", list(NETS))
def test_onnxruntime_gives_xpcnns_logits(name):
    net = NETS[name]()
    model = to_onnx(net)
    onnx.checker.check_model(model, full_check=True)
    sess = _session(model)
    rng = np.random.default_rng(0)
    for n in (1, 3):  # the batch axis is dynamic
        x = rng.random((n, *net.input_dim), dtype=np.float32)
        (got,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        want = net.predict(x)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_graph_input_output_and_opset():
    model = to_onnx(LeNet((1, 28, 28), seed=0))
    assert [o.version for o in model.opset_import if o.domain == ""] == [OPSET]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == INPUT_NAME and out.name == OUTPUT_NAME
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 1, 28, 28]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 10]


def test_even_lrn_window_is_refused():
    net = NetBuilder((4, 5, 5), seed=0).lrn(size=4).affine(3).build()
    with pytest.raises(ValueError, match="even window"):
        to_onnx(net)


class _Double(Layer):
    """A layer defined outside xpcnn, with its ONNX mapping beside its forward."""

    def forward(self, x, train_flg=True):
        return x * 2.0

    def onnx_nodes(self, graph, x, input_shape):
        return graph.node("Mul", [x, graph.const("two", np.asarray(2.0))])


class _NoExport(_Double):
    onnx_nodes = Layer.onnx_nodes


def _with(layer):
    rng = np.random.default_rng(0)
    W, b = rng.standard_normal((6, 4)), rng.standard_normal(4)
    return Sequential([Affine(W.astype(np.float32), b.astype(np.float32)), layer], (6,))


def test_a_new_layer_is_exported_by_its_own_onnx_nodes():
    net = _with(_Double())
    x = np.random.default_rng(1).random((3, 6), dtype=np.float32)
    (got,) = _session(to_onnx(net)).run([OUTPUT_NAME], {INPUT_NAME: x})
    np.testing.assert_allclose(got, net.predict(x), rtol=1e-6, atol=1e-6)


def test_a_layer_without_onnx_nodes_is_refused_by_name():
    with pytest.raises(
        ValueError, match=r"layer 1 \(_NoExport\(\)\): _NoExport has no ONNX export"
    ):
        to_onnx(_with(_NoExport()))


def test_export_command_writes_a_model_of_the_checkpoint(tmp_path, capsys):
    d = load_dataset("mnist-sample")
    net = SimpleConvNet(seed=0, weight_init_std="he")
    ckpt = net.save_params(tmp_path / "params.npz")
    status = main(["export", str(ckpt), str(tmp_path / "model.onnx")])
    out = capsys.readouterr().out
    assert status == 0
    assert f"ONNX opset {OPSET}" in out and "(N, 1, 28, 28)" in out
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = d.x_test[:20]
    (got,) = sess.run(None, {INPUT_NAME: x.astype(np.float32) / 255})
    loaded = load_network(ckpt)
    np.testing.assert_allclose(got, loaded.predict(x), rtol=1e-5, atol=1e-5)
    assert (got.argmax(1) == net.predict(x).argmax(1)).all()


def test_export_onnx_takes_a_checkpoint_path(tmp_path):
    ckpt = LeNet(seed=0).save_params(tmp_path / "lenet.npz")
    path = export_onnx(ckpt, tmp_path / "lenet.onnx")
    assert onnx.load(str(path)).graph.name == "LeNet"


def test_export_to_a_missing_folder_is_one_line(tmp_path, capsys):
    ckpt = LeNet(seed=0).save_params(tmp_path / "lenet.npz")
    status = main(["export", str(ckpt), str(tmp_path / "no" / "model.onnx")])
    err = capsys.readouterr().err
    assert status != 0 and err.count("\n") == 1 and err.startswith("xpcnn export: error:")
