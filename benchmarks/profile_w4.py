"""Where a workload's time goes (W4 by default, ``--workload W1`` for another): CPU seconds per process
(s3shift, moto, PostgreSQL, MariaDB) around one s3shift run, and optionally a py-spy profile of the
s3shift process.

    .venv/bin/python -m benchmarks.profile_w4 --w4-tables 200 --runs 2 [--py-spy /tmp/w4.txt]

Every run is measured (the first one also creates the PostgreSQL targets; later ones find them). CPU is
read from /proc: our process tree from wait4's rusage; moto, MariaDB and the PostgreSQL postmaster (its
reaped backends included, via cutime/cstime) from their stat lines, before and after. Other work on the
machine (another engineer's tests) lands in the PostgreSQL/MariaDB figures: compare runs made side by
side. ``--py-spy``: ``py-spy record --format raw`` (collapsed stacks) of the s3shift process, with the
top functions by self and inclusive time printed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import contenders as c
from benchmarks.data import prepare, workloads
from benchmarks.measure import Sample, ensure_bucket, moto_server, staged

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def find_pids(moto_port: str) -> dict[str, int]:
    """moto (by its port), the PostgreSQL postmaster, and the MariaDB server."""
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        comm = _comm(pid)
        if comm in ("mariadbd", "mysqld"):
            found["mariadb"] = pid
        elif comm == "postgres" or comm == "postmaster":
            stat = _stat(pid)
            if stat and _comm(int(stat[1])) not in ("postgres", "postmaster"):
                found["postgres"] = pid
        elif "moto.server" in _cmdline(pid) and f"-p {moto_port}" in _cmdline(pid):
            found["moto"] = pid
    return found


def cpu_seconds(pid: int, *, children: bool) -> float:
    """utime + stime (+ reaped children's) of ``pid`` in seconds; for PostgreSQL also its live backends."""
    stat = _stat(pid)
    if stat is None:
        return 0.0
    ticks = int(stat[11]) + int(stat[12])
    if children:
        ticks += int(stat[13]) + int(stat[14])
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (kid := _stat(int(entry))) and int(kid[1]) == pid:
                ticks += int(kid[11]) + int(kid[12])  # live backends: not yet in cutime
    return ticks / TICK


def machine_busy() -> float:
    """CPU seconds the whole machine spent not idle (all cores)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK


def summarize_raw(path: Path, top: int = 25) -> None:
    """Self and inclusive sample shares by function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [
            f.split(" (")[0] + " " + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
            for f in stack.split(";")
        ]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"py-spy: {total} samples")
    print("self:")
    for name, n in own.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("inclusive:")
    for name, n in incl.most_common(top * 2):
        print(f"  {100 * n / total:5.1f}%  {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="W4", help="W1..W5 (default W4)")
    ap.add_argument("--rows-scale", type=float, default=1.0)
    ap.add_argument("--w4-tables", type=int, default=200)
    ap.add_argument("--w4-rows", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--db-prefix", default="s3shift_bench")
    ap.add_argument("--py-spy", type=Path, default=None, help="write py-spy's collapsed stacks here")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    args = ap.parse_args()
    w = workloads(args.db_prefix, args.rows_scale, args.w4_tables, args.w4_rows)[args.workload]
    with moto_server(None) as endpoint, tempfile.TemporaryDirectory(prefix="s3shift-prof-") as tmp:
        env = c.Env(endpoint, "s3shift-bench", Path(tmp), c.PEERS_VENV, pg_schema_prefix=args.db_prefix)
        ensure_bucket(endpoint, env.bucket)
        c.write_s3shift_config(env)
        prepare(w, env.mysql_host, env.mysql_port, "root", "")
        pids = find_pids(endpoint.rsplit(":", 1)[1])
        print(f"pids: {pids}", file=sys.stderr)
        for run in range(args.runs):
            inv = c.s3shift(w, env, f"{w.name}/prof/r{run}/")
            cmd = inv.cmd
            spy = args.py_spy is not None and run == args.runs - 1
            if spy:
                pyspy = str(env.peers_venv / "bin" / "py-spy")
                cmd = [
                    pyspy,
                    "record",
                    "--subprocesses",  # worker processes too (processing.processes)
                    "--format",
                    "raw",
                    "-r",
                    str(args.rate),
                    "-o",
                    str(args.py_spy),
                    "--",
                    *cmd,
                ]
            before = {name: cpu_seconds(pid, children=name == "postgres") for name, pid in pids.items()}
            busy0 = machine_busy()
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env={**os.environ, **inv.env}, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            busy = machine_busy() - busy0
            after = {name: cpu_seconds(pid, children=name == "postgres") for name, pid in pids.items()}
            ours = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
            rows, phases = (0, {}) if proc.returncode else inv.check(_sample(proc, wall))
            staged(endpoint, env.bucket, f"{w.name}/prof/r{run}/")
            per = {name: after[name] - before[name] for name in pids}
            parts = "  ".join(f"{k} {v:5.2f}" for k, v in {"s3shift": ours, **per}.items())
            label = f"run {run}{' (py-spy)' if spy else ''}"
            print(
                f"{label}: wall {wall:.2f} s, rows {rows}, exit {proc.returncode}; "
                f"CPU s: {parts}; machine busy {busy:.2f} of {2 * wall:.2f}"
            )
            if proc.returncode:
                print(proc.stderr[-2000:])
            if phases:
                print("  phases (sum over tables): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
        if args.py_spy is not None and args.py_spy.exists():
            summarize_raw(args.py_spy)
    return 0


def _sample(proc: subprocess.CompletedProcess[str], wall: float) -> Sample:
    start = proc.stdout.find("{")  # py-spy prints lines of its own before and after the report
    doc, _ = json.JSONDecoder().raw_decode(proc.stdout[start:]) if start >= 0 else ({}, 0)
    out = json.dumps(doc) if start >= 0 else proc.stdout
    return Sample(wall, 0.0, proc.returncode, out, proc.stderr)


if __name__ == "__main__":
    sys.exit(main())
