"""The command line. Importing this package configures the process for the CLI before anything else
loads: Arrow's allocator, glibc's mmap threshold, and quiet Rust logging.

- Arrow allocates with the system allocator: its jemalloc pool keeps the pages of freed buffers (a
  table of 3 MB values peaked at 535 MB with it, 330 MB without), for no speed gained here.
- glibc raises its mmap threshold each time a big block is freed (up to 32 MB), after which record
  batches and connectorx's key ranges come from heap arenas that are never given back: RSS then creeps
  up through the run. A fixed threshold of 256 kB keeps big buffers in mmap, returned when freed
  (2M `orders` rows staged: peak RSS 230 MB instead of 306 MB). It costs page faults (W1: 2.80 CPU-s, a
  fifth in the kernel); a 2 MB threshold with a 64 MB trim threshold saved 0.3-0.4 CPU-s and 6% of
  W1's wall, but memory then grew with the table (20M rows: 1.12-1.17x W1's peak RSS, against
  1.08x; measured in session 10). MALLOC_MMAP_THRESHOLD_ in the environment wins.
- connectorx's connection pool logs each refused login to stderr; our own message says what happened,
  once (RUST_LOG in the environment wins).
- SIGTERM, SIGINT and SIGHUP (``src.common.signals``) are held (``hold_signals``) from the first moment
  of a CLI process: the imports that follow take a second or more, and a SIGTERM then killed the process
  with nothing on stdout (SIGINT: a traceback). A held signal ends the run at its start, reported as
  interrupted; during the run the engine watches the signals itself (``engine.run.watching_signals``).
"""

import gc
import itertools
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from src.common.memory import fix_mmap_threshold
from src.common.signals import STOP_SIGNALS

MMAP_THRESHOLD_BYTES = 256 * 1024

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
os.environ.setdefault("RUST_LOG", "off")
if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    fix_mmap_threshold(MMAP_THRESHOLD_BYTES)


HELD: list[str] = []  # the signals received while held, by name ("SIGTERM"), in order


def _hold(signum: int, frame: FrameType | None) -> None:
    HELD.append(signal.Signals(signum).name)


_holding: list[bool] = []  # [True] once this process holds them: it is the CLI's


def hold_signals() -> None:
    """From now on the stop signals only append to ``HELD`` (until an event loop's own handler takes over)."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
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
