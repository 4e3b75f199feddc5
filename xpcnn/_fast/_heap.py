"""Keep freed memory in the process's heap, so that a training step's large arrays
are not handed back to the kernel and faulted in again at the next step.

glibc's malloc serves blocks above a threshold (128 KiB, growing as such blocks are
freed) with ``mmap`` and returns them with ``munmap``, and gives the heap's free top
back above another. An activation of DeepConvNet at batch 100 is a few MiB: each step
then maps fresh pages and pays a page fault per 4 KiB on first touch (about 700-1,100
faults and 2-4 ms of system time per 70 ms step on the 2-core machine of
scripts/BENCHMARKS.md). With both thresholds raised, the same addresses are reused
from the heap and the faults all but stop. The command ``xpcnn train`` calls
:func:`keep_freed_memory` (the process then keeps its peak, which it needed anyway);
a script, or :func:`xpcnn.run.run_training`, gets the same from the environment:
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824``.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
#: glibc's largest mmap threshold on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``): blocks
#: above it (a batch of thousands of images) still come from mmap.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30
#: Settings a user may have made already (or another allocator preloaded): then
#: nothing is changed.
USER_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "GLIBC_TUNABLES",
    "LD_PRELOAD",
)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module's text).
    Returns whether it did: False off glibc, where the environment already sets
    malloc's thresholds (the user's choice wins), or where ``LD_PRELOAD`` may put
    another allocator (jemalloc, AddressSanitizer's) in front of glibc's."""
    if platform.libc_ver()[0] != "glibc" or any(os.environ.get(v) for v in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first, so a failure changes nothing.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
