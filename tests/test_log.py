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
