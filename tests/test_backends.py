"""Choosing an array library (``resolve_device(device, backend)``, ``--backend``) and the
public portability kit ``xpcnn.testing`` (``backends()``, ``check_layer``, the plugin)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from array_api_compat import array_namespace

from xpcnn import SimpleConvNet
from xpcnn.backend import (
    ADAPTERS,
    BACKENDS,
    Adapter,
    Device,
    DeviceError,
    adapter,
    adapter_of,
    backend_devices,
    devices_to_test,
    fast_path_threads,
    resolve_device,
    thread_limits,
    thread_summary,
    to_numpy,
)
from xpcnn.cli import main
from xpcnn.layers import Layer
from xpcnn.testing import backends, check_layer

HAVE = {
    name: importlib.util.find_spec(mod) is not None
    for name, mod in [
        ("torch", "torch"),
        ("jax", "jax"),
        ("array-api-strict", "array_api_strict"),
    ]
}


def needs(name: str) -> Any:
    return pytest.mark.skipif(not HAVE[name], reason=f"{name} is not installed")


# -- a researcher's layer, written once against the array API ---------------------------


class PReLU(Layer):
    """Parametric ReLU: ``y = x`` where ``x > 0``, else ``a * x``; one slope per
    feature, ``a`` (D,), for inputs (N, D)."""

    def __init__(self, a: Any) -> None:
        super().__init__()
        self.params = {"a": a}
        self.x: Any = None

    def forward(self, x: Any, train_flg: bool = True) -> Any:
        xp = array_namespace(x)
        self.x = x
        return xp.where(x > 0.0, x, self.params["a"] * x)

    def backward(self, dout: Any) -> Any:
        xp = array_namespace(dout)
        x, a = self.x, self.params["a"]
        self.grads["a"] = xp.sum(xp.where(x > 0.0, xp.zeros_like(x), dout * x), axis=0)
        return xp.where(x > 0.0, dout, a * dout)


class PReLUWrongSlopeGradient(PReLU):
    def backward(self, dout: Any) -> Any:
        dx = super().backward(dout)
        xp = array_namespace(dout)
        self.grads["a"] = xp.mean(
            xp.where(self.x > 0.0, xp.zeros_like(self.x), dout * self.x), axis=0
        )
        return dx


class PReLUWrongInputGradient(PReLU):
    def backward(self, dout: Any) -> Any:
        super().backward(dout)
        return dout  # forgets the slope where x <= 0


class PReLUUpcasts(PReLU):
    def forward(self, x: Any, train_flg: bool = True) -> Any:
        xp = array_namespace(x)
        return super().forward(xp.astype(x, xp.float64))


def _prelu_inputs(b: Device, dtype: str = "float64") -> tuple[Any, Any]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3))
    x[np.abs(x) < 0.05] = 0.5  # no input within reach of the kink at 0
    return b.asarray(rng.uniform(0.1, 0.3, 3), dtype), b.asarray(x, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_check_layer_passes_a_correct_layer(xp_backend, dtype):
    a, x = _prelu_inputs(xp_backend, dtype)
    layer = PReLU(a)
    check_layer(layer, x)
    assert layer.params["a"] is a  # the float64 copies used for the check were removed


@pytest.mark.parametrize(
    ("cls", "what"),
    [(PReLUWrongSlopeGradient, "grads['a']"), (PReLUWrongInputGradient, "dx")],
    ids=["wrong-param-gradient", "wrong-input-gradient"],
)
def test_check_layer_fails_a_wrong_backward(xp_backend, cls, what):
    a, x = _prelu_inputs(xp_backend)
    with pytest.raises(AssertionError) as exc:
        check_layer(cls(a), x)
    msg = str(exc.value)
    assert f"check_layer on {xp_backend.name}: {what}: does not match central differences" in msg
    assert "max abs error" in msg


def test_check_layer_fails_a_layer_that_changes_the_dtype(xp_backend):
    a, x = _prelu_inputs(xp_backend, "float32")
    with pytest.raises(AssertionError, match=f"{xp_backend.name}: forward output: has dtype"):
        check_layer(PReLUUpcasts(a), x)


def test_backends_lists_the_installed_libraries():
    names = [b.name for b in backends()]
    assert names[0] == "numpy"
    expected = ["strict", "strict-device1"] * HAVE["array-api-strict"]
    expected += ["torch"] * HAVE["torch"] + ["jax"] * HAVE["jax"]
    assert [n for n in names if n != "cupy"][1:] == expected
    for b in backends():
        x = b.asarray(np.arange(6.0).reshape(2, 3), "float32")
        assert str(x.dtype).endswith("float32")
        np.testing.assert_array_equal(b.to_numpy(x), np.arange(6.0).reshape(2, 3))


def test_importing_the_testing_kit_does_not_import_pytest():
    code = "import sys, xpcnn.testing; sys.exit('pytest' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- the adapters: one per library, the same methods ---------------------------------------


def test_one_adapter_per_library_selected_by_name_or_by_array(xp_backend):
    assert [a.name for a in ADAPTERS] == list(BACKENDS)
    assert all(isinstance(a, Adapter) for a in ADAPTERS)
    lib = xp_backend.adapter
    assert lib is adapter(xp_backend.backend) and lib in ADAPTERS
    assert adapter_of(xp_backend.asarray(np.zeros(2), "float32")) is lib
    assert adapter("Strict") is adapter("array_api_strict") is adapter("array-api-strict")
    assert adapter("jax.numpy") is adapter("JAX")
    with pytest.raises(DeviceError, match="unknown backend 'tensorflow'"):
        adapter("tensorflow")


def test_testing_kit_asks_backend_for_its_devices():
    assert [(b.name, b.backend) for b in backends()] == [
        (b.name, b.backend) for b in devices_to_test()
    ]


def test_immutable_says_whether_arrays_take_item_assignment(xp_backend):
    x = xp_backend.asarray(np.zeros(3), "float32")
    try:
        x[0] = 1.0
    except (TypeError, ValueError):  # JAX: "JAX arrays are immutable"
        writable = False
    else:
        writable = True
    assert xp_backend.adapter.immutable is not writable


@pytest.mark.parametrize("copy", [False, True])
def test_to_numpy_copy_is_a_snapshot(xp_backend, copy):
    host = np.arange(6.0).reshape(2, 3)
    x = xp_backend.asarray(host, "float64")
    got = to_numpy(x, copy=copy)
    assert type(got) is np.ndarray and got.dtype == np.float64
    np.testing.assert_array_equal(got, host)
    if copy:
        got[0, 0] = 99.0
        np.testing.assert_array_equal(to_numpy(x), host)


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


@pytest.mark.parametrize("name", [b for b in BACKENDS if b != "cupy"])
def test_thread_limits_sets_the_libraries_threads_and_restores_them(name):
    """NumPy: xpcnn's own threads, BLAS at one; torch: BLAS's and its intra-op threads;
    the others: BLAS's. Everything as before after the block."""
    if name != "numpy" and not HAVE[name]:
        pytest.skip(f"{name} is not installed")
    dev = resolve_device("cpu", name)
    before = (fast_path_threads(), _blas_threads())
    torch = sys.modules.get("torch") if name == "torch" else None
    torch_before = torch.get_num_threads() if torch else None
    with thread_limits(2, dev):
        summary = thread_summary(dev, 2)
        assert _blas_threads() == [1 if name == "numpy" else 2] * len(before[1])
        if name == "numpy":
            assert fast_path_threads() == 2 and summary.startswith("threads: xpcnn 2; BLAS ")
        else:
            assert summary.startswith("threads: BLAS ") and "xpcnn" not in summary
        if torch:
            assert torch.get_num_threads() == 2 and summary.endswith("; torch 2")
    assert (fast_path_threads(), _blas_threads()) == before
    assert (torch.get_num_threads() if torch else None) == torch_before
    with thread_limits(None, dev):
        assert (fast_path_threads(), _blas_threads()) == before


