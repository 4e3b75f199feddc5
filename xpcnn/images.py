"""The user's own images as network input (``xpcnn predict``): PNG, JPEG or any
format Pillow reads, grey or colour, any size.

For a one-channel network the picture is prepared the way MNIST's digits were
(LeCun et al.): light-on-dark (a dark-on-light drawing is inverted), the
background taken off and the contrast stretched, the digit's bounding box
fitted into 20x20 keeping its aspect ratio, then placed in the 28x28 field so
that its centre of mass is at the centre (moved only as far as keeps the whole
box inside the field). Other sizes scale these numbers
(20/28 of the field). A three-channel network gets the whole picture resized.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["STYLES", "load_image", "prepare"]

#: ``"mnist"``: fit the digit in 20/28 of the field, centre of mass at the centre;
#: ``"fashion"``: fit the object in the whole field, centre its bounding box (as
#: Fashion-MNIST was made); ``"resize"``: only resize the whole picture.
STYLES = ("mnist", "fashion", "resize")
_INK = 0.1  # fraction of the brightest pixel that counts as ink for the bounding box


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "reading images needs Pillow, which is not installed: pip install pillow"
        ) from None
    return Image


def load_image(
    path: str | os.PathLike[str], input_dim: Sequence[int], *, style: str = "mnist"
) -> np.ndarray:
    """Read one image file and :func:`prepare` it for a network of ``input_dim``.

    Returns uint8 pixels (C, H, W), 0..255, white-on-black for one channel.
    Raises OSError for a file Pillow cannot read and ValueError for a blank image.
    """
    Image = _pil()
    with Image.open(path) as img:
        img.load()
        return prepare(img, input_dim, style=style)


def prepare(img: Any, input_dim: Sequence[int], *, style: str = "mnist") -> np.ndarray:
    """A Pillow image as uint8 (C, H, W) for a network of ``input_dim`` (C is 1 or 3)."""
    Image = _pil()
    C, H, W = (int(d) for d in input_dim)
    if C not in (1, 3):
        raise ValueError(f"images need a network with 1 or 3 input channels, not {C}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}: use one of {', '.join(STYLES)}")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        # Transparent pixels are paper: composite the drawing onto white.
        rgba = img.convert("RGBA")
        img = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img.alpha_composite(rgba)
    if C == 3:
        rgb = img.convert("RGB").resize((W, H), Image.Resampling.BOX)
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()
    a = np.asarray(img.convert("L"), dtype=np.float64)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if np.median(border) > 127:  # dark on light: MNIST is white on black
        a = 255.0 - a
        border = 255.0 - border
    a = np.clip(a - np.median(border), 0.0, None)  # the background becomes 0
    if a.max() <= 0:
        raise ValueError("the image is blank: no digit or object found")
    a *= 255.0 / a.max()
    if style == "resize":
        return _resized(a, W, H)[None]
    rows = np.flatnonzero((a > _INK * 255).any(axis=1))
    cols = np.flatnonzero((a > _INK * 255).any(axis=0))
    a = a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    box = (min(H, W) * 20 + 14) // 28 if style == "mnist" else min(H, W)
    h, w = a.shape
    scale = box / max(h, w)
    patch = _resized(a, max(1, round(w * scale)), max(1, round(h * scale)))
    h, w = patch.shape
    if style == "mnist":  # centre of mass at (H/2, W/2), in pixel-index coordinates
        mass = patch.sum(dtype=np.float64)
        cy = (patch.sum(axis=1, dtype=np.float64) @ np.arange(h)) / mass
        cx = (patch.sum(axis=0, dtype=np.float64) @ np.arange(w)) / mass
        # A lopsided digit (a 7's heavy bar) could be pushed out: keep the box inside.
        top = min(max(int(np.floor(H / 2 - cy + 0.5)), 0), H - h)
        left = min(max(int(np.floor(W / 2 - cx + 0.5)), 0), W - w)
    else:
        top, left = (H - h) // 2, (W - w) // 2
    out = np.zeros((H, W), dtype=np.uint8)
    out[top : top + h, left : left + w] = patch
    return out[None]


def _resized(a: np.ndarray, w: int, h: int) -> np.ndarray:
    """Grey pixels (float 0..255) resized to (h, w), as uint8: area averages when
    shrinking (anti-aliased like MNIST, without Lanczos' ringing), bilinear otherwise."""
    Image = _pil()
    img = Image.fromarray(np.round(a).astype(np.uint8), mode="L")
    if img.size != (w, h):
        shrink = w <= img.size[0] and h <= img.size[1]
        img = img.resize((w, h), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)
