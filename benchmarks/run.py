"""s3shift against its peers on the same data, the same S3 server and the same PostgreSQL, in one run.

    .venv/bin/python -m benchmarks.run [--workloads W1,W2,W4] [--rows-scale 1.0] [--repeat 3]
        [--contenders s3shift,dlt-cx,dlt-pa,sling,naive,ceiling] [--w4-tables 1000] [--json-out FILE]

Contenders alternate (the order rotates each repeat); figures are medians over --repeat. See
benchmarks/README.md for the workloads, the measurement and the targets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import contenders as c
from benchmarks.data import Workload, drop, drop_pg_schemas, prepare, workloads
from benchmarks.measure import ROOT, Sample, ensure_bucket, moto_server, staged, timed
from benchmarks.report import print_report


@dataclass
class Outcome:
    """One contender on one workload: its samples, or why it did not run."""

    contender: str
    workload: str
    rows: int
    walls: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    mbytes: list[float] = field(default_factory=list)
    phases: list[dict[str, float]] = field(default_factory=list)
    not_run: str = ""

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall

    @property
    def mb_per_s(self) -> float:
        return statistics.median(self.mbytes) / self.wall if self.mbytes else 0.0

    @property
    def peak_rss(self) -> float:
        return max(self.rss_mb)

    @property
    def ok(self) -> bool:
        return not self.not_run and bool(self.walls)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="W1,W2,W4", help="comma list of W1..W5 (default W1,W2,W4)")
    ap.add_argument("--rows-scale", type=float, default=1.0, help="multiplies W1/W2/W3/W5 row counts")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--contenders", default=",".join(c.ALL))
    ap.add_argument("--w4-tables", type=int, default=1000)
    ap.add_argument("--w4-rows", type=int, default=1000)
    ap.add_argument("--db-prefix", default="s3shift_bench", help="MySQL databases / PG schemas prefix")
    ap.add_argument("--s3-endpoint", default=None, help="use this S3 server instead of starting moto")
    ap.add_argument("--peers-venv", type=Path, default=c.PEERS_VENV)
    ap.add_argument("--no-install", action="store_true", help="never create/install the peers' venv")
    ap.add_argument("--drop-data", action="store_true", help="drop the generated MySQL databases at the end")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the raw results as JSON")
    return ap.parse_args(argv)


def run_once(name: str, w: Workload, env: c.Env, outcome: Outcome, rep: int) -> None:
    """One run of one contender; a failure marks it not run (with the error), never a figure."""
    prefix = f"{w.name}/{name}/r{rep}/"
    try:
        inv = c.invocation(name, w, env, prefix)
        sample: Sample = timed(inv.cmd, inv.env, inv.discard_stdout)
        rows, phases = inv.check(sample)
        if rows != w.rows:
            raise RuntimeError(f"reported {rows} rows, expected {w.rows}")
        on_s3 = staged(env.endpoint, env.bucket, prefix)
        if name not in c.WRITES_NOTHING and on_s3.rows != w.rows:
            raise RuntimeError(f"{on_s3.rows} rows in Parquet on S3 ({on_s3.files} files), expected {w.rows}")
    except c.NotRun as exc:
        outcome.not_run = str(exc)
        return
    except Exception as exc:
        text = " ".join(f"{type(exc).__name__}: {exc}".split()).replace("|", "/")
        outcome.not_run = "failed: " + (text if len(text) <= 600 else f"{text[:300]} ... {text[-300:]}")
        return
    outcome.walls.append(sample.wall)
    outcome.rss_mb.append(sample.rss_mb)
    outcome.mbytes.append(on_s3.parquet_bytes / 1e6)
    outcome.phases.append(phases)
    print(f"  {w.name} {name:8} r{rep}: {sample.wall:7.2f} s {sample.rss_mb:7.0f} MB", file=sys.stderr)


def run_workload(w: Workload, names: list[str], env: c.Env, repeat: int) -> list[Outcome]:
    outcomes = {n: Outcome(n, w.name, w.rows) for n in names}
    for rep in range(repeat):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: alternate contenders
        for name in order:
            if not outcomes[name].not_run:
                run_once(name, w, env, outcomes[name], rep)
    return list(outcomes.values())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    if unknown := set(names) - set(c.ALL):
        raise SystemExit(f"unknown contenders {sorted(unknown)}; known: {', '.join(c.ALL)}")
    all_w = workloads(args.db_prefix, args.rows_scale, args.w4_tables, args.w4_rows)
    chosen = [all_w[n.strip().upper()] for n in args.workloads.split(",")]
    # s3shift's own modules compiled as pip compiles the peers' (PYTHONDONTWRITEBYTECODE would else
    # make every run compile them again)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "src")], check=False, capture_output=True
    )
    peer_error = ""
    if set(names) & set(c.TO_S3_ONLY):
        peer_error = c.ensure_peers(args.peers_venv, install=not args.no_install)
    results: list[Outcome] = []
    with (
        moto_server(args.s3_endpoint) as endpoint,
        tempfile.TemporaryDirectory(prefix="s3shift-bench-") as tmp,
    ):
        env = c.Env(endpoint, "s3shift-bench", Path(tmp), args.peers_venv, pg_schema_prefix=args.db_prefix)
        ensure_bucket(endpoint, env.bucket)
        c.write_s3shift_config(env)
        for w in chosen:
            print(f"{w.name}: preparing {w.rows:,} rows in {w.database}", file=sys.stderr)
            prepare(w, env.mysql_host, env.mysql_port, "root", "")
            outcomes = run_workload(w, names, env, args.repeat)
            for o in outcomes:
                if peer_error and o.contender in c.TO_S3_ONLY and (not o.ok or o.not_run):
                    o.not_run = o.not_run or peer_error
            results.extend(outcomes)
    if args.drop_data:
        drop(sorted({w.database for w in chosen}), env.mysql_host, env.mysql_port, "root", "")
        drop_pg_schemas([f"{args.db_prefix}_{w.name.lower()}" for w in chosen if w.end_to_end])
    print_report(results, args)
    if args.json_out:
        doc = [{**asdict(o), "wall": o.wall if o.ok else None} for o in results]
        args.json_out.write_text(json.dumps({"args": vars(args), "results": doc}, default=str, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