# -- resolve_device(device, backend) ------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "kind"),
    [
        ("numpy", "numpy"),
        pytest.param("torch", "torch", marks=needs("torch")),
        pytest.param("jax", "jax", marks=needs("jax")),
        pytest.param("array-api-strict", "array_api_strict", marks=needs("array-api-strict")),
    ],
)
def test_a_network_on_each_library(backend, kind):
    net = SimpleConvNet(seed=0, backend=backend, input_dim=(1, 8, 8), hidden_size=5)
    assert net.device.backend == backend
    assert all(type(p).__module__.startswith(kind) for p in net.params.values())
    x = net.device.asarray(np.random.default_rng(0).random((2, 1, 8, 8)), "float32")
    ref = SimpleConvNet(seed=0, input_dim=(1, 8, 8), hidden_size=5)
    np.testing.assert_allclose(
        net.device.to_numpy(net.predict(x)),
        ref.predict(np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)),
        rtol=1e-5,
        atol=1e-6,
    )


@needs("torch")
def test_a_network_given_arrays_of_another_library_says_so():
    import torch

    net = SimpleConvNet(seed=0, input_dim=(1, 8, 8))
    with pytest.raises(TypeError) as exc:
        net.predict(torch.zeros((2, 1, 8, 8)))
    msg = str(exc.value)
    assert "\n" not in msg
    assert "holds numpy arrays" in msg and "given a torch array" in msg
    assert "net.device.asarray(x)" in msg and "backend='torch'" in msg


@needs("torch")
def test_numpy_input_is_host_data_copied_to_the_networks_library():
    on_torch = SimpleConvNet(seed=0, backend="torch", input_dim=(1, 8, 8))
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    y = on_torch.predict(x)
    assert on_torch.device.backend == "torch" and type(y).__module__.startswith("torch")
    ref = SimpleConvNet(seed=0, input_dim=(1, 8, 8)).predict(x)
    np.testing.assert_allclose(on_torch.device.to_numpy(y), ref, rtol=1e-5, atol=1e-6)


