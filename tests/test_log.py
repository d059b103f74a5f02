"""Logging: stderr only, one line per record, tracebacks only with --verbose (library records included)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A task that fails and is never awaited: asyncio reports it when the task is collected, as aiohttp's
# request tasks are when S3 drops a connection mid-request.
ORPHAN = """
import asyncio, gc, sys
from src.common import log

log.configure(sys.argv[1] == "verbose")

async def fail() -> None:
    raise ConnectionResetError("Cannot write to closing transport")

async def main() -> None:
    asyncio.get_running_loop().create_task(fail())
    await asyncio.sleep(0.05)
    gc.collect()

asyncio.run(main())
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_an_unretrieved_task_exception_is_one_line_unless_verbose(verbose: bool) -> None:
    mode = "verbose" if verbose else "quiet"
    done = subprocess.run(
        [sys.executable, "-c", ORPHAN, mode], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert "ERROR asyncio: Task exception was never retrieved" in lines[0], done.stderr
    assert "ConnectionResetError: Cannot write to closing transport" in done.stderr
    assert ("Traceback" in done.stderr) is verbose and (len(lines) == 1) is not verbose, done.stderr


# Native code writes to descriptor 2 directly: a Rust panic's report (connectorx on a zero date), with a
# backtrace under RUST_BACKTRACE, and anything else, e.g. a connection string holding a password.
NATIVE = r"""
import os, sys, time
from src.common import log
from src.common.secret import Secret

log.configure(sys.argv[1] == "verbose")
Secret("hunter2-native")
relay = log.NativeStderr.install()
frames = "stack backtrace:\n   0: rust_begin_unwind\n             at /x.rs:1:2\n   1: connectorx::read\n"
os.write(2, b"native says hello\n")
note = "note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n"
os.write(2, ("\nthread '<unnamed>' (812) panicked at /cargo/mysql_common/convert.rs:122:23:\n"
             "Couldn't convert the value `Date(\"'0000-00-00'\")`\n" + frames + note).encode())
os.write(2, b"\nthread '<unnamed>' panicked at src/lib.rs:1:1:\nno backtrace here\n"
            b"note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n")
os.write(2, ("\nthread 'x' panicked at a.rs:1:1:\nfull\n" + frames).encode())
time.sleep(0.5)  # RUST_BACKTRACE=full writes no closing note: the report ends when nothing more comes
os.write(2, b"mysql://root:hunter2-native@db/x\n\nafter a blank line\npartial")
sys.stderr.write("python line\n")
relay.close()
os.write(2, b"after close\n")
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_native_stderr_is_scrubbed_and_rust_panic_reports_are_dropped(verbose: bool) -> None:
    mode = "verbose" if verbose else "quiet"
    done = subprocess.run(
        [sys.executable, "-c", NATIVE, mode], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stderr.splitlines()
    native = [line for line in lines if "s3shift.native" not in line and line != "python line"]
    assert "python line" in lines  # Python's own writes go to the real stderr directly
    expected = ["native says hello", "mysql://root:***@db/x", "", "after a blank line", "partial"]
    # the blank line a report opens with went with it; a lone one stays
    assert native == [*expected, "after close"], lines
    assert "hunter2" not in done.stderr
    dropped = [line for line in lines if "dropped a Rust panic report" in line]
    if verbose:
        assert len(dropped) == 3, lines
        assert "Couldn't convert the value" in dropped[0] and "note:" not in dropped[0]
        assert dropped[1].endswith("report: no backtrace here") and dropped[2].endswith("report: full")
    else:
        assert dropped == []


def test_a_crash_is_still_reported_with_native_stderr_relayed() -> None:
    """The relay thread dies with the process, so a fatal signal is reported on the real stderr."""
    code = "import os, signal\nfrom src.common import log\nlog.NativeStderr.install()\n"
    code += "os.kill(os.getpid(), signal.SIGSEGV)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == -11
    assert "Fatal Python error: Segmentation fault" in done.stderr, done.stderr
