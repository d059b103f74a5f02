"""The contenders: how each is installed, invoked and checked, on one workload.

Every contender writes Parquet to the same moto S3 server under its own prefix
(`<workload>/<contender>/r<n>/`) and reads the same MySQL tables. A run counts only when its own report
and the Parquet footers in S3 both show exactly the workload's rows (the ceiling: exit code only).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.data import Workload
from benchmarks.measure import AWS_ENV, ROOT, Sample

ALL = ("s3shift", "dlt-cx", "dlt-pa", "sling", "naive", "ceiling", "cx-floor")
WRITES_NOTHING = ("ceiling", "cx-floor")  # diagnostics: no Parquet to count on S3
PEER_PACKAGES = [
    "dlt[filesystem,parquet,s3]==1.30.0",
    "connectorx==0.4.6",
    "sqlalchemy",
    "pymysql",
    "sling-linux-amd64==1.4.11",
    "py-spy",
]
PEERS_VENV = ROOT / "benchmarks" / ".venv-peers"
TO_S3_ONLY = ("dlt-cx", "dlt-pa", "sling")  # peers are compared on the MySQL -> S3 Parquet stage


@dataclass(frozen=True)
class Env:
    """Where everything is: services, the S3 bucket, the generated s3shift config, the peers' venv."""

    endpoint: str
    bucket: str
    config_dir: Path
    peers_venv: Path
    mysql_host: str = "127.0.0.1"
    mysql_port: int = 3306
    pg_schema_prefix: str = "s3shift_bench"


@dataclass(frozen=True)
class Invocation:
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    discard_stdout: bool = False
    # Checks the run; returns the rows the contender reported and its phases (s3shift), or raises.
    check: Callable[[Sample], tuple[int, dict[str, float]]] = lambda s: (0, {})


class NotRun(Exception):
    """The contender cannot run here (not installed, not applicable): reported in the table."""


def ensure_peers(venv: Path, install: bool) -> str:
    """Create the peers' venv and install the peers when missing; '' when fine, else the error."""
    python = venv / "bin" / "python"
    if not python.exists():
        if not install:
            return f"peers venv {venv} missing (run without --no-install)"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    (venv / ".gitignore").write_text("*\n")  # keeps git and ruff out of it (as Python 3.13's venv does)
    probe = subprocess.run(
        [str(python), "-c", "import dlt, connectorx, sling_linux_amd64"], capture_output=True
    )
    if probe.returncode == 0 or not install:
        return "" if probe.returncode == 0 else probe.stderr.decode()[-300:]
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], capture_output=True)
    return "" if pip.returncode == 0 else "pip install failed: " + pip.stderr.decode()[-300:]


def _probe(env: Env, code: str) -> str:
    python = env.peers_venv / "bin" / "python"
    if not python.exists():
        return f"peers venv {env.peers_venv} missing"
    probe = subprocess.run([str(python), "-c", code], capture_output=True)
    return probe.stderr.decode().strip().splitlines()[-1] if probe.returncode else ""


def _ends(text: str) -> str:
    """The head (where Python names the exception) and tail of an error output."""
    text = text.strip()
    return text if len(text) <= 800 else f"{text[:400]} ... {text[-400:]}"


def _rows_json(sample: Sample) -> tuple[int, dict[str, float]]:
    if sample.code != 0:
        raise RuntimeError(f"exit {sample.code}: {_ends(sample.stderr)}")
    return int(json.loads(sample.stdout.strip().splitlines()[-1])["rows"]), {}


def _s3shift_check(w: Workload) -> Callable[[Sample], tuple[int, dict[str, float]]]:
    def check(sample: Sample) -> tuple[int, dict[str, float]]:
        doc = json.loads(sample.stdout)
        if doc["status"] != "success" or sample.code != 0:
            bad = {
                t: r.get("error_message") for t, r in doc["table_results"].items() if r["status"] != "success"
            }
            raise RuntimeError(f"s3shift status {doc['status']}: {str(bad)[:400]}")
        results = doc["table_results"].values()
        phases: dict[str, float] = {}
        for r in results:
            if w.end_to_end and r["rows_loaded"] != r["rows_processed"]:
                raise RuntimeError(f"rows_loaded {r['rows_loaded']} != rows_processed {r['rows_processed']}")
            for name, secs in r.get("phases", {}).items():
                phases[name] = phases.get(name, 0.0) + float(secs)
        return sum(int(r["rows_processed"]) for r in results), phases

    return check


def s3shift(w: Workload, env: Env, prefix: str) -> Invocation:
    cmd = [sys.executable, "-m", "src.cli.main", "--config-dir", str(env.config_dir), "sync", "-p", "bench"]
    cmd += ["-t", ",".join(w.qualified()), "--json-output"]
    if not w.end_to_end:
        cmd.append("--backup-only")
    extra = {"BENCH_PREFIX": prefix, "BENCH_PG_SCHEMA": f"{env.pg_schema_prefix}_{w.name.lower()}"}
    return Invocation(cmd, {**AWS_ENV, **extra}, check=_s3shift_check(w))


def naive(w: Workload, env: Env, prefix: str) -> Invocation:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "naive.py"), "--database", w.database]
    cmd += ["--tables", ",".join(w.tables), "--bucket", env.bucket, "--prefix", prefix]
    cmd += ["--endpoint", env.endpoint, "--host", env.mysql_host, "--port", str(env.mysql_port)]
    return Invocation(cmd, AWS_ENV, check=_rows_json)


