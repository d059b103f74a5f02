"""The C allocator's memory knobs, through the C library this process runs on (glibc: elsewhere each is
a no-op). Imported by ``src.cli`` before anything allocates much, and by the fast path after each range."""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters
_M_MMAP_THRESHOLD = -3


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


def keep_freed_memory(size: int) -> None:
    """Keep up to ``size`` bytes freed at the top of a heap for the next allocation instead of handing
    them back at once (glibc's default is 128 kB): each page handed back and taken again costs a fault."""
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is not None:
        mallopt(_M_TRIM_THRESHOLD, size)


def release_freed_memory() -> None:
    """Hand the free pages of every arena back to the OS (glibc's ``malloc_trim``; well under a
    millisecond)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_floor: list[int] = []  # the resident size right after the last ``release_if_grown`` released


def resident_bytes() -> int:
    """This process's resident set size now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def release_if_grown(slack: int) -> None:
    """``release_freed_memory`` once the resident size grew ``slack`` bytes past what it was right after
    the last release. Every page handed back is faulted in again by the next buffer: releasing only past
    that bound keeps memory from creeping up over a long read without paying the faults on every range."""
    if _floor and resident_bytes() <= _floor[0] + slack:
        return
    release_freed_memory()
    _floor[:] = [resident_bytes()]
