"""array-api-strict: the standard and nothing more, on its CPU and on ``device1`` /
``device2``, which refuse host conversion and mixing devices as a GPU does."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from ._base import Adapter, DeviceError


class StrictAdapter(Adapter):
    name = "array-api-strict"
    aliases = ("strict",)
    module = "array_api_strict"
    display = "array-api-strict"
    install = "pip install array-api-strict"
    distributions = ("array-api-strict",)
    test_ids = (
        ("strict", "cpu"),
        ("strict-device1", "device1"),
    )
    test_rank = 1

    def is_namespace(self, xp: Any) -> bool:
        return array_api_compat.is_array_api_strict_namespace(xp)

    def is_array(self, x: Any) -> bool:
        return type(x).__module__.startswith("array_api_strict")

    def resolve(self, spec: str | None, what: str) -> tuple[Any, Any]:
        """Its devices by their own names: ``cpu``, ``device1``, ``device2``."""
        strict = self.load(what)
        names = {d._device: d for d in strict.__array_namespace_info__().devices()}
        key = "CPU_DEVICE" if spec is None or spec.lower() == "cpu" else spec
        if key not in names:
            raise DeviceError(
                f"unknown array-api-strict device {spec!r}: use "
                + ", ".join("cpu" if n == "CPU_DEVICE" else n for n in names)
            )
        return strict, names[key]

    def devices(self) -> list[str]:
        import array_api_strict as strict

        return [
            "cpu" if d == strict.Device("CPU_DEVICE") else d._device
            for d in strict.__array_namespace_info__().devices()
        ]

    def label(self, dev: Any) -> str:
        return f"array-api-strict:{dev._device}"

    def to_numpy(self, x: Any, copy: bool = False) -> np.ndarray:
        import array_api_strict

        return super().to_numpy(x.to_device(array_api_strict.Device("CPU_DEVICE")), copy)
