"""Output folders of runs and figures: checked writable before anything is computed,
and removed again when a failed run left them empty."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import RunError

__all__ = ["check_writable", "removed_if_empty"]


def check_writable(folder: Path) -> Path:
    """``folder``, created if missing; a :class:`RunError` (to choose another
    ``--out``) when it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".xpcnn-write-test-"):
            pass
    except OSError as exc:
        raise RunError(
            f"cannot write to output folder {folder}: {exc.strerror or exc}; choose another --out"
        ) from None
    return folder


@contextlib.contextmanager
def removed_if_empty(folder: Path) -> Iterator[None]:
    """Remove ``folder`` (and the parents created with it) on the way out if the
    block left them empty: a run that fails before its first checkpoint leaves
    no empty output folder behind."""
    new = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield
    finally:
        for p in new:  # deepest first; a folder that holds anything stays
            try:
                p.rmdir()
            except OSError:
                break
