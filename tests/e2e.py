"""End-to-end test helpers: write a config dir for the test's services, run the real CLI, compare data."""

from __future__ import annotations

import json
import math
import os
import re
import struct
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import ROOT, mysql_rows, pg_fetch

PASSWORD_ENV = "S3SHIFT_TEST_SECRET_PW"


def write_config(
    directory: Path,
    source: SourceConn,
    target: TargetConn,
    s3: S3Conn,
    tables: dict[str, dict[str, Any]] | None = None,
    *,
    pipeline: str = "p",
    processing: dict[str, Any] | None = None,
) -> Path:
    """A config dir in the DESIGN.md format; passwords and S3 keys only through ${VAR} references."""
    (directory / "pipelines").mkdir(parents=True, exist_ok=True)
    conns = {
        "connections": {
            "sources": {
                "src": {
                    "host": source.host,
                    "port": source.port,
                    "username": source.username,
                    "password": f"${{{PASSWORD_ENV}:-}}",
                    "database": source.database,
                    "max_connections": source.max_connections,
                    "driver": source.driver,
                    "ssl_mode": source.ssl_mode,
                    "read_timeout": source.read_timeout,
                    **({"ssl_ca": source.ssl_ca} if source.ssl_ca else {}),
                }
            },
            "targets": {
                "tgt": {
                    "type": target.type,
                    "host": target.host,
                    "port": target.port,
                    "username": target.username,
                    "database": target.database,
                    "schema": target.schema,
                    "lock_timeout": target.lock_timeout,
                    "connect_timeout": target.connect_timeout,
                    "read_timeout": target.read_timeout,
                    "ssl": target.ssl,
                    **({"ssl_ca": target.ssl_ca} if target.ssl_ca else {}),
                    **({"iam_role": target.iam_role} if target.iam_role else {}),
                }
            },
            "s3": {
                "stage": {
                    "bucket": s3.bucket,
                    "prefix": s3.prefix,
                    "region": s3.region,
                    "endpoint_url": s3.endpoint_url,
                    "part_size_mb": s3.part_size_mb,
                    "max_attempts": s3.max_attempts,
                    **({"sse": s3.sse} if s3.sse else {}),
                    **({"sse_kms_key_id": s3.sse_kms_key_id} if s3.sse_kms_key_id else {}),
                }
            },
        }
    }
    pipe = {
        "pipeline": {
            "name": pipeline,
            "source": "src",
            "target": "tgt",
            "s3_config": "stage",
            "processing": processing or {"max_parallel_tables": 4, "batch_size": 1000},
        },
        "tables": tables or {},
    }
    # JSON is valid YAML: no YAML writer needed.
    (directory / "connections.yml").write_text(json.dumps(conns, indent=1))
    (directory / "pipelines" / f"{pipeline}.yml").write_text(json.dumps(pipe, indent=1))
    return directory


CLI = (sys.executable, "-m", "src.cli.main")
REDSHIFT_ROLE = "arn:aws:iam::123456789012:role/s3shift-copy"


def as_redshift(pg_target: TargetConn, s3_endpoint: str) -> tuple[TargetConn, tuple[str, ...]]:
    """The same database as a Redshift target served by the emulation harness, and the real CLI in its
    own process with only the Redshift connection factory swapped (tests/redshift_cli.py)."""
    target = replace(pg_target, name="rs", type="redshift", iam_role=REDSHIFT_ROLE)
    return target, (sys.executable, str(ROOT / "tests" / "redshift_cli.py"), s3_endpoint)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180, cli: tuple[str, ...] = CLI
) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process (``cli`` swaps in tests/redshift_cli.py for the emulator)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*cli, *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_json(
    *args: str, env: dict[str, str] | None = None, cli: tuple[str, ...] = CLI
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    proc = run_cli(*args, "--json-output", env=env, cli=cli)
    assert proc.returncode != 2, proc.stderr
    try:
        doc = json.loads(proc.stdout)  # stdout is exactly one JSON document, nothing else
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"stdout is not one JSON document: {exc}\nstdout={proc.stdout!r}\nstderr={proc.stderr}"
        ) from None
    return doc, proc


