"""Black-box checks through the public CLI, session 13 (audit c): real-world MariaDB application schemas
(WordPress, Django/Rails, Magento EAV, system-versioned and partitioned tables) synced in full and then
incrementally into PostgreSQL and the Redshift emulator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from src.config.models import S3Conn, SourceConn, TargetConn
from tests.conftest import mysql_exec, pg_fetch
from tests.e2e import as_redshift, check_contract, run_json, write_config

WP_POSTS = (
    "CREATE TABLE wp_posts (ID BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,"
    " post_title TEXT NOT NULL, post_status VARCHAR(20) NOT NULL DEFAULT 'publish',"
    " post_modified_gmt DATETIME NOT NULL DEFAULT '0000-00-00 00:00:00', KEY (post_modified_gmt, ID))"
)


def test_rows_written_later_with_a_zero_date_cursor_are_counted_not_silently_missed(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """WordPress inserts an auto-draft with ``post_modified_gmt = '0000-00-00 00:00:00'``. The first window
    reads such rows (NULL in the target, ``zero_date_to_null``); a window after a watermark never does, so
    a draft written since was missing from the target without a word (exit 0, no count, no warning: the
    NULL-cursor count leaves zero dates out because the first window reads them). The run now counts the
    table's zero-date cursor rows (``zero_date_cursor_rows``) and says on stderr what to do."""
    mysql_exec(
        mysql_db,
        "SET SESSION sql_mode = ''",
        WP_POSTS,
        "INSERT INTO wp_posts (post_title, post_status) VALUES ('draft 1', 'auto-draft')",
        "INSERT INTO wp_posts (post_title, post_modified_gmt) VALUES ('hello', '2024-01-01 10:00:00')",
    )
    t = f"{mysql_db}.wp_posts"
    tables = {t: {"cdc_strategy": "hybrid", "cdc_timestamp_column": "post_modified_gmt", "lag_seconds": 0}}
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", t)
    check_contract(doc, [t])
    first = doc["table_results"][t]
    assert first["rows_processed"] == 2, first
    assert first["coercions"] == {"post_modified_gmt": {"zero_date_to_null": 1}}, first
    assert "zero_date_cursor_rows" not in first and "zero date" not in proc.stderr, (first, proc.stderr)
    mysql_exec(
        mysql_db,
        "SET SESSION sql_mode = ''",
        "INSERT INTO wp_posts (post_title, post_status) VALUES ('draft 2', 'auto-draft')",
        "INSERT INTO wp_posts (post_title, post_modified_gmt) VALUES ('world', UTC_TIMESTAMP())",
    )
    time.sleep(1.1)  # the window ends at the last complete second of the source's clock
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", t)
    check_contract(doc, [t])
    second = doc["table_results"][t]
    assert proc.returncode == 0 and second["rows_processed"] == 1, second  # 'world'; 'draft 2' is not read
    assert second["zero_date_cursor_rows"] == 2 and "null_cursor_rows" not in second, second
    warning = f"{t}: 2 row(s) have a zero date in the cursor (post_modified_gmt)"
    assert warning in proc.stderr and "sync the table with full_sync" in proc.stderr, proc.stderr
    titles = sorted(r[0] for r in pg_fetch(f'SELECT post_title FROM "{pg_schema}".wp_posts'))
    assert titles == ["draft 1", "hello", "world"], titles


