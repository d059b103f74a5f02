"""Black-box checks through the public CLI at the extremes of scale and shape: big values, wide rows,
many tables, long names."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pyarrow as pa
import pytest

from src.config.models import S3Conn, SourceConn, TargetConn
from src.source.extract import BATCH_VALUES, ExtractStats, extract_table
from src.source.introspect import describe_table
from src.source.mysql import MySQLSource
from tests.conftest import mysql_exec, mysql_rows, pg_fetch, s3_client
from tests.e2e import check_contract, run_json, write_config

BIG_ROWS = 24
BIG_CHARS = 1_500_000  # per value: 'é✓' and a number, about 3 MB of UTF-8 (a 16 MB packet holds it)


def _peak_rss_mb(path: Path) -> float:
    return int(path.read_text().split()[-1]) / 1024


def test_big_values_are_read_and_loaded_in_bounded_memory(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """24 rows of about 3 MB text and 1 MB binary each (about 100 MB): batches were sized in rows only
    (batch_size 50,000), so the extract held the whole table at once, and the load of a staged file read
    it back as one batch (pyarrow's iter_batches fills a batch across row groups): 1.8 GB peak RSS for a
    300 MB table, growing with the table. Now batches hold about 16 MB (by the width of the rows read
    so far) and staged files are read a row group at a time; full_sync (streamed load) and id_only
    (keyset pages, then a load from S3) both stay near the process's baseline, and every byte arrives."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE big (id INT PRIMARY KEY, t LONGTEXT, b LONGBLOB)",
        f"INSERT INTO big SELECT seq, REPEAT(CONCAT('é✓', seq), {BIG_CHARS // 4}),"
        f" REPEAT(UNHEX(SHA2(seq, 256)), 32768) FROM seq_1_to_{BIG_ROWS}",
    )
    tables = {f"{mysql_db}.big": {"cdc_strategy": "full_sync"}}
    id_only = {f"{mysql_db}.big": {"cdc_strategy": "id_only", "target_name": "big_inc"}}
    digest = "MD5(GROUP_CONCAT(MD5(t), MD5(b) ORDER BY id SEPARATOR ','))"
    expected = mysql_rows(mysql_db, f"SELECT COUNT(*), {digest} FROM big")[0]
    for name, config in (("full", tables), ("inc", id_only)):
        cfg = write_config(tmp_path / name, source_conn, pg_target, s3_conn, config)
        rss = tmp_path / f"{name}.rss"
        cli = ("/usr/bin/time", "-f", "%M", "-o", str(rss), sys.executable, "-m", "src.cli.main")
        table = f"{mysql_db}.big"
        doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, cli=cli)
        check_contract(doc, [table])
        assert proc.returncode == 0, doc
        assert doc["table_results"][table]["rows_processed"] == BIG_ROWS
        target = "big" if name == "full" else "big_inc"
        digest = "md5(string_agg(md5(t) || md5(b), ',' ORDER BY id))"
        got = pg_fetch(f'SELECT count(*), {digest} FROM "{pg_schema}".{target}')[0]
        assert tuple(got) == expected, (name, got, expected)
        assert _peak_rss_mb(rss) < 400, (name, _peak_rss_mb(rss))  # 310-330 MB; 560-630 before


@pytest.mark.anyio
async def test_wide_rows_are_fetched_in_chunks_of_bounded_values(
    source_conn: SourceConn, mysql_db: str
) -> None:
    """A 1,000-column table was fetched 50,000 rows (50 million Python objects, several GB) at a time:
    its Arrow width is small, but as Python objects each value takes 5-15x its Arrow bytes (20,000 rows
    of mixed types: 486 MB peak RSS with --backup-only, now 348 MB). A chunk now holds at most a million
    values, whatever batch_size says; every row still arrives once."""
    columns = ", ".join(f"c{i} {('INT', 'DATE', 'VARCHAR(8)')[i % 3]}" for i in range(999))
    values = ", ".join(("7", "'2024-02-29'", "'héllo'")[i % 3] for i in range(999))
    mysql_exec(
        mysql_db,
        f"CREATE TABLE wide (id INT PRIMARY KEY, {columns}) ENGINE=Aria",
        f"INSERT INTO wide SELECT seq, {values} FROM seq_1_to_2500",
    )
    async with MySQLSource(source_conn) as src, src.connection() as conn:
        schema = await describe_table(conn, mysql_db, "wide")
        send, receive = anyio.create_memory_object_stream[pa.RecordBatch](1)
        stats = ExtractStats()
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: extract_table(conn, mysql_db, "wide", schema, send, batch_size=50_000, stats=stats)
            )
            async with receive:
                sizes = [b.num_rows async for b in receive]
    assert sum(sizes) == 2500 and max(sizes) <= BATCH_VALUES // 1000, sizes


