"""The printed report: one Markdown table per workload, the ratios, the targets, the machine."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from benchmarks.contenders import WRITES_NOTHING

if TYPE_CHECKING:
    from benchmarks.run import Outcome


def _first(path: str, prefix: str) -> str:
    with open(path) as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith(prefix)), "?")


def machine() -> str:
    mem_kb = int(_first("/proc/meminfo", "MemTotal").split()[0])
    cpu = _first("/proc/cpuinfo", "model name")
    maria = subprocess.run(["mariadb", "--version"], capture_output=True, text=True).stdout.strip()
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_kb / 1048576:.1f} GiB, {platform.platform()}, "
        f"Python {platform.python_version()}; {maria}"
    )


def _table(outs: list[Outcome]) -> list[str]:
    ceiling = next((o for o in outs if o.contender == "ceiling" and o.ok), None)
    s3shift = next((o for o in outs if o.contender == "s3shift" and o.ok), None)
    lines = [
        "| contender | wall s | rows/s | MB/s | peak RSS MB | x ceiling | s3shift x this |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outs:
        if not o.ok:
            lines.append(f"| {o.contender} | not run: {o.not_run} | | | | | |")
            continue
        xc = f"{o.rows_per_s / ceiling.rows_per_s:.2f}" if ceiling else "-"
        xs = f"{s3shift.rows_per_s / o.rows_per_s:.2f}" if s3shift and o is not s3shift else "-"
        mbs = "-" if o.contender in WRITES_NOTHING else f"{o.mb_per_s:.1f}"
        lines.append(
            f"| {o.contender} | {o.wall:.2f} | {o.rows_per_s:,.0f} | {mbs} | {o.peak_rss:.0f} | {xc} | {xs} |"
        )
    return lines


def _get(results: list[Outcome], workload: str, contender: str) -> Outcome | None:
    return next((o for o in results if o.workload == workload and o.contender == contender and o.ok), None)


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("MET" if ok else "NOT MET")


def targets(results: list[Outcome]) -> list[str]:
    """The issue's targets, each a ratio of figures measured in this run."""

    def rate(workload: str, contender: str) -> float | None:
        o = _get(results, workload, contender)
        return o.rows_per_s if o else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def row(
        name: str, r: float | None, ok: Callable[[float], bool], unit: str = "x"
    ) -> tuple[str, str, bool | None]:
        shown = "-" if r is None else (f"{r:.0f} MB" if unit == "MB" else f"{r:.2f}x")
        return name, shown, None if r is None else ok(r)

    w1, w5 = _get(results, "W1", "s3shift"), _get(results, "W5", "s3shift")
    w4 = _get(results, "W4", "s3shift")
    w4peers = [
        o.wall
        for o in results
        if o.workload == "W4" and o.ok and o.contender in ("dlt-cx", "dlt-pa", "sling")
    ]
    rss = w1.peak_rss if w1 else None
    rows = [
        row("W1 rows/s >= 2x dlt-cx", ratio(rate("W1", "s3shift"), rate("W1", "dlt-cx")), lambda r: r >= 2),
        row(
            "W1 rows/s >= 0.7x ceiling",
            ratio(rate("W1", "s3shift"), rate("W1", "ceiling")),
            lambda r: r >= 0.7,
        ),
        row("W2 rows/s >= 0.5x W1", ratio(rate("W2", "s3shift"), rate("W1", "s3shift")), lambda r: r >= 0.5),
        row("W1 peak RSS <= 300 MB", rss, lambda r: r <= 300, unit="MB"),
        row("W5 RSS within 10% of W1", ratio(w5.peak_rss if w5 else None, rss), lambda r: r <= 1.10),
        row(
            "W4 wall <= 1/3 best peer",
            ratio(w4.wall if w4 else None, min(w4peers, default=None)),
            lambda r: r <= 1 / 3,
        ),
    ]
    out = ["| target | measured | verdict |", "|---|---:|---|"]
    return out + [f"| {name} | {value} | {_verdict(ok)} |" for name, value, ok in rows] + _bound(results)


def _bound(results: list[Outcome]) -> list[str]:
    """What the read alone allows: a pipeline that reads as s3shift does cannot beat dlt-cx by more than
    dlt-cx's wall over the bare read's (cx-floor), whatever its encoding, upload and start-up cost."""
    floor, peer = _get(results, "W1", "cx-floor"), _get(results, "W1", "dlt-cx")
    if not floor or not peer:
        return []
    return [
        "",
        f"W1 bound: the read alone (cx-floor, connectorx key ranges in 3 connections, no Parquet, no S3) "
        f"takes {floor.wall:.2f} s, {peer.wall / floor.wall:.2f}x dlt-cx's rate; 2x dlt-cx means the "
        f"whole run in {peer.wall / 2:.2f} s.",
    ]


def _phases(outs: list[Outcome]) -> str:
    s3 = next((o for o in outs if o.contender == "s3shift" and o.ok and o.phases), None)
    if not s3:
        return ""
    keys = sorted({k for p in s3.phases for k in p})
    med = {k: sorted(p.get(k, 0.0) for p in s3.phases)[len(s3.phases) // 2] for k in keys}
    return "s3shift phases (median, summed over tables): " + ", ".join(
        f"{k} {v:.2f} s" for k, v in med.items()
    )


def print_report(results: list[Outcome], args: argparse.Namespace | Any) -> None:
    out = sys.stdout
    print(f"machine: {machine()}", file=out)
    cmd = " ".join(sys.argv[1:]) if sys.argv[0].endswith("run.py") else ""
    print(f"command: python -m benchmarks.run {cmd}".rstrip(), file=out)
    print(f"repeat={args.repeat} rows-scale={args.rows_scale} (medians; peak RSS = max over runs)", file=out)
    for workload in dict.fromkeys(o.workload for o in results):
        outs = [o for o in results if o.workload == workload]
        print(f"\n### {workload}: {outs[0].rows:,} rows", file=out)
        print("\n".join(_table(outs)), file=out)
        if phases := _phases(outs):
            print(phases, file=out)
    print("\n### Targets (ratios from this run)", file=out)
    print("\n".join(targets(results)), file=out)