def ceiling(w: Workload, env: Env, prefix: str) -> Invocation:
    sql = "; ".join(f"SELECT * FROM `{t}`" for t in w.tables)
    cmd = ["mariadb", "--quick", "-B", f"-h{env.mysql_host}", f"-P{env.mysql_port}", "-uroot", w.database]

    def check(sample: Sample) -> tuple[int, dict[str, float]]:
        if sample.code != 0:
            raise RuntimeError(f"mariadb exit {sample.code}: {sample.stderr[-300:]}")
        return w.rows, {}

    return Invocation([*cmd, "-e", sql], discard_stdout=True, check=check)


def cx_floor(w: Workload, env: Env, prefix: str) -> Invocation:
    """The read alone, as s3shift's fast path does it (``benchmarks/cx_floor.py``): a bound, not a peer."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "cx_floor.py"), "--database", w.database]
    cmd += ["--tables", ",".join(w.tables), "--host", env.mysql_host, "--port", str(env.mysql_port)]
    return Invocation(cmd, check=_rows_json)


def dlt(backend: str) -> Callable[[Workload, Env, str], Invocation]:
    def build(w: Workload, env: Env, prefix: str) -> Invocation:
        if err := _probe(env, f"import dlt{', connectorx' if backend == 'connectorx' else ''}"):
            raise NotRun(err)
        python = str(env.peers_venv / "bin" / "python")
        dsn = f"mysql+pymysql://root@{env.mysql_host}:{env.mysql_port}/{w.database}"
        cmd = [python, str(ROOT / "benchmarks" / "peer_dlt.py"), "--backend", backend, "--mysql", dsn]
        cmd += ["--tables", ",".join(w.tables), "--bucket-url", f"s3://{env.bucket}/{prefix.rstrip('/')}"]
        return Invocation([*cmd, "--endpoint", env.endpoint], AWS_ENV, check=_rows_json)

    return build


def sling_binary(env: Env) -> Path:
    site = next((env.peers_venv / "lib").glob("python3*/site-packages"), None)
    binary = site / "sling_linux_amd64" / "bin" / "sling-linux-amd64" if site else None
    if binary is None or not binary.exists():
        raise NotRun(f"sling-linux-amd64 not installed in {env.peers_venv}")
    return binary


def sling(w: Workload, env: Env, prefix: str) -> Invocation:
    binary = sling_binary(env)
    s3 = {"type": "s3", "bucket": env.bucket, "access_key_id": "testing", "secret_access_key": "testing"}
    s3 |= {"endpoint": env.endpoint, "region": "us-east-1"}
    replication = {
        "source": "BENCH_MYSQL",
        "target": "BENCH_S3",
        "defaults": {
            "mode": "full-refresh",
            "object": f"{prefix}{{stream_table}}/",
            "target_options": {"format": "parquet"},
        },
        "streams": {f"{w.database}.{t}": {} for t in w.tables},
    }
    path = env.config_dir / f"sling-{w.name}.json"  # JSON is YAML
    path.write_text(json.dumps(replication))
    extra = {
        "BENCH_MYSQL": f"mysql://root@{env.mysql_host}:{env.mysql_port}/{w.database}",
        "BENCH_S3": json.dumps(s3),
        "SLING_DUCKDB_COMPUTE": "false",
        "SLING_DISABLE_TELEMETRY": "true",
        "SLING_HOME_DIR": str(env.config_dir / "sling-home"),
    }

    def check(sample: Sample) -> tuple[int, dict[str, float]]:
        if sample.code != 0:
            raise RuntimeError(f"sling exit {sample.code}: {_ends(sample.stderr + sample.stdout)}")
        return w.rows, {}  # sling's own count is checked against the Parquet footers by the caller

    return Invocation([str(binary), "run", "-r", str(path)], {**AWS_ENV, **extra}, check=check)


BUILDERS: dict[str, Callable[[Workload, Env, str], Invocation]] = {
    "s3shift": s3shift,
    "dlt-cx": dlt("connectorx"),
    "dlt-pa": dlt("pyarrow"),
    "sling": sling,
    "naive": naive,
    "ceiling": ceiling,
    "cx-floor": cx_floor,
}


def invocation(name: str, w: Workload, env: Env, prefix: str) -> Invocation:
    if name in TO_S3_ONLY and w.end_to_end and w.name == "W2":
        raise NotRun("peers are compared on MySQL -> S3 Parquet only (W1/W3/W4/W5)")
    return BUILDERS[name](w, env, prefix)


def write_s3shift_config(env: Env) -> None:
    """connections.yml + pipelines/bench.yml; the S3 prefix and PG schema come from the environment."""
    (env.config_dir / "pipelines").mkdir(parents=True, exist_ok=True)
    conns = {
        "connections": {
            "sources": {"bench": {"host": env.mysql_host, "port": env.mysql_port, "username": "root"}},
            "targets": {
                "pg": {
                    "type": "postgres",
                    "host": "127.0.0.1",
                    "port": 5432,
                    "username": "postgres",
                    "database": "test",
                    "schema": "${BENCH_PG_SCHEMA}",
                }
            },
            "s3": {
                "stage": {"bucket": env.bucket, "prefix": "${BENCH_PREFIX}", "endpoint_url": env.endpoint}
            },
        }
    }
    pipe = {
        "pipeline": {"name": "bench", "source": "bench", "target": "pg", "s3_config": "stage"},
        "tables": {},
    }
    (env.config_dir / "connections.yml").write_text(json.dumps(conns))
    (env.config_dir / "pipelines" / "bench.yml").write_text(json.dumps(pipe))
