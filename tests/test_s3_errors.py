"""S3 answering with an error status while a real `sync` reads back what was staged (the run's scan of
the pipeline, the run markers, a pending stage's manifest, the staged Parquet a load reads): S3
throttling or overloaded (503 SlowDown / ServiceUnavailable) is S3's failure, so the table fails
retryable with the phase ``s3`` and a message naming the S3 request, never as a non-retryable load
error (whose hint would even send the user to ``watermark reset``). The moto server sits behind an HTTP
proxy that answers the chosen requests itself (tests/conftest.py ``ErrorProxy``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import ErrorProxy, mysql_exec, pg_fetch
from tests.e2e import assert_tables_equal, check_contract, failures, run_json, write_config


@pytest.mark.parametrize(
    ("mode", "method", "path", "code"),
    [
        ("--load-only", "GET", "/manifest.json", "SlowDown"),  # a pending stage read back
        ("--load-only", "GET", ".parquet", "ServiceUnavailable"),  # the load's read of the staged file
        ("--load-only", "GET", "list-type=2", "SlowDown"),  # the run's scan of the pipeline
        ("--backup-only", "GET", "/_runs/", "ServiceUnavailable"),  # the run markers
    ],
)
def test_s3_503_reading_back_the_stage_fails_the_table_retryable_in_phase_s3(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_errors: ErrorProxy,
    mysql_db: str,
    pg_schema: str,
    mode: str,
    method: str,
    path: str,
    code: str,
) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))",
        "INSERT INTO t SELECT seq, CONCAT('v', seq) FROM seq_1_to_500",
    )
    table = f"{mysql_db}.t"
    # one try, not 5: what is tested is how the error is classified, not botocore's backoff (2 tries cost
    # 1-2 s more per run)
    through = replace(s3_conn, endpoint_url=s3_errors.url, max_attempts=1)
    cfg = write_config(
        tmp_path / "cfg", source_conn, pg_target, through, {table: {"cdc_strategy": "id_only"}}
    )
    args = ("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    doc, proc = run_json(*args, "--backup-only")  # a pending stage to read back
    assert proc.returncode == 0, failures(doc)

    s3_errors.fail(method, path, 503, code)
    doc, proc = run_json(*args, mode)
    check_contract(doc, [table])
    assert proc.returncode == 1 and s3_errors.failed
    result = doc["table_results"][table]
    assert (result["phase"], result["retryable"]) == ("s3", True), result
    assert result["error_message"].startswith("S3 ") and f"{code} (HTTP 503)" in result["error_message"]
    assert "watermark" not in result["error_message"], result  # no advice to re-read the window
    tables = pg_fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", pg_schema)
    assert not tables or pg_fetch(f'SELECT count(*) AS n FROM "{pg_schema}".t')[0]["n"] == 0

    s3_errors.clear()  # S3 recovered: the rerun loads exactly what was staged
    doc, proc = run_json(*args)
    assert proc.returncode == 0, failures(doc)
    assert assert_tables_equal(mysql_db, "t", pg_schema, "t", "id") == 500
