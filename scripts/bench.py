"""Training and inference throughput and peak memory: xpcnn against native PyTorch.

Usage (from the repository root)::

    python scripts/bench.py --quick                      # batch 100, SimpleConvNet + DeepConvNet
    python scripts/bench.py --json bench.json            # batches 32, 100, 256; more rounds
    python scripts/bench.py --models simple --batches 100 --rounds 9
    python scripts/bench.py --device cuda --json gpu.json  # CuPy against PyTorch CUDA

What is compared, in one run, on the same synthetic float32 batches (random
pixels in [0, 1), random labels; speed does not depend on the values):

``xpcnn-numpy``          xpcnn on NumPy arrays, fast paths on (the default), on the
                         run's N threads (``xpcnn.cpu_threads(N)``: the fast paths
                         split their work among N threads, BLAS at one thread)
``xpcnn-numpy-blas``     the same on one xpcnn thread with N BLAS threads (how xpcnn
                         used N cores before ``cpu_threads``); opt-in (``--impls``)
``xpcnn-numpy-generic``  the same with fast paths off: the generic array-API code
``xpcnn-torch``          xpcnn on torch tensors through the array API
                         (``resolve_device(device, "torch")``; the generic code)
``xpcnn-jax``            xpcnn on JAX arrays (generic code, eager: no ``jax.jit``),
                         CPU only; timed blocks end with ``jax.block_until_ready``
``xpcnn-strict``         xpcnn on array-api-strict (generic code; NumPy underneath,
                         plus strict's checks), CPU only
``torch``                native PyTorch: ``torch.nn`` layers built from the xpcnn
                         network's layer list (same architecture and initial
                         weights), ``torch.optim.Adam``, ``F.cross_entropy``

With ``--device cuda`` the xpcnn rows run on CuPy (``xpcnn-cupy``,
``xpcnn-cupy-generic``) and on torch CUDA tensors, against native PyTorch CUDA;
every timed block ends with ``cupy.cuda.Device().synchronize()`` /
``torch.cuda.synchronize()``.

A training step is forward + backward + Adam update (``network.gradient`` then
``Adam.update``; ``zero_grad``/``backward``/``step`` for PyTorch); inference is
``predict`` (``eval()`` under ``torch.inference_mode()``). The models are built
with ``xpcnn.models.build_model`` (``SimpleConvNet``; ``DeepConvNet`` when
``xpcnn.models.MODELS`` has "deep", else it is skipped with a note).

Timing: after warm-up steps, each configuration is timed in blocks of several
steps; the blocks of all configurations of one (model, batch) are interleaved
round by round (in rotating order), so a burst of load from other processes
hits them alike. Throughput is ``batch / median(block seconds per step)``. The
CPU is shared: the load average is recorded before and after, and ratios taken
within one run are more trustworthy than absolute numbers. PyTorch gets the
same number of threads as NumPy's BLAS (``torch.set_num_threads``; read from
threadpoolctl when installed, else ``os.cpu_count()``); ``--threads N`` sets
both (BLAS through threadpoolctl, when installed), and ``xpcnn-numpy`` runs on
that many xpcnn threads.

Peak memory: each configuration runs in a fresh subprocess. The child imports
everything (torch too, so every child starts alike), then resets the kernel's
peak-RSS mark (``echo 5 > /proc/self/clear_refs``, Linux) and reads its
current RSS as the baseline; it builds the model and the batch and runs three
steps; the peak reported is ``VmHWM`` (peak RSS) minus that baseline: model +
optimizer state + batch + activations + the temporaries of a step. (Without
``clear_refs``, the fallback is the growth of ``ru_maxrss``, which misses
peaks below the import-time high-water mark.) Allocator caching (glibc,
torch's CPU allocator) counts, as it does for a real process. For NumPy rows
the ``tracemalloc`` peak is reported too (NumPy reports its buffers to
tracemalloc; torch does not). On CUDA the device memory is measured
instead: ``torch.cuda.max_memory_allocated()`` and, for CuPy, the growth of the
default memory pool (``total_bytes()``, which keeps freed blocks and so holds
the high-water mark, rounded to CuPy's allocation units).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import xpcnn  # noqa: E402
from xpcnn import _fast  # noqa: E402
from xpcnn.backend import (  # noqa: E402
    Device,
    DeviceError,
    blas_summary,
    cpu_threads,
    resolve_device,
    to_numpy,
)
from xpcnn.layers import Affine, Convolution, Dropout, Pooling, Relu, Sigmoid  # noqa: E402
from xpcnn.models import MODELS, build_model  # noqa: E402
from xpcnn.optim import Adam  # noqa: E402

CPU_IMPLS = (
    "xpcnn-numpy",
    "xpcnn-numpy-generic",
    "xpcnn-torch",
    "xpcnn-jax",
    "xpcnn-strict",
    "torch",
)
#: The array library of each xpcnn implementation (``resolve_device``'s backend).
IMPL_BACKEND = {
    "xpcnn-numpy": "numpy",
    "xpcnn-numpy-blas": "numpy",
    "xpcnn-numpy-generic": "numpy",
    "xpcnn-cupy": "cupy",
    "xpcnn-cupy-generic": "cupy",
    "xpcnn-torch": "torch",
    "xpcnn-jax": "jax",
    "xpcnn-strict": "array-api-strict",
}
CUDA_IMPLS = ("xpcnn-cupy", "xpcnn-cupy-generic", "xpcnn-torch", "torch")
BASELINE = "torch"
MODES = ("train", "infer")
INPUT_DIM = (1, 28, 28)
CLASSES = 10


# -- environment -----------------------------------------------------------------------------


def blas_threads() -> int | None:
    """Threads of NumPy's BLAS per threadpoolctl (None when it is not installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(counts) if counts else None