@needs("array-api-strict")
def test_strict_devices_by_name():
    dev = resolve_device("device1", "array-api-strict")
    assert str(dev.device) == str(resolve_device("cpu", "strict").xp.Device("device1"))
    assert dev.name == "array-api-strict:device1"
    assert "device1" in backend_devices("array-api-strict")


@pytest.mark.parametrize(
    ("device", "backend", "fragments"),
    [
        ("cpu", "tensorflow", ["unknown backend 'tensorflow'", "numpy, cupy, torch, jax"]),
        ("cuda", "numpy", ["NumPy runs on the CPU only", "--backend cupy, torch or jax"]),
        ("tpu", "numpy", ["unknown device 'tpu'"]),
        ("cpu:1", "torch", ["the CPU takes no index"]),
        pytest.param("cuda", "torch", ["torch sees no GPU", "pytorch.org"], marks=needs("torch")),
        pytest.param("cuda:0", "jax", ["jax sees no GPU", "jax[cuda12]"], marks=needs("jax")),
        pytest.param(
            "device7",
            "array-api-strict",
            ["unknown array-api-strict device 'device7'", "device1"],
            marks=needs("array-api-strict"),
        ),
    ],
)
def test_bad_device_or_backend_is_one_clear_line(device, backend, fragments):
    if backend in ("torch", "jax") and "cuda" in device and backend_devices(backend)[1:]:
        pytest.skip(f"{backend} sees a GPU here")
    with pytest.raises(DeviceError) as exc:
        resolve_device(device, backend)
    msg = str(exc.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
def test_a_missing_library_says_how_to_install_it(monkeypatch, backend):
    module = {"array-api-strict": "array_api_strict"}.get(backend, backend)
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(DeviceError) as exc:
        resolve_device("cuda" if backend == "cupy" else "cpu", backend)
    msg = str(exc.value)
    assert "which is not installed" in msg and "pip install" in msg
    if backend == "cupy":
        assert "cupy-cuda12x" in msg and 'pip install ".[cuda12]" from a clone' in msg
        assert "xpcnn[cuda12]" not in msg  # not a published package


def test_cuda_without_cupy_names_the_other_gpu_libraries(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # as if not installed
    with pytest.raises(DeviceError) as exc:
        resolve_device("cuda:1")  # no --backend: CuPy, the GPU library
    msg = str(exc.value)
    assert msg.startswith("--device cuda:1 needs CuPy, which is not installed: pip install")
    assert msg.endswith("; or --backend torch / jax with a CUDA build of those")


def test_a_device_of_another_backend_is_refused():
    with pytest.raises(DeviceError, match=r"^device cpu is a numpy device, not torch$"):
        resolve_device(resolve_device("cpu"), "torch")
    dev = resolve_device("cpu")
    assert resolve_device(dev, "NumPy") is dev


@needs("jax")
def test_float64_on_jax_without_x64_is_one_clear_line():
    import jax

    with jax.enable_x64(False):
        with pytest.raises(DeviceError, match="jax_enable_x64"):
            SimpleConvNet(seed=0, backend="jax", dtype="float64")
        with pytest.raises(DeviceError, match="JAX_ENABLE_X64=1"):
            resolve_device("cpu", "jax").asarray(np.zeros(2), "float64")


# -- the command line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("jax", marks=needs("jax")),
        pytest.param("torch", marks=needs("torch")),
        pytest.param("array-api-strict", marks=needs("array-api-strict")),
    ],
)
def test_train_on_a_backend_then_evaluate_on_numpy(backend, tmp_path, capsys):
    out = tmp_path / backend
    argv = ["train", "--backend", backend, "--train-size", "200", "--epochs", "1"]
    status = main([*argv, "--out", str(out), "--no-progress", "--eval-samples", "200"])
    text, err = capsys.readouterr()
    assert status == 0, err
    assert f"on {resolve_device(None, backend).name}" in err
    trained = float(text.split("test accuracy ")[1].split()[0])
    status = main(["evaluate", str(out / "checkpoint.npz")])  # NumPy, the default
    text, err = capsys.readouterr()
    assert status == 0, err
    evaluated = float(text.split("test accuracy ")[1].split()[0])
    assert 0.3 < evaluated <= 1.0  # one epoch on 200 images learns well above chance (0.1)
    # the same weights on another library: float32 rounding may flip an image or two of 1000
    assert abs(evaluated - trained) <= 0.002


def test_info_lists_every_backend_and_its_devices(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert lines["numpy"].split()[1:] == ["cpu"]
    for name in BACKENDS:
        assert name in lines
    if HAVE["jax"]:
        assert "cpu" in lines["jax"].split()
    if not importlib.util.find_spec("cupy"):
        assert "not installed" in lines["cupy"]
