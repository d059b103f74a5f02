"""The allocator choices the CLI makes before anything allocates."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_process_chooses_arrows_pool() -> None:
    """``import src.cli`` chooses Arrow's system pool before pyarrow loads (its jemalloc pool keeps freed
    pages: tests/test_blackbox_scale.py); the environment wins."""
    code = "import src.cli, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "system"
    env_pool = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"ARROW_DEFAULT_MEMORY_POOL": "jemalloc", "PATH": "/usr/bin:/bin"},
    )
    assert env_pool.stdout.strip() == "jemalloc"