@contextlib.contextmanager
def thread_limits(threads: int | None) -> Iterator[None]:
    """Limit BLAS threads (threadpoolctl, when installed) and torch's threads."""
    import torch

    if threads is None:
        yield
        return
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield


def machine_info(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """Cores, load, versions and the BLAS NumPy uses."""
    import array_api_compat
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "threads": threads,
        "numpy": np.__version__,
        "torch": torch.__version__,
        "array_api_compat": array_api_compat.__version__,
        "xpcnn": xpcnn.__version__,
        "torch_threads": torch.get_num_threads(),
        # Which kernels each side runs: XPCNN_ISA=avx2 with ONEDNN_MAX_CPU_ISA=AVX2 and
        # ATEN_CPU_CAPABILITY=avx2 compares both as on an AVX2-only CPU.
        "xpcnn_convolution": xpcnn.backend.kernel_summary(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "(default: the CPU's best)"),
    }
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {k: i.get(k) for k in ("user_api", "internal_api", "prefix", "version", "num_threads")}
            | {"architecture": i.get("architecture")}
            for i in threadpool_info()
        ]
    except ImportError:
        try:
            cfg = np.show_config(mode="dicts")
            info["numpy_blas"] = cfg.get("Build Dependencies", {}).get("blas")
        except Exception as exc:  # numpy < 1.26 has no mode="dicts"
            info["numpy_blas"] = f"unavailable ({exc})"
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        with contextlib.suppress(ImportError):
            import cupy

            info["cupy"] = cupy.__version__
            info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    return info


def blas_kernels(info: dict[str, Any]) -> str:
    """NumPy's BLAS and the kernels it runs now, e.g. 'openblas 0.3.31 (SkylakeX kernels)'
    (threadpoolctl reads them at run time; without it, the build's BLAS)."""
    pools = [p for p in info.get("threadpools", []) if p.get("user_api") == "blas"]
    return ", ".join(
        f"{p['internal_api']} {p['version']} ({p['architecture']} kernels)" for p in pools
    ) or str(info.get("numpy_blas", "unknown"))


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# -- configurations ----------------------------------------------------------------------------


def xpcnn_device(impl: str, device: str) -> Device:
    """The xpcnn Device of an implementation name."""
    return resolve_device(device, IMPL_BACKEND[impl])


def synchronizer(impl: str, device: str) -> Callable[[], None]:
    """A function that waits for queued GPU work (a no-op on the CPU)."""
    if device != "cuda":
        return lambda: None
    if impl.startswith("xpcnn-cupy"):
        import cupy

        return lambda: cupy.cuda.Device().synchronize()
    import torch

    return torch.cuda.synchronize


def make_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((batch, *INPUT_DIM), dtype=np.float32)
    t = rng.integers(0, CLASSES, batch).astype(np.int64)
    return x, t


