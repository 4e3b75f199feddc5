"""The network-level parameter names of the book (``W1, b1, W2, ...``), read and
written through to the layers' own dicts."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

from ..layers import Layer

__all__ = ["ParamView", "index_by_name"]


def index_by_name(
    layers: Sequence[Layer],
) -> tuple[dict[str, tuple[Layer, str]], dict[str, tuple[Layer, str]]]:
    """``(params, buffers)``: each network-level name mapped to ``(layer, key)``.

    The n-th layer with parameters gives its names the suffix n (``W1, b1`` for
    the first, ``gamma2, beta2`` for a batch normalisation second); its buffers
    take the same suffix.
    """
    params: dict[str, tuple[Layer, str]] = {}
    buffers: dict[str, tuple[Layer, str]] = {}
    n = 0
    for layer in layers:
        n += bool(layer.params)
        params.update({f"{k}{n}": (layer, k) for k in layer.params})
        buffers.update({f"{k}{n}": (layer, k) for k in layer.buffers})
    return params, buffers


class ParamView(MutableMapping):
    """Network-level names (``W1``, ``b1``, ...) that read and write the layers' dicts.

    Optimizers assign ``params[key] = new``; the assignment lands in the
    owning layer, so updates work on immutable backends too.
    """

    def __init__(self, index: dict[str, tuple[Layer, str]], attr: str) -> None:
        self._index = index
        self._attr = attr

    def __getitem__(self, key: str) -> Any:
        layer, k = self._index[key]
        return getattr(layer, self._attr)[k]

    def __setitem__(self, key: str, value: Any) -> None:
        layer, k = self._index[key]
        getattr(layer, self._attr)[k] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError("network parameters cannot be deleted")

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)
