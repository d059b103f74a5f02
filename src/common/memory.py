"""The C allocator's memory knobs, through the C library this process runs on (glibc: elsewhere each is
a no-op). Imported by ``src.cli`` before anything allocates much, and by the fast path after each range."""

from __future__ import annotations

import ctypes
import sys
from typing import Any

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None)  # the symbols of this process, the C library's among them
    except OSError:
        return None


_LIBC = _libc()


def fix_mmap_threshold(size: int) -> None:
    """Keep allocations of ``size`` bytes or more in mmap, returned to the OS when freed: glibc otherwise
    raises its threshold each time a big block is freed (up to 32 MB), and later big blocks come from
    heap arenas it never gives back."""
    mallopt = getattr(_LIBC, "mallopt", None)  # musl has none
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, size)


def release_freed_memory() -> None:
    """Hand the free pages of every arena back to the OS (glibc's ``malloc_trim``; well under a
    millisecond)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)