def test_tables_of_one_target_run_one_at_a_time_are_refused_not_taking_turns(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """``Users`` and ``users`` (MariaDB on Linux keeps both; Rails and legacy PHP apps do have such pairs)
    fold to one Redshift table. Requested together, both were refused at planning; run one at a time, as a
    job per table does, each replaced the other's rows in ``users`` and reported success, exit 0. A table
    whose target another table configured in the pipeline would load is refused alone too, nothing
    loaded; PostgreSQL, which keeps the case, loads both."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE Users (id INT PRIMARY KEY, v VARCHAR(10))",
        "CREATE TABLE users (id INT PRIMARY KEY, v VARCHAR(10))",
        "INSERT INTO Users VALUES (1, 'upper')",
        "INSERT INTO users VALUES (1, 'lower'), (2, 'lower')",
    )
    upper, lower = f"{mysql_db}.Users", f"{mysql_db}.users"
    tables: dict[str, dict[str, Any]] = {upper: {}, lower: {}}
    target, cli = as_redshift(pg_target, s3_endpoint)
    cfg = write_config(tmp_path / "rs", source_conn, target, s3_conn, tables)
    for table, other in ((upper, lower), (lower, upper)):
        doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table, cli=cli)
        check_contract(doc, [table])
        result = doc["table_results"][table]
        assert proc.returncode == 1 and result["phase"] == "plan", result
        message = result["error_message"]
        assert f"as {other} (configured in pipeline 'p') would too" in message, message
        assert f"set tables.{table}.target_name" in message and "lowercase" in message, message
    assert pg_fetch("SELECT to_regclass($1)", f"{pg_schema}.users")[0][0] is None
    cfg = write_config(tmp_path / "pg", source_conn, pg_target, s3_conn, tables)
    for table in (upper, lower):
        doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", table)
        assert proc.returncode == 0, doc
    assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}"."Users"')[0][0] == 1
    assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}".users')[0][0] == 2


def test_a_key_holding_an_enum_is_read_whole_not_cut_at_pages(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """An ENUM sorts by its members' positions but compares with a bound value as text. Paged by
    ``(entity_id, kind)``, a page ending at ``(1, 'zeta')`` went on with ``kind > 'zeta'``, which no other
    member is: ``(1, 'alpha')`` and ``(1, 'mid')`` were skipped (10 of 30 rows lost, exit 0); with an ENUM
    primary key read by ``(ts, kind)`` a row was skipped and another read twice. Every row arrives once."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE ek (entity_id INT NOT NULL, kind ENUM('zeta', 'alpha', 'mid') NOT NULL, v INT,"
        " PRIMARY KEY (entity_id, kind))",
        "INSERT INTO ek SELECT seq DIV 3 + 1, ELT(seq % 3 + 1, 'zeta', 'alpha', 'mid'), seq FROM seq_0_to_29",
        "CREATE TABLE es (kind ENUM('zeta', 'alpha', 'mid', 'beta') NOT NULL PRIMARY KEY,"
        " updated_at DATETIME(6) NOT NULL, KEY (updated_at))",
        "INSERT INTO es VALUES ('zeta', '2024-01-01'), ('alpha', '2024-01-01'), ('mid', '2024-01-01'),"
        " ('beta', '2024-01-01')",
    )
    ek, es = f"{mysql_db}.ek", f"{mysql_db}.es"
    tables = {
        ek: {"cdc_strategy": "id_only", "cdc_id_column": "entity_id", "processing": {"batch_size": 2}},
        es: {"cdc_strategy": "timestamp_only", "processing": {"batch_size": 2}},
    }
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", ek, "-t", es)
    check_contract(doc, [ek, es])
    assert proc.returncode == 0, doc
    assert doc["table_results"][ek]["rows_processed"] == 30, doc["table_results"][ek]
    assert doc["table_results"][es]["rows_processed"] == 4, doc["table_results"][es]
    got = {tuple(r) for r in pg_fetch(f'SELECT entity_id, kind, v FROM "{pg_schema}".ek')}
    assert got == {(i // 3 + 1, ("zeta", "alpha", "mid")[i % 3], i) for i in range(30)}, sorted(got)
    kinds = sorted(r[0] for r in pg_fetch(f'SELECT kind FROM "{pg_schema}".es'))
    assert kinds == ["alpha", "beta", "mid", "zeta"], kinds


def test_a_key_holding_a_bit_column_pages_past_it(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """A page position on a BIT key column was bound as the driver's bytes; MariaDB compares a BIT column
    with a byte string as a number parsed from text (``b > x'0025'`` matched 0x25 itself), so the read
    never advanced and the table failed ("did not advance past (1, b'\\x00%')"). Bound as the integer it
    is, every row arrives once: BIT(10), BIT(1) and BIT(64) up to 2^64-1."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE bk (id INT NOT NULL, b BIT(10) NOT NULL, flag BIT(1) NOT NULL, big BIT(64) NOT NULL,"
        " PRIMARY KEY (id, b, flag, big))",
        "INSERT INTO bk SELECT seq DIV 8 + 1, (seq * 37) % 1024, seq % 2,"
        " IF(seq % 3 = 0, 18446744073709551615, seq) FROM seq_0_to_39",
    )
    t = f"{mysql_db}.bk"
    tables = {t: {"cdc_strategy": "id_only", "processing": {"batch_size": 1}}}
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables)
    doc, proc = run_json("--config-dir", str(cfg), "sync", "-p", "p", "-t", t)
    check_contract(doc, [t])
    assert proc.returncode == 0 and doc["table_results"][t]["rows_processed"] == 40, doc
    got = {tuple(r) for r in pg_fetch(f'SELECT id, b, flag, big FROM "{pg_schema}".bk')}
    want = {(s // 8 + 1, s * 37 % 1024, bool(s % 2), 2**64 - 1 if s % 3 == 0 else s) for s in range(40)}
    assert got == want, sorted(got ^ want)