def torch_model(net: Any) -> Any:
    """Native ``torch.nn`` twin of an xpcnn Sequential: same layers, same initial weights."""
    import torch
    from torch import nn

    modules: list[Any] = []
    flat = False
    with torch.no_grad():
        for layer in net.layers:
            if isinstance(layer, Convolution):
                W = to_numpy(layer.W)
                FN, C, FH, FW = W.shape
                conv = nn.Conv2d(C, FN, (FH, FW), stride=layer.stride, padding=layer.pad)
                conv.weight.copy_(torch.from_numpy(W.astype(np.float32)))
                conv.bias.copy_(torch.from_numpy(to_numpy(layer.b).astype(np.float32)))
                modules.append(conv)
            elif isinstance(layer, Pooling):
                cls = nn.MaxPool2d if layer.mode == "max" else nn.AvgPool2d
                modules.append(
                    cls((layer.pool_h, layer.pool_w), stride=layer.stride, padding=layer.pad)
                )
            elif isinstance(layer, Affine):
                if not flat:
                    modules.append(nn.Flatten())
                    flat = True
                W = to_numpy(layer.W)
                lin = nn.Linear(*W.shape)
                lin.weight.copy_(torch.from_numpy(W.T.astype(np.float32)))
                lin.bias.copy_(torch.from_numpy(to_numpy(layer.b).astype(np.float32)))
                modules.append(lin)
            elif isinstance(layer, Relu):
                modules.append(nn.ReLU())
            elif isinstance(layer, Sigmoid):
                modules.append(nn.Sigmoid())
            elif isinstance(layer, Dropout):
                modules.append(nn.Dropout(float(getattr(layer, "dropout_ratio", 0.5))))
            else:
                raise NotImplementedError(f"no torch twin for {layer!r}")
    return nn.Sequential(*modules)


class Config:
    """One (model, implementation, batch): ``train()`` and ``infer()`` run one step each."""

    def __init__(
        self, model: str, impl: str, batch: int, device: str, seed: int = 0, threads: int = 1
    ) -> None:
        self.model, self.impl, self.batch, self.device = model, impl, batch, device
        self.threads = threads  # xpcnn's own, for xpcnn-numpy
        self.sync = synchronizer(impl, device)
        x, t = make_batch(batch, seed)
        self.fast = not impl.endswith("-generic")
        if impl == BASELINE:
            import torch

            dev = torch.device("cuda" if device == "cuda" else "cpu")
            host_net = build_model({"model": model}, seed=seed)
            self.net = torch_model(host_net).to(dev)
            self.opt = torch.optim.Adam(self.net.parameters(), lr=0.001)
            self.x = torch.from_numpy(x).to(dev)
            self.t = torch.from_numpy(t).to(dev)
        else:
            dev = xpcnn_device(impl, device)
            self.net = build_model({"model": model}, device=dev, seed=seed)
            self.opt = Adam(lr=0.001)
            self.x, self.t = dev.asarray(x), dev.asarray(t)
        self._last: Any = None
        if impl == "xpcnn-jax":  # JAX dispatches asynchronously, on the CPU too
            import jax

            self.sync = lambda: jax.block_until_ready((self._last, dict(self.net.params)))

    def train(self) -> None:
        if self.impl == BASELINE:
            import torch.nn.functional as F

            self.net.train()
            self.opt.zero_grad(set_to_none=True)
            F.cross_entropy(self.net(self.x), self.t).backward()
            self.opt.step()
        else:
            with _fast.enabled(self.fast):
                grads = self.net.gradient(self.x, self.t)
                self.opt.update(self.net.params, grads)
                self._last = grads

    def infer(self) -> None:
        if self.impl == BASELINE:
            import torch

            self.net.eval()
            with torch.inference_mode():
                self.net(self.x)
        else:
            with _fast.enabled(self.fast):
                # like torch.inference_mode: no activations kept for a backward pass
                self._last = self.net.predict(self.x, train_flg=False, keep_cache=False)

    def run(self, mode: str, steps: int) -> float:
        """Seconds per step over ``steps`` steps (synchronised on GPUs)."""
        fn = self.train if mode == "train" else self.infer
        own = self.impl == "xpcnn-numpy" and self.device == "cpu"
        with cpu_threads(self.threads) if own else contextlib.nullcontext():
            self.sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            self.sync()
            return (time.perf_counter() - t0) / steps


# -- throughput --------------------------------------------------------------------------------


