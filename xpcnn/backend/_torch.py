"""PyTorch: tensors on the CPU or a CUDA GPU; its own random generators and threads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import array_api_compat
import numpy as np

from ._base import Adapter, int_seed


class TorchAdapter(Adapter):
    name = "torch"
    module = "torch"
    display = "PyTorch"
    install = "pip install torch (CUDA builds: https://pytorch.org/get-started/locally/)"
    distributions = ("torch",)
    test_ids = (("torch", "cpu"),)
    test_rank = 2

    def is_namespace(self, xp: Any) -> bool:
        return array_api_compat.is_torch_namespace(xp)

    def is_array(self, x: Any) -> bool:
        return array_api_compat.is_torch_array(x)

    def pick(self, mod: Any, kind: str, index: int, spec: str | None) -> tuple[Any, Any]:
        import array_api_compat.torch as torch_xp

        if kind in ("cpu", "default"):
            return torch_xp, mod.device("cpu")
        self.check_gpu_index(spec, index, self._gpu_count())
        return torch_xp, mod.device("cuda", index)

    def devices(self) -> list[str]:
        return ["cpu"] + [f"cuda:{i}" for i in range(self._gpu_count())]

    @staticmethod
    def _gpu_count() -> int:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def host_input(self, a: np.ndarray) -> np.ndarray:
        # torch cannot wrap read-only memory (and warns)
        return a if a.flags.writeable else a.copy()

    def to_numpy(self, x: Any, copy: bool = False) -> np.ndarray:
        import torch

        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # NumPy has no bfloat16: the host copy is float32
            x = x.float()
        return super().to_numpy(x.numpy(), copy)

    def random_uniform(self, like: Any, shape: tuple[int, ...], seed_state: dict[str, Any]) -> Any:
        import torch

        key = f"torch:{like.device}"
        if key not in seed_state:
            gen = torch.Generator(device=like.device)
            seed = seed_state.get("seed")
            if seed is None:
                gen.seed()
            else:
                gen.manual_seed(int_seed(seed))
            seed_state[key] = gen
        return torch.rand(shape, generator=seed_state[key], dtype=like.dtype, device=like.device)

    def rng_snapshot(self, gen: Any) -> np.ndarray:
        return gen.get_state().numpy().copy()

    def rng_restore(self, dev: str, state: np.ndarray) -> Any:
        import torch

        gen = torch.Generator(device=dev)
        gen.set_state(torch.from_numpy(np.array(state, np.uint8)))
        return gen

    def threads(self, n: int) -> AbstractContextManager[Any]:
        stack = contextlib.ExitStack()
        stack.enter_context(super().threads(n))
        stack.enter_context(_torch_threads(n))
        return stack

    def thread_parts(self, n: int | None, blas: str) -> list[str]:
        import torch

        return [blas, f"torch {torch.get_num_threads()}"]


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
