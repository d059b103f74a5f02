"""Smoke test of the benchmark harness on a tiny row count (not a timed test: no figure is asserted).

It runs `python -m benchmarks.run` as users do, against the real MariaDB, PostgreSQL and the moto server
of the session, and checks that every contender that can run here produced a row, that a peer that
cannot run is reported as such (never dropped), and that the targets section is printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import ROOT


def _run(
    tmp_path: Path, s3_endpoint: str, *extra: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "results.json"
    prefix = f"s3shift_bsmoke_{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "benchmarks.run", "--rows-scale", "0.0005", "--repeat", "1"]
    cmd += ["--w4-tables", "3", "--w4-rows", "50", "--db-prefix", prefix, "--drop-data"]
    cmd += ["--s3-endpoint", s3_endpoint, "--json-out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


def test_harness_runs_s3shift_naive_ceiling_end_to_end(tmp_path: Path, s3_endpoint: str) -> None:
    contenders = "s3shift,naive,ceiling,cx-floor"
    proc, doc = _run(tmp_path, s3_endpoint, "--workloads", "W1,W2,W4", "--contenders", contenders)
    results = {(r["workload"], r["contender"]): r for r in doc["results"]}
    assert set(results) == {(w, c) for w in ("W1", "W2", "W4") for c in contenders.split(",")}
    for (workload, contender), r in results.items():
        assert r["not_run"] == "", (workload, contender, r["not_run"])
        assert len(r["walls"]) == 1 and r["walls"][0] > 0
        assert r["rss_mb"][0] > 1
        if contender not in ("ceiling", "cx-floor"):
            assert r["mbytes"][0] > 0  # Parquet it wrote, listed in S3
    assert results[("W1", "s3shift")]["rows"] == 1000
    assert results[("W4", "s3shift")]["rows"] == 150
    assert "load" in results[("W2", "s3shift")]["phases"][0]
    assert "### Targets" in proc.stdout and "| W2 rows/s >= 0.5x W1 |" in proc.stdout


def test_a_peer_that_cannot_run_is_reported(tmp_path: Path, s3_endpoint: str) -> None:
    missing = tmp_path / "no-venv"
    proc, doc = _run(
        tmp_path,
        s3_endpoint,
        *("--workloads", "W1", "--contenders", "sling,dlt-cx,ceiling"),
        *("--peers-venv", str(missing), "--no-install"),
    )
    results = {r["contender"]: r for r in doc["results"]}
    assert results["ceiling"]["not_run"] == ""
    for peer in ("sling", "dlt-cx"):
        assert str(missing) in results[peer]["not_run"], results[peer]
        assert f"| {peer} | not run: " in proc.stdout
    assert "| W1 rows/s >= 2x dlt-cx | - | not measured |" in proc.stdout


def test_targets_print_the_bound_of_the_read_alone() -> None:
    from benchmarks.report import targets
    from benchmarks.run import Outcome

    def outcome(name: str, wall: float) -> Outcome:
        return Outcome(name, "W1", 2_000_000, walls=[wall], rss_mb=[100.0], mbytes=[25.0])

    lines = targets([outcome("s3shift", 2.4), outcome("dlt-cx", 4.0), outcome("cx-floor", 1.6)])
    assert "| W1 rows/s >= 2x dlt-cx | 1.67x | NOT MET |" in lines
    bound = lines[-1]
    assert "takes 1.60 s, 2.50x dlt-cx's rate" in bound and "the whole run in 2.00 s" in bound
    assert not any("bound" in line for line in targets([outcome("s3shift", 2.4), outcome("dlt-cx", 4.0)]))
