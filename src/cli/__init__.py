"""The command line. Importing this package configures the process for the CLI before anything else
loads: Arrow's allocator, glibc's memory thresholds, and quiet Rust logging.

- Arrow allocates with the system allocator: its jemalloc pool keeps the pages of freed buffers (a
  table of 3 MB values peaked at 535 MB with it, 330 MB without), for no speed gained here.
- Memory is reused rather than handed back and faulted in again: W1 (2M `orders` rows to S3) took 236K
  page faults, a quarter of its CPU time in the kernel, when every buffer over 256 kB was its own mmap.
  glibc's mmap threshold is now fixed at 2 MB (left to itself glibc raises it, up to 32 MB, each time
  a big block is freed, and memory then creeps up through a long read), it keeps up to 64 MB freed at
  the top of a heap (its default hands anything over 128 kB back at once); the fast path still hands
  freed memory back after each key range. W1 (alternated runs): 2.80 -> 2.16-2.40 CPU-s, 236K -> 110-130K
  page faults, peak RSS 230 -> 245-255 MB; 20M rows 258 MB (flat).
  ARROW_DEFAULT_MEMORY_POOL, MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ in the environment win.
- connectorx's connection pool logs each refused login to stderr; our own message says what happened,
  once (RUST_LOG in the environment wins).
- SIGTERM and SIGINT are held (``hold_signals``) from the first moment of a CLI process: the imports
  that follow take a second or more, and a SIGTERM then killed the process with nothing on stdout
  (SIGINT: a traceback). A held signal ends the run at its start, reported as interrupted; during the
  run the engine watches the signals itself (``engine.run.watching_signals``).
"""

import gc
import itertools
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from src.common.memory import fix_mmap_threshold, keep_freed_memory

MMAP_THRESHOLD_BYTES = 2 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
os.environ.setdefault("RUST_LOG", "off")
if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    fix_mmap_threshold(MMAP_THRESHOLD_BYTES)
if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
    keep_freed_memory(TRIM_THRESHOLD_BYTES)


HELD: list[str] = []  # the signals received while held, by name ("SIGTERM"), in order


def _hold(signum: int, frame: FrameType | None) -> None:
    HELD.append(signal.Signals(signum).name)


_holding: list[bool] = []  # [True] once this process holds them: it is the CLI's


def hold_signals() -> None:
    """From now on SIGTERM/SIGINT only append to ``HELD`` (until an event loop's own handler takes over)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _hold)
        _holding[:] = [True]


def hold_signals_again() -> None:
    """After an event loop's handlers are gone (asyncio leaves SIGTERM fatal again), in a process that
    holds them; never in one that only calls the CLI's functions (a test's CliRunner)."""
    if _holding:
        hold_signals()


def _launched_as_cli(argv: list[str]) -> bool:
    """``python [options] -m src.cli.main ...`` or the ``s3shift`` console script (not a test importing
    us)."""
    module = any(pair == ("-m", "src.cli.main") for pair in itertools.pairwise(argv))
    return module or (len(argv) > 1 and Path(argv[1]).name == "s3shift")


if _launched_as_cli(sys.orig_argv):
    hold_signals()
    gc.disable()  # during the imports (~600 modules, none of them cyclic garbage): 0.30 -> 0.26 s; ``main``
    # freezes what they made and turns the collector back on
