"""Server-side encryption asked for on every object a run writes (``connections.s3.NAME.sse``): a bucket
policy that refuses uploads without the header is met. moto stores and reports what was asked for; the
run goes through the CLI as users run it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from src.common.errors import ConfigError
from src.config.loader import load_pipeline
from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import mysql_exec, s3_client
from tests.e2e import assert_tables_equal, check_contract, failures, run_json, write_config
from tests.test_stage_support import list_keys

KEY = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"


@pytest.mark.parametrize(("sse", "kms"), [("aws:kms", KEY), ("AES256", None)])
def test_every_object_of_a_run_asks_for_the_configured_encryption(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
    sse: str,
    kms: str | None,
) -> None:
    mysql_exec(
        mysql_db,
        "CREATE TABLE small (id INT PRIMARY KEY, v VARCHAR(20))",
        "INSERT INTO small SELECT seq, CONCAT('v', seq) FROM seq_1_to_100",
        "CREATE TABLE big (id INT PRIMARY KEY, v VARCHAR(200))",
        "INSERT INTO big SELECT seq, CONCAT(SHA2(seq, 512), SHA2(seq, 256)) FROM seq_1_to_60000",
    )
    s3 = replace(s3_conn, part_size_mb=5, sse=sse, sse_kms_key_id=kms)
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3, processing={"batch_size": 5000})
    tables = [f"{mysql_db}.small", f"{mysql_db}.big"]
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", ",".join(tables))

    check_contract(doc, tables)
    assert proc.returncode == 0, failures(doc)
    client = s3_client(str(s3_conn.endpoint_url))
    keys = list_keys(s3_conn, f"{s3_conn.prefix}p/")
    parquet = [k for k in keys if k.endswith(".parquet")]
    assert len(parquet) == 2 and any(k.endswith("manifest.json") for k in keys)
    assert any("/_reports/" in k for k in keys)
    sizes = {k: client.head_object(Bucket=s3_conn.bucket, Key=k)["ContentLength"] for k in parquet}
    assert max(sizes.values()) > 5 * 1024 * 1024  # big's file went up in parts: the multipart path
    for key in keys:
        head = client.head_object(Bucket=s3_conn.bucket, Key=key)
        assert head.get("ServerSideEncryption") == sse, (key, head)
        assert head.get("SSEKMSKeyId") == kms, (key, head)
    assert assert_tables_equal(mysql_db, "big", pg_schema, "big", "id") == 60000


@pytest.mark.parametrize(
    ("settings", "key", "words"),
    [
        ({"sse": "kms"}, "sse", "must be one of AES256, aws:kms, aws:kms:dsse"),
        ({"sse_kms_key_id": KEY}, "sse_kms_key_id", "needs sse: aws:kms"),
        ({"sse": "AES256", "sse_kms_key_id": KEY}, "sse_kms_key_id", "needs sse: aws:kms"),
    ],
)
def test_encryption_settings_are_checked_when_the_config_loads(
    tmp_path: Path, settings: dict[str, str], key: str, words: str
) -> None:
    (tmp_path / "pipelines").mkdir()
    conns = {
        "sources": {"src": {"host": "h"}},
        "targets": {"tgt": {"type": "postgres", "host": "h", "username": "u", "database": "d"}},
        "s3": {"stage": {"bucket": "b", **settings}},
    }
    (tmp_path / "connections.yml").write_text(json.dumps({"connections": conns}))
    pipeline = {"pipeline": {"name": "p", "source": "src", "target": "tgt", "s3_config": "stage"}}
    (tmp_path / "pipelines" / "p.yml").write_text(json.dumps(pipeline))
    with pytest.raises(ConfigError) as caught:
        load_pipeline(tmp_path, "p")
    assert caught.value.key == f"connections.s3.stage.{key}" and words in caught.value.message
    assert "connections.yml" in caught.value.message
