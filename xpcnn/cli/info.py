"""``xpcnn info``: versions, BLAS, MPI, every backend and its devices, GPUs."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
from importlib import metadata
from typing import Any

from .. import __version__
from ..backend import (
    BACKENDS,
    DeviceError,
    backend_devices,
    blas_summary,
    gpu_names,
    kernel_summary,
    library_packages,
    resolve_device,
)
from ..distributed import mpi_summary

_PACKAGES = ("numpy", "array-api-compat", "array-api-extra", "matplotlib", "tqdm", "threadpoolctl")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    return subparsers.add_parser("info", help="versions, backends and whether a GPU is visible")


def run(args: argparse.Namespace) -> int:
    print(
        f"xpcnn {__version__}  (Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs)"
    )
    for pkg in dict.fromkeys([*_PACKAGES, *library_packages()]):
        with contextlib.suppress(metadata.PackageNotFoundError):
            print(f"  {pkg:<17} {metadata.version(pkg)}")
    print(f"numpy BLAS: {blas_summary()}")
    print(f"convolution: {kernel_summary()}")
    print(f"MPI: {mpi_summary()}")
    print("backends (--backend: --device ...):")
    for name in BACKENDS:
        try:
            devices = ", ".join(backend_devices(name)) or "no GPU visible"
        except DeviceError as exc:
            devices = f"not available ({exc})"
        print(f"  {name:<17} {devices}")
    print("default: cpu (NumPy)", end="")
    try:
        resolve_device("cuda")
    except DeviceError as exc:
        print(f"\nGPU: not available ({exc})")
    else:
        names = gpu_names()
        print(
            f", cuda (CuPy): {len(names)} GPU(s): "
            + ", ".join(f"cuda:{i} {n}" for i, n in enumerate(names))
        )
    return 0
