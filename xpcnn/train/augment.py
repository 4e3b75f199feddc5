"""Data augmentation of training batches: random crops after zero padding, and
left-right flips (the usual CIFAR-10 recipe: pad by 4, crop 32x32, flip half).

The random draws are made on the host (``numpy.random.Generator``, seeded by the
run's seed and the epoch) for every example of the training set at once, so an
example's crop and flip depend only on the seed, the epoch and the example: a run
resumed mid-epoch and a data-parallel run (any number of ranks) augment each
example exactly as one uninterrupted process does. The draws go to the device once
per epoch; each batch takes its rows there and is cropped and flipped by one
gather (:func:`crop_flip`), on its pixels before their conversion to the
network's dtype, without a loop over images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace, device

from .._window import pad_hw
from ..backend import Device
from ..data import DATASETS
from ..data.sources import canonical_name
from ..errors import ConfigError

__all__ = ["AUGMENTATIONS", "Augment", "check_augment", "crop_flip"]

#: What ``--augment`` / :class:`Augment` can do, comma-separated.
AUGMENTATIONS = ("crop", "flip")
# Mixed into the seed so that these draws never repeat another stream of the run's seed.
_STREAM = 0x61756720


def crop_flip(x: Any, top: Any, left: Any, flip: Any, *, pad: int) -> Any:
    """Crop each image of ``x`` out of its zero-padded copy, mirrored where asked.

    Parameters
    ----------
    x : (N, C, H, W) array of any dtype (uint8 pixels or floats)
    top, left : (N,) arrays of one integer dtype on ``x``'s device, in ``0 .. 2 * pad``
        The window's corner in the padded image (``pad, pad`` keeps the image).
    flip : (N,) bool array on ``x``'s device
        Mirror the window left-right.
    pad : int >= 0
        Zeros added on each side of H and W before cropping.

    Returns
    -------
    (N, C, H, W) array of ``x``'s dtype, namespace and device: image n is
    ``padded[n, :, top[n]:top[n] + H, left[n]:left[n] + W]``, its columns reversed
    where ``flip[n]``. One ``take`` of flat indices: no loop over images, no writes
    (works on immutable arrays too).
    """
    xp = array_namespace(x, top, left, flip)
    N, C, H, W = x.shape
    dev, it = device(x), top.dtype  # JAX's default integers are int32: keep the given ones
    Hp, Wp = H + 2 * pad, W + 2 * pad
    padded = pad_hw(x, pad, 0, xp=xp)
    i = xp.arange(H, dtype=it, device=dev)
    j = xp.arange(W, dtype=it, device=dev)
    rows = xp.reshape(top, (N, 1)) + i  # (N, H)
    cols = xp.reshape(left, (N, 1)) + xp.where(xp.reshape(flip, (N, 1)), (W - 1) - j, j)  # (N, W)
    image = xp.reshape(xp.arange(N * C, dtype=it, device=dev), (N, C, 1, 1))
    index = (image * Hp + xp.reshape(rows, (N, 1, H, 1))) * Wp + xp.reshape(cols, (N, 1, 1, W))
    out = xp.take(xp.reshape(padded, (-1,)), xp.reshape(index, (-1,)))
    return xp.reshape(out, (N, C, H, W))


def parse_augment(text: str) -> tuple[str, ...]:
    """``"crop,flip"`` as ``("crop", "flip")`` (in :data:`AUGMENTATIONS`' order); a
    :class:`~xpcnn.errors.ConfigError` naming an unknown or repeated one."""
    kinds = [k.strip().lower() for k in text.split(",")]
    unknown = [k for k in kinds if k not in AUGMENTATIONS]
    if unknown or len(set(kinds)) != len(kinds):
        what = f"unknown {', '.join(map(repr, unknown))}" if unknown else "a repeated one"
        raise ConfigError(f"augmentation {text!r} has {what}: give crop, flip or crop,flip")
    return tuple(k for k in AUGMENTATIONS if k in kinds)


def check_augment(kinds: str | tuple[str, ...], dataset: str) -> None:
    """Refuse (:class:`~xpcnn.errors.ConfigError`) a flip of a data set whose mirror
    images are not of their class (MNIST's digits: a mirrored 2, 3, 4, 5, 7 or 9 is no
    digit; their record says ``mirror_symmetric=False``)."""
    kinds = parse_augment(kinds) if isinstance(kinds, str) else kinds
    key = canonical_name(dataset)
    if "flip" in kinds and not DATASETS[key].mirror_symmetric:
        raise ConfigError(
            f"--augment flip would mirror {key}'s images, and a mirrored digit (2, 3, 4, 5, 7, "
            "9) is no digit: use --augment crop"
        )


class Augment:
    """Random crops (after zero padding by ``pad``) and/or left-right flips of each
    training batch, for :class:`~xpcnn.train.Trainer` (``augment=``).

    Parameters
    ----------
    kinds : "crop", "flip", "crop,flip" or a tuple of them
    pad : int
        Zeros added on each side before a crop (4: CIFAR-10's usual); a crop's corner
        is uniform in ``0 .. 2 * pad`` on each axis, each image flipped with
        probability 1/2.
    seed : int
        The run's seed: with the epoch it fixes every draw (see the module docstring).
    """

    def __init__(self, kinds: str | tuple[str, ...] = "crop,flip", *, pad: int = 4, seed: int = 0):
        self.kinds = parse_augment(kinds if isinstance(kinds, str) else ",".join(kinds))
        if pad < 0:
            raise ConfigError(f"pad must be non-negative, got {pad}")
        self.pad, self.seed = int(pad), int(seed)
        self._drawn: tuple[tuple[int, int, str], tuple[Any, ...]] | None = None

    def __repr__(self) -> str:
        return f"Augment({','.join(self.kinds)!r}, pad={self.pad}, seed={self.seed})"

    def draw(self, epoch: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Host draws of epoch ``epoch`` for a training set of ``n`` examples:
        ``(top, left, flip)``, each (n,), indexed by example (int64, int64, bool)."""
        rng = np.random.default_rng([self.seed, _STREAM, epoch])
        top, left = rng.integers(0, 2 * self.pad + 1, size=(2, n))
        flip = rng.random(n) < 0.5
        if "crop" not in self.kinds:
            top = left = np.full(n, self.pad)
        if "flip" not in self.kinds:
            flip = np.zeros(n, dtype=bool)
        return top, left, flip

    def on_device(self, epoch: int, n: int, dev: Device) -> tuple[Any, Any, Any]:
        """:meth:`draw` of epoch ``epoch`` on ``dev``, copied there once per epoch."""
        key = (epoch, n, dev.name)
        if self._drawn is None or self._drawn[0] != key:
            self._drawn = key, tuple(dev.asarray(a) for a in self.draw(epoch, n))
        top, left, flip = self._drawn[1]
        return top, left, flip

    def apply(self, x: Any, rows: Any, drawn: tuple[Any, ...]) -> Any:
        """Augment batch ``x`` (B, C, H, W), the examples ``rows`` ((B,) integers), with
        an epoch's draws :meth:`on_device`: device work only, so a compiled step traces it."""
        xp = array_namespace(x, rows)
        top, left, flip = (xp.take(a, rows) for a in drawn)
        return crop_flip(x, top, left, flip, pad=self.pad)

    def __call__(self, x: Any, rows: Any, epoch: int, n: int) -> Any:
        """Augment batch ``x`` (B, C, H, W) on its device, whose images are the
        examples ``rows`` ((B,) integers on that device) of a training set of ``n``."""
        return self.apply(x, rows, self.on_device(epoch, n, Device.of(x)))
