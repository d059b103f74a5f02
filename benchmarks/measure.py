"""Process measurement (wall time, peak RSS), the moto S3 server, and what a contender left in S3.

Peak RSS is the larger of two readings of the same process tree:
- the child's own `ru_maxrss` from wait4, taken by GNU `/usr/bin/time -f %M` (a 30 KB C program) so
  that the figure is not inflated by the harness: a child forked from this Python process would carry
  the parent's high-water RSS in its ru_maxrss (Linux records the pre-exec mm at exec). wait4's maxrss
  covers the child and the descendants it reaped, as a max, not a sum;
- the peak SUM of RSS over the tree, polled from /proc every 50 ms (catches worker processes running
  at the same time). No psutil.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
S3_KEY = "testing"
TIME = "/usr/bin/time"  # GNU time (Debian package `time`)
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": S3_KEY,
    "AWS_SECRET_ACCESS_KEY": S3_KEY,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


@dataclass(frozen=True)
class Sample:
    """One run of one contender."""

    wall: float
    rss_mb: float
    code: int
    stdout: str
    stderr: str


def _tree_rss_kb(root: int) -> int:
    """Sum of VmRSS over `root` and its descendants (one /proc scan)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) < root:  # descendants have higher pids (barring wrap)
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        parents[pid] = int(fields[1])
        rss[pid] = int(fields[21]) * PAGE_KB
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return sum(rss.get(p, 0) for p in tree)


class _Poller(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak_kb = max(self.peak_kb, _tree_rss_kb(self.pid))


def timed(cmd: list[str], env: dict[str, str] | None = None, discard_stdout: bool = False) -> Sample:
    """Run `cmd` to completion: wall seconds, peak RSS (MB) and its output (stdout to /dev/null if asked)."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as maxrss,
    ):
        start = time.perf_counter()
        proc = subprocess.Popen(
            [TIME, "-f", "%M", "-o", maxrss.name, *cmd],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL if discard_stdout else out,
            stderr=err,
        )
        poller = _Poller(proc.pid)
        poller.start()
        _, status, _ = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        poller.done.set()
        poller.join()
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        child_kb = int(maxrss.read().strip().splitlines()[-1] or 0)
        rss_mb = max(child_kb, poller.peak_kb) / 1024
        return Sample(wall, rss_mb, code, _read(out), _read(err))


def _read(f: Any) -> str:
    f.seek(0)
    return str(f.read().decode(errors="replace"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _s3_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def moto_server(given: str | None) -> Iterator[str]:
    """A moto S3 server on a free loopback port (or the endpoint given), stopped on exit."""
    if given:
        yield given
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not _s3_up(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"moto server did not start on {url}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_KEY,
        region_name="us-east-1",
    )


def ensure_bucket(endpoint: str, bucket: str) -> None:
    s3 = s3_client(endpoint)
    if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=bucket)


@dataclass(frozen=True)
class Staged:
    """What a contender wrote under its prefix: Parquet bytes, data rows (footers), object count."""

    parquet_bytes: int
    rows: int
    files: int


def _keys(s3: Any, bucket: str, prefix: str) -> list[tuple[str, int]]:
    keys: list[tuple[str, int]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend((o["Key"], int(o["Size"])) for o in page.get("Contents", []))
    return keys


def _footer_rows(s3: Any, bucket: str, key: str, size: int) -> int | None:
    """Rows in the Parquet file at `key` (from its footer), None when it is not Parquet."""
    tail = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={max(0, size - 65536)}-")["Body"].read()
    if size < 12 or tail[-4:] != b"PAR1":
        return None
    meta_len = int.from_bytes(tail[-8:-4], "little")
    if meta_len + 8 > len(tail):  # a large footer: read the whole thing
        tail = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={size - meta_len - 8}-")["Body"].read()
    footer = pa.BufferReader(b"PAR1" + tail[-(meta_len + 8) :])
    return int(pq.ParquetFile(footer).metadata.num_rows)


def staged(endpoint: str, bucket: str, prefix: str, delete: bool = True) -> Staged:
    """Parquet under `prefix`: bytes, and rows of data tables (dlt's `_dlt_*` bookkeeping excluded)."""
    s3 = s3_client(endpoint)
    keys = _keys(s3, bucket, prefix)
    footers = {k: (n, _footer_rows(s3, bucket, k, n)) for k, n in keys if not k.endswith(".json")}
    parquet = [(k, n) for k, (n, rows) in footers.items() if rows is not None]
    rows = sum(r or 0 for k, (_, r) in footers.items() if "/_dlt_" not in k)
    if delete:
        for i in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k, _ in keys[i : i + 1000]]
            s3.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
    return Staged(sum(n for _, n in parquet), rows, len(parquet))