def test_more_columns_than_the_warehouse_allows_fails_at_plan_naming_the_fix(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """MariaDB (Aria) holds a 1,601-column table; PostgreSQL and Redshift allow 1,600 columns. The table
    was read and staged in full, then its load failed with PostgreSQL's bare 'tables can have at most
    1600 columns' (phase load). Now it fails at plan, before a row is read, naming the count and the
    fix; with one column excluded it loads (1,600 columns), and the run's other table is unaffected."""
    columns = ", ".join(f"c{i} TINYINT" for i in range(1600))
    mysql_exec(
        mysql_db,
        f"CREATE TABLE w (id INT PRIMARY KEY, {columns}) ENGINE=Aria",
        "INSERT INTO w (id, c0, c1599) VALUES (1, 5, 9), (2, -1, NULL)",
        "CREATE TABLE small (id INT PRIMARY KEY)",
        "INSERT INTO small VALUES (1)",
    )
    wide, small = f"{mysql_db}.w", f"{mysql_db}.small"
    cfg = write_config(tmp_path / "a", source_conn, pg_target, s3_conn)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", wide, "-t", small)
    check_contract(doc, [wide, small])
    failed = doc["table_results"][wide]
    assert proc.returncode == 1 and failed["status"] == "failed", doc
    assert failed["phase"] == "plan" and failed["retryable"] is False, failed
    assert "1601 columns" in failed["error_message"], failed
    assert "1600" in failed["error_message"] and "exclude_columns" in failed["error_message"], failed
    assert doc["table_results"][small]["status"] == "success", doc
    listed = s3_client(s3_conn.endpoint_url).list_objects_v2(Bucket=s3_conn.bucket, Prefix=s3_conn.prefix)
    assert not [o["Key"] for o in listed.get("Contents", []) if f"/{wide}/" in o["Key"]], listed
    cfg = write_config(
        tmp_path / "b", source_conn, pg_target, s3_conn, {wide: {"exclude_columns": ["c1599"]}}
    )
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", wide)
    assert proc.returncode == 0, doc
    got = pg_fetch(f'SELECT id, c0, c1598 FROM "{pg_schema}".w ORDER BY id')
    assert [tuple(r) for r in got] == [(1, 5, None), (2, -1, None)]


def test_a_row_wider_than_a_postgres_page_fails_saying_what_to_do(
    tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn, mysql_db: str
) -> None:
    """1,100 DATETIME columns are 8.8 kB of fixed-width values per row: under the column limit, but more
    than PostgreSQL fits in a page. The load failed with the bare 'row is too big: size 8832, maximum
    size 8160' (SQLSTATE 54000), which says neither what to change nor where; now the message names
    exclude_columns."""
    columns = ", ".join(f"c{i} DATETIME" for i in range(1100))
    mysql_exec(
        mysql_db,
        f"CREATE TABLE dense (id INT PRIMARY KEY, {columns}) ENGINE=Aria",
        "INSERT INTO dense (id) VALUES (1)",
        f"UPDATE dense SET {', '.join(f'c{i} = NOW()' for i in range(1100))}",
    )
    table = f"{mysql_db}.dense"
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
    check_contract(doc, [table])
    failed = doc["table_results"][table]
    assert proc.returncode == 1 and failed["phase"] == "load", doc
    assert "54000" in failed["error_message"] and "exclude_columns" in failed["error_message"], failed