def time_group(
    configs: list[Config], modes: tuple[str, ...], rounds: int, block_s: float, warmup: int
) -> dict[tuple[str, str], dict[str, Any]]:
    """Interleaved blocks for every (config, mode); returns per-key timing records."""
    keys = [(c, m) for c in configs for m in modes]
    steps: dict[tuple[Config, str], int] = {}
    for c, m in keys:
        for _ in range(warmup):
            c.run(m, 1)
        t = min(c.run(m, 1) for _ in range(2))
        steps[c, m] = max(1, min(200, math.ceil(block_s / max(t, 1e-6))))
    blocks: dict[tuple[Config, str], list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        shift = r % len(keys)
        for c, m in keys[shift:] + keys[:shift]:  # rotate the order each round
            blocks[c, m].append(c.run(m, steps[c, m]))
    out = {}
    for (c, m), b in blocks.items():
        med = float(np.median(b))
        out[c.impl, m] = {
            "steps_per_block": steps[c, m],
            "block_seconds_per_step": b,
            "median_seconds_per_step": med,
            "images_per_second": c.batch / med,
        }
    return out


# -- peak memory (one subprocess per configuration) --------------------------------------------


def _proc_status_kib(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (Linux), else None."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _reset_peak_rss() -> bool:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0); False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


def memory_child(
    model: str, impl: str, batch: int, mode: str, device: str, steps: int, threads: int = 1
) -> dict:
    """Run in a fresh process: peak memory of ``steps`` steps over the post-import baseline."""
    import gc
    import tracemalloc

    import torch  # imported by every child, so the baselines match

    gc.collect()
    if _reset_peak_rss():
        method, base = "VmHWM", _proc_status_kib("VmRSS") or 0
    else:
        method, base = "ru_maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu0 = 0
    if device == "cuda":
        if impl.startswith("xpcnn-cupy"):
            import cupy

            pool = cupy.get_default_memory_pool()
            pool.free_all_blocks()
            gpu0 = pool.total_bytes()
        else:
            torch.cuda.reset_peak_memory_stats()
            gpu0 = torch.cuda.memory_allocated()
    tracing = impl.startswith("xpcnn-numpy")
    if tracing:
        tracemalloc.start()
    cfg = Config(model, impl, batch, device, threads=threads)
    for _ in range(steps):
        cfg.run(mode, 1)
    if method == "VmHWM":
        peak = _proc_status_kib("VmHWM") or 0
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result: dict[str, Any] = {"rss_peak_mib": (peak - base) / 1024, "rss_method": method}
    if tracing:
        result["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    if device == "cuda":
        if impl.startswith("xpcnn-cupy"):
            import cupy

            used = cupy.get_default_memory_pool().total_bytes() - gpu0
        else:
            used = torch.cuda.max_memory_allocated() - gpu0
        result["gpu_peak_mib"] = used / 2**20
    return result


def measure_memory(
    model: str, impl: str, batch: int, mode: str, device: str, steps: int, threads: int
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_memory-child",
        json.dumps(
            {
                "model": model,
                "impl": impl,
                "batch": batch,
                "mode": mode,
                "device": device,
                "steps": steps,
                "threads": threads,
            }
        ),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- report ------------------------------------------------------------------------------------


def format_table(rows: list[dict[str, Any]], device: str) -> str:
    """Markdown: img/s and peak memory, with ratios against native PyTorch."""
    mem_key = "gpu_peak_mib" if device == "cuda" else "rss_peak_mib"
    head = (
        "| model | mode | batch | implementation | img/s | x torch | peak MiB | x torch mem |\n"
        "|---|---|---:|---|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        ratio = f"{r['speed_ratio']:.2f}" if r.get("speed_ratio") is not None else "-"
        mem = r.get("memory", {}).get(mem_key)
        mem_s = f"{mem:.1f}" if mem is not None else "-"
        mratio = f"{r['memory_ratio']:.2f}" if r.get("memory_ratio") is not None else "-"
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['batch']} | {r['impl']} | "
            f"{r['images_per_second']:,.0f} | {ratio} | {mem_s} | {mratio} |"
        )
    return "\n".join(lines)


def _installed(backend: str) -> bool:
    try:
        resolve_device(None, backend)
    except DeviceError:
        return False
    return True


def check_cuda(impls: tuple[str, ...]) -> None:
    """Fail with a clear message when the CUDA comparison cannot run."""
    import torch

    if any(i.startswith("xpcnn-cupy") for i in impls):
        try:
            resolve_device("cuda")
        except DeviceError as exc:
            raise SystemExit(f"bench.py --device cuda: {exc}") from None
    if any(i in (BASELINE, "xpcnn-torch") for i in impls) and not torch.cuda.is_available():
        raise SystemExit(
            "bench.py --device cuda: PyTorch sees no CUDA GPU (torch.cuda.is_available() is "
            f"False; torch {torch.__version__}); install a CUDA build of torch or drop "
            "'torch'/'xpcnn-torch' from --impls"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring (python -m pydoc scripts/bench.py) for the method.",
    )
    p.add_argument("--quick", action="store_true", help="batch 100 only, fewer and shorter blocks")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--models", nargs="+", default=["simple", "deep"])
    p.add_argument("--impls", nargs="+", default=None, help="default: all for the device")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--batches", nargs="+", type=int, default=None, help="default 32 100 256")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timed blocks (7; quick 3)")
    p.add_argument("--block-seconds", type=float, default=None, help="per block (0.5; quick 0.2)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="BLAS and torch threads")
    p.add_argument("--memory-batch", type=int, default=100, help="batch for peak memory")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--json", type=Path, default=None, help="write all numbers here")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.memory_child is not None:
        spec = json.loads(args.memory_child)
        print(json.dumps(memory_child(**spec)))
        return 0

    import torch

    impls = tuple(args.impls or (CUDA_IMPLS if args.device == "cuda" else CPU_IMPLS))
    if not args.impls:  # the default list skips libraries that are not installed
        impls = tuple(i for i in impls if _installed(IMPL_BACKEND.get(i, "torch")))
    if args.device == "cuda":
        check_cuda(impls)
    batches = args.batches or ([100] if args.quick else [32, 100, 256])
    rounds = args.rounds or (3 if args.quick else 7)
    block_s = args.block_seconds or (0.2 if args.quick else 0.5)
    threads = args.threads or blas_threads() or os.cpu_count() or 1
    torch.set_num_threads(threads)

    limits = contextlib.ExitStack()  # BLAS/torch threads for the rest of the run
    limits.enter_context(thread_limits(args.threads))
    notes = []
    models = []
    for m in args.models:
        if m in MODELS:
            models.append(m)
        else:
            notes.append(f"model {m!r} skipped: not in xpcnn.models.MODELS ({sorted(MODELS)})")
    info = machine_info(args, threads)
    info["load_before"] = load()
    print(f"# bench {info['date']}  load {info['load_before']}  threads {threads}")
    print(f"# numpy BLAS: {blas_kernels(info)}")
    print(
        f"# xpcnn convolution: {info['xpcnn_convolution']}; torch CPU capability "
        f"{info['torch_cpu_capability']}, oneDNN ISA {info['onednn_max_cpu_isa']}"
    )
    if os.environ.get("OPENBLAS_CORETYPE"):  # say so: it can halve the GEMM rate
        print(f"# note: {blas_summary()}")
    for n in notes:
        print(f"# note: {n}")

    rows: list[dict[str, Any]] = []
    with limits:
        for model in models:
            for batch in batches:
                configs = [
                    Config(model, impl, batch, args.device, threads=threads) for impl in impls
                ]
                res = time_group(configs, tuple(args.modes), rounds, block_s, args.warmup)
                for mode in args.modes:
                    base = res.get((BASELINE, mode))
                    for impl in impls:
                        r = res[impl, mode]
                        rows.append(
                            {
                                "model": model,
                                "mode": mode,
                                "batch": batch,
                                "impl": impl,
                                **r,
                                "speed_ratio": (
                                    r["images_per_second"] / base["images_per_second"]
                                    if base
                                    else None
                                ),
                            }
                        )
                print(f"# timed {model} batch {batch}  load {load()}", flush=True)
                del configs

    if not args.no_memory:
        mem_key = "gpu_peak_mib" if args.device == "cuda" else "rss_peak_mib"
        for model in models:
            for mode in args.modes:
                mems = {
                    impl: measure_memory(
                        model, impl, args.memory_batch, mode, args.device, 3, threads
                    )
                    for impl in impls
                }
                base = mems.get(BASELINE, {}).get(mem_key)
                for r in rows:
                    if (r["model"], r["mode"], r["batch"]) == (model, mode, args.memory_batch):
                        r["memory"] = mems[r["impl"]]
                        v = r["memory"].get(mem_key)
                        r["memory_ratio"] = v / base if (v is not None and base) else None

    info["load_after"] = load()
    table = format_table(rows, args.device)
    print(table)
    print(f"# load after {info['load_after']}")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"machine": info, "notes": notes, "results": rows}, indent=1) + "\n"
        )
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
