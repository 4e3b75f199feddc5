"""Random numbers: the host generator (weights, shuffles) and the per-step masks drawn
on each array's own device, with their state for checkpoints."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Adapter, host_restore, host_snapshot
from ._device import _BY_NAME, adapter_of


def host_rng(seed: int | np.random.Generator | None = None) -> np.random.Generator:
    """The host random generator: weights and shuffles are drawn here, so a seed
    gives the same numbers on every backend."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def random_uniform(like: Any, shape: tuple[int, ...], *, seed_state: dict[str, Any]) -> Any:
    """Uniform numbers in [0, 1) with the dtype, namespace and device of array ``like``.

    The per-step seam for random masks (dropout): a GPU array gets numbers drawn
    on its own device, so no mask is copied from the host every step.

    - CuPy: a ``cupy.random.Generator`` on ``like``'s GPU;
    - torch: a ``torch.Generator`` on ``like``'s device;
    - any other backend (NumPy, JAX, array-api-strict, ...): the host
      ``numpy.random.Generator``, then ``xp.asarray(..., device=device(like))``.

    Parameters
    ----------
    like : floating array (float32 or float64)
    shape : output shape
    seed_state : dict
        Owned by the caller (a layer), e.g. ``{"seed": 0}``. ``seed_state["seed"]``
        (an int, a ``numpy.random.Generator`` or None for fresh entropy) seeds one
        generator per backend and device, created on first use and kept in the
        dict (under ``"host"`` or ``"<backend>:<device>"``), so a given seed repeats
        the same sequence of masks on a given backend (the backends' generators
        differ from each other).

    Returns
    -------
    array of ``shape``, dtype of ``like``, on ``like``'s device.
    """
    return adapter_of(like).random_uniform(like, tuple(int(s) for s in shape), seed_state)


def rng_state(seed_state: dict[str, Any]) -> dict[str, np.ndarray]:
    """Host snapshots (uint8 arrays) of the generators in a :func:`random_uniform`
    ``seed_state``, for checkpoints: the host NumPy generator and torch generators.

    CuPy generators expose no state to restore; a resumed run draws fresh masks there.
    """
    out = {}
    for key, gen in seed_state.items():
        if key == "host":
            out[key] = host_snapshot(gen)
        elif (lib := _owner(key)) and (snapshot := lib.rng_snapshot(gen)) is not None:
            out[key] = snapshot
    return out


def set_rng_state(seed_state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Restore :func:`rng_state` snapshots into ``seed_state`` (the next draws continue
    the saved sequences)."""
    for key, a in arrays.items():
        if key == "host":
            seed_state[key] = host_restore(a)
        elif (lib := _owner(key)) and (
            gen := lib.rng_restore(key.partition(":")[2], a)
        ) is not None:
            seed_state[key] = gen


def _owner(key: str) -> Adapter | None:
    """The adapter whose generator a ``seed_state`` key names (``"torch:cpu"``)."""
    name, sep, _ = key.partition(":")
    return _BY_NAME.get(name) if sep else None