def f32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def norm(value: Any) -> Any:
    """A comparable form of a value from either engine."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, Decimal):
        return value.normalize() if value == value.to_integral_value() else value
    return value


def assert_tables_equal(
    database: str,
    table: str,
    schema: str,
    target: str,
    key: str | tuple[str, ...],
    *,
    json_cols: tuple[str, ...] = (),
    float32_cols: tuple[str, ...] = (),
) -> int:
    """Every row and every value of the MySQL table equals the target table's. FLOAT columns are read as
    a DOUBLE (``* 1e0``): the text protocol prints them with only 6 significant digits."""
    cols = [
        r[0]
        for r in mysql_rows(
            database,
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s ORDER BY ORDINAL_POSITION",
            (database, table),
        )
    ]
    items = ", ".join(f"`{c}` * 1e0" if c in float32_cols else f"`{c}`" for c in cols)
    keys = (key,) if isinstance(key, str) else key
    src = mysql_rows(database, f"SELECT {items} FROM `{table}` ORDER BY {', '.join(f'`{k}`' for k in keys)}")
    collist = ", ".join(f'"{c}"' for c in cols)
    order = ", ".join(f'"{k}"' for k in keys)
    dst = pg_fetch(f'SELECT {collist} FROM "{schema}"."{target}" ORDER BY {order}')
    assert len(src) == len(dst), f"{table}: {len(src)} source rows, {len(dst)} target rows"
    at = [cols.index(k) for k in keys]  # the engines' collations order text keys apart: Python's order
    src = sorted(src, key=lambda row: [row[i] for i in at])
    dst = sorted(dst, key=lambda row: [row[i] for i in at])
    for srow, record in zip(src, dst, strict=True):
        drow = tuple(record)
        if srow == drow:  # equal as read: equal below too (norm, json and float32 only widen equality)
            continue
        for col, s, d in zip(cols, srow, drow, strict=True):
            if col in json_cols and s is not None:
                assert json.loads(s) == json.loads(d), (table, col, s, d)
            elif col in float32_cols and s is not None:
                assert f32(s) == f32(d), (table, col, s, d)
            else:
                assert norm(s) == norm(d), (table, col, srow[0], s, d)
    return len(src)


TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00")
PHASES = {"config", "plan", "connect", "state", "cleanup", "introspect", "extract", "load"}
PHASES |= {"s3", "interrupted", "worker", "internal", "usage"}


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_contract(doc: dict[str, Any], tables: list[str], pipeline: str = "p") -> None:
    """Every rule of spec/json-output-format.md, for any report (and the README's added keys)."""
    assert list(doc) == [
        "execution_id",
        "start_time",
        "pipeline",
        "tables_requested",
        "total_tables",
        "table_results",
        "status",
        "end_time",
        "duration_seconds",
        "summary",
    ]
    m = re.fullmatch(r"sync_(\d{8})_(\d{6})_([0-9a-f]{8})", doc["execution_id"])
    assert m, doc["execution_id"]
    for stamp in (doc["start_time"], doc["end_time"]):
        assert TIMESTAMP.fullmatch(stamp), stamp
    start, end = datetime.fromisoformat(doc["start_time"]), datetime.fromisoformat(doc["end_time"])
    assert (m.group(1), m.group(2)) == (start.strftime("%Y%m%d"), start.strftime("%H%M%S"))
    assert doc["pipeline"] == pipeline
    assert doc["tables_requested"] == tables and doc["total_tables"] == len(tables)
    assert list(doc["table_results"]) == tables
    assert isinstance(doc["duration_seconds"], float) and doc["duration_seconds"] >= 0
    assert abs((end - start).total_seconds() - doc["duration_seconds"]) < 2e-6
    ok = [r for r in doc["table_results"].values() if r["status"] == "success"]
    bad = [r for r in doc["table_results"].values() if r["status"] == "failed"]
    assert len(ok) + len(bad) == len(tables)
    for r in ok:
        assert list(r)[:5] == [
            "status",
            "rows_processed",
            "files_created",
            "duration_seconds",
            "completed_at",
        ]
        assert _count(r["rows_processed"]) and _count(r["files_created"]), r
        assert isinstance(r["duration_seconds"], float) and r["duration_seconds"] >= 0, r
        assert not {"error_message", "failed_at", "phase", "retryable"} & set(r)
        assert TIMESTAMP.fullmatch(r["completed_at"]), r["completed_at"]
    for r in bad:
        assert list(r)[:3] == ["status", "error_message", "failed_at"], r
        assert isinstance(r["error_message"], str) and r["error_message"].strip()
        assert "\n" not in r["error_message"] and "Traceback" not in r["error_message"], r
        assert not {"rows_processed", "files_created", "completed_at", "duration_seconds"} & set(r)
        assert TIMESTAMP.fullmatch(r["failed_at"]), r["failed_at"]
        assert r["phase"] in PHASES and isinstance(r["retryable"], bool), r  # on every failure
    expected = "success" if not bad else ("failed" if not ok else "partial_success")
    assert doc["status"] == expected
    assert doc["summary"] == {
        "success_count": len(ok),
        "failure_count": len(bad),
        "total_rows_processed": sum(r["rows_processed"] for r in ok),
        "total_files_created": sum(r["files_created"] for r in ok),
    }


def failures(doc: dict[str, Any]) -> dict[str, str]:
    """The failed tables of a report and their messages (an assertion's explanation)."""
    return {t: r["error_message"] for t, r in doc["table_results"].items() if r["status"] != "success"}
