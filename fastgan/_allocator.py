"""`fastgan train`'s CPU allocator setting: freed large blocks stay in the process's heap.

PyTorch allocates CPU tensors with ``malloc`` and keeps no cache of its own on the CPU. glibc
serves a block above its mmap threshold (128 KiB at first, raised as blocks are freed) with
``mmap`` and hands it back to the kernel on ``free``, and it trims the heap's top beyond its
trim threshold. A training step that allocates and frees the same multi-megabyte activations
every step then has the kernel map and zero them again every step. Measured on the ``shapes``
preset (2-core CPU, 600 steps): a third of the CPU time in the kernel and 19–24 it/s; with
the blocks kept, 34 it/s (README).

Only the command line (and bench/conftest.py, for every provider alike) calls this: a library
must not change its host process's allocator.
``FASTGAN_KEEP_FREED_MEMORY=0`` turns it off. The cost: the process's resident memory stays at
its peak until it exits.
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's malloc.h parameters for mallopt.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to 32 MiB (the most every 64-bit glibc accepts; the shapes preset's largest
# activations are about 6 MiB) come from the heap, and up to 1 GiB of free heap top is kept.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30
ENVIRONMENT_SWITCH = "FASTGAN_KEEP_FREED_MEMORY"
# The user's own allocator choices, which this leaves alone.
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def keep_freed_memory() -> bool:
    """Sets glibc's mmap and trim thresholds (above) for this process. Returns whether it did:
    False where the switch is ``0``, where the user has chosen the allocator's settings
    (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``glibc.malloc`` tunables) or
    another allocator (``LD_PRELOAD`` of jemalloc, tcmalloc, mimalloc), or where the C library
    is not glibc (macOS, Windows, musl): there the allocator stays as it is."""
    environ = os.environ
    if environ.get(ENVIRONMENT_SWITCH, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    if any(name in environ for name in _USER_SETTINGS) or "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return False
    if any(name in environ.get("LD_PRELOAD", "") for name in _OTHER_ALLOCATORS):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    mmap_set = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    trim_set = bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return mmap_set and trim_set
