"""The named nets' dict-valued options (``conv_param``, ``lrn_param``, ...): one merge."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def merge_options(
    name: str,
    default: Mapping[str, Any],
    given: Mapping[str, Any] | None,
    kind: Callable[[Any], Any],
) -> dict[str, Any]:
    """``default`` updated by ``given``, each value converted by ``kind``, in ``default``'s
    key order; a key ``default`` lacks raises ValueError naming ``name`` and the valid keys."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(default))
    if unknown:
        raise ValueError(f"{name}: unknown keys {unknown}; use only {list(default)}")
    return {k: kind(given.get(k, v)) for k, v in default.items()}
