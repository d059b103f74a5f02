"""The allocator knobs of ``src.common.memory``: freed memory is handed back only past a bound of growth,
and the CLI process runs with the thresholds it sets."""

from __future__ import annotations

import subprocess
import sys

import pytest

from src.common import memory

MB = 1024 * 1024


def test_freed_memory_is_released_only_past_the_slack(monkeypatch: pytest.MonkeyPatch) -> None:
    rss = [200 * MB]
    released: list[int] = []

    def release() -> None:
        released.append(rss[0])
        rss[0] -= 30 * MB  # what the release handed back

    monkeypatch.setattr(memory, "_floor", [])
    monkeypatch.setattr(memory, "resident_bytes", lambda: rss[0])
    monkeypatch.setattr(memory, "release_freed_memory", release)
    memory.release_if_grown(16 * MB)  # the first call releases and sets the floor: 170 MB
    assert released == [200 * MB]
    for grown in (5, 10, 16):  # up to the slack: nothing is released
        rss[0] = (170 + grown) * MB
        memory.release_if_grown(16 * MB)
    assert released == [200 * MB]
    rss[0] = 187 * MB  # past it: released, and the floor is what is left
    memory.release_if_grown(16 * MB)
    assert released == [200 * MB, 187 * MB] and memory._floor == [157 * MB]


def test_resident_bytes_reads_this_process() -> None:
    before = memory.resident_bytes()
    block = bytearray(64 * MB)  # zeroed: every page touched
    assert memory.resident_bytes() >= before + 60 * MB
    del block


def test_the_cli_process_sets_arrow_and_glibc_thresholds() -> None:
    """``import src.cli`` chooses Arrow's jemalloc pool and glibc's thresholds before pyarrow loads; the
    environment wins."""
    code = "import src.cli, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "jemalloc"
    env_pool = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"ARROW_DEFAULT_MEMORY_POOL": "system", "PATH": "/usr/bin:/bin"},
    )
    assert env_pool.stdout.strip() == "system"
