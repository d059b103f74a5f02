"""The pending-stage chain: which staged runs a load takes, in what order, and which it skips (pure), and
the engine finding them through the CLI (MySQL -> S3 moto -> PostgreSQL)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from src.config.models import S3Conn, SourceConn, TargetConn
from src.engine.pending import select
from src.plan.models import Watermark, Window, format_ts
from src.stage.models import StageResult
from src.warehouse.base import StateRow
from tests.conftest import mysql_exec, pg_fetch
from tests.e2e import assert_tables_equal, run_cli, write_config
from tests.test_incremental import EVENTS, insert_events, sync, tables_cfg
from tests.test_stage_support import list_keys, rewrite_as_v1

T = [datetime(2024, 1, d) for d in range(1, 9)]


def stage(
    eid: str,
    start: Watermark | None,
    end: Watermark | None,
    at: datetime,
    strategy: str = "hybrid",
    **meta: Any,
) -> StageResult:
    win = Window(strategy, "updated_at", "id", start, end)  # type: ignore[arg-type]
    full = {
        "execution_id": eid,
        "extracted_at": format_ts(at),
        "window": win.to_dict(),
        "schema": {},
        "target_table": "t",
        "mode": "merge",
        "key": ["id"],
        "order_by": ["updated_at", "id"],
        **meta,
    }
    return StageResult(
        prefix=f"p/{eid}/",
        files=(),
        manifest_key="m",
        manifest_url=f"s3://b/p/{eid}/m",
        rows=1,
        bytes=1,
        meta=full,
    )


def state(stage_id: str, mark: Watermark | None, at: datetime | None) -> StateRow:
    return StateRow("p", "db.t", "s.t", "hybrid", stage_id, stage_id, mark, None, 1, "", at)


def ids(stages: tuple[StageResult, ...]) -> list[str]:
    return [s.meta["execution_id"] for s in stages]


def test_chain_continues_from_the_committed_watermark() -> None:
    w1, w2, w3 = (Watermark(ts=t) for t in T[1:4])
    stages = [stage("a", None, w1, T[1]), stage("b", w1, w2, T[2]), stage("c", w2, w3, T[3])]
    chain = select(stages, state("a", w1, T[1]), committed={"a"})
    assert ids(chain.load) == ["b", "c"] and chain.skipped == () and chain.position == w3


def test_a_window_that_does_not_continue_the_chain_is_skipped() -> None:
    w1, w2 = Watermark(ts=T[1]), Watermark(ts=T[2])
    # "b" was planned from the beginning too, but "a" committed first: loading "b" would double rows
    stages = [stage("a", None, w1, T[1]), stage("b", None, w2, T[2])]
    chain = select(stages, state("a", w1, T[1]), committed={"a"})
    assert chain.load == () and ids(chain.skipped) == ["b"] and chain.position == w1


def test_newest_full_snapshot_supersedes_older_stages() -> None:
    stages = [stage("a", None, None, T[1], "full_sync"), stage("b", None, None, T[2], "full_sync")]
    chain = select(stages, None, committed=set())
    assert ids(chain.load) == ["b"] and ids(chain.skipped) == ["a"]


def test_stages_without_load_metadata_are_ignored() -> None:
    legacy = StageResult(
        prefix="p/x/", files=(), manifest_key="m", manifest_url="s3://b/p/x/m", rows=1, bytes=1, meta={}
    )
    chain = select([legacy, stage("a", None, Watermark(ts=T[1]), T[1])], None, committed=set())
    assert ids(chain.load) == ["a"]


def test_reset_restarts_the_chain_from_the_beginning() -> None:
    w1 = Watermark(ts=T[1])
    chain = select([stage("b", None, w1, T[3])], state("", None, None), committed={"a"})
    assert ids(chain.load) == ["b"]


def test_a_stage_staged_before_a_watermark_set_is_skipped_even_where_the_set_starts() -> None:
    """A window staged from w1 could not be loaded (say, the source's column type changed back since);
    ``watermark set`` to w1 again means: read after w1 again. The old stage must not keep failing."""
    w1, w2 = Watermark(ts=T[1]), Watermark(ts=T[2])
    manual = replace(state("", w1, None), strategy="manual", committed_at=T[3])
    chain = select([stage("b", w1, w2, T[2]), stage("c", w1, w2, T[4])], manual, committed=set())
    assert ids(chain.load) == ["c"] and ids(chain.skipped) == ["b"] and chain.position == w2


def test_a_window_that_cannot_be_loaded_says_how_to_read_it_again(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """A run stages its window, then cannot load it (a column's type changed incompatibly). The change is
    undone at the source, but every run loads the staged window first and fails again: the error gives
    the watermark command that makes the window stale, and the next run reads it again and loads it."""
    mysql_exec(mysql_db, EVENTS)
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables_cfg(mysql_db))
    t = f"{mysql_db}.events"
    insert_events(mysql_db, [(1, "a", "2024-01-01")])
    assert sync(cfg, t)["status"] == "success"
    mysql_exec(mysql_db, "ALTER TABLE events MODIFY amount VARCHAR(20)")
    insert_events(mysql_db, [(2, "b", "NOW(6)")])
    assert sync(cfg, t)["status"] == "failed"  # staged, not loaded: the target's amount is numeric
    mysql_exec(mysql_db, "ALTER TABLE events MODIFY amount DECIMAL(10,2)")
    message = sync(cfg, t)["table_results"][t]["error_message"]
    assert "changed from NUMERIC(10,2) to TEXT" in message, message
    command = message.split("run: s3shift ")[1].split()
    assert command[:5] == ["watermark", "set", "-p", "p", "-t"] and "--timestamp" in command, message
    assert run_cli("--config-dir", str(cfg), *command).returncode == 0
    doc = sync(cfg, t)
    assert doc["status"] == "success" and len(doc["table_results"][t]["stages_skipped"]) == 1, doc
    assert assert_tables_equal(mysql_db, "events", pg_schema, "events", "id") == 2


def test_a_pending_stage_listed_beside_the_committed_one_loads_once(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """The committed state's own stage is known without reading the state log; any other staged run is
    checked against it, so a pending stage beside it is loaded, and once only."""
    mysql_exec(mysql_db, EVENTS)
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables_cfg(mysql_db))
    t = f"{mysql_db}.events"
    insert_events(mysql_db, [(1, "a", "2024-01-01"), (2, "b", "2024-01-02")])
    first = sync(cfg, t)["table_results"][t]
    insert_events(mysql_db, [(3, "c", "NOW(6)")])
    assert sync(cfg, t, extra=("--backup-only",))["table_results"][t]["rows_processed"] == 1
    loaded = sync(cfg, t, extra=("--load-only",))["table_results"][t]
    assert loaded["rows_processed"] == 1 and len(loaded["stages_loaded"]) == 1, loaded
    assert loaded["stages_loaded"] != first["stages_loaded"]
    again = sync(cfg, t, extra=("--load-only",))["table_results"][t]
    assert again["rows_processed"] == 0 and again["stages_loaded"] == [] and "stages_skipped" not in again
    assert sync(cfg, t)["table_results"][t]["rows_processed"] == 0
    assert assert_tables_equal(mysql_db, "events", pg_schema, "events", "id") == 3


def test_a_stage_written_by_v1_loads_with_load_only(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """A stage staged before the manifest carried the engine's data (a COPY-only manifest and the
    ``_s3shift.json`` sidecar) is found and loaded, as one of today."""
    mysql_exec(mysql_db, EVENTS)
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables_cfg(mysql_db))
    t = f"{mysql_db}.events"
    insert_events(mysql_db, [(1, "a", "2024-01-01"), (2, "b", "2024-01-02")])
    backup = sync(cfg, t, extra=("--backup-only",))
    manifest_key = backup["table_results"][t]["manifest"].removeprefix(f"s3://{s3_conn.bucket}/")
    rewrite_as_v1(s3_conn, manifest_key)
    prefix = manifest_key.removesuffix("manifest.json")
    assert f"{prefix}_s3shift.json" in list_keys(s3_conn, prefix)
    loaded = sync(cfg, t, extra=("--load-only",))["table_results"][t]
    assert loaded["rows_processed"] == 2 and loaded["stages_loaded"] == [backup["execution_id"]], loaded
    assert assert_tables_equal(mysql_db, "events", pg_schema, "events", "id") == 2


def test_a_failure_after_earlier_stages_loaded_says_what_was_loaded(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    pg_schema: str,
) -> None:
    """Pending stages load in order, each in its own transaction: when a later one fails, the earlier ones
    stay committed and the watermark has moved. The failure said neither (it read as 'nothing loaded')."""
    mysql_exec(mysql_db, EVENTS)
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, tables_cfg(mysql_db))
    t = f"{mysql_db}.events"
    insert_events(mysql_db, [(1, "a", "2024-01-01")])
    assert sync(cfg, t)["status"] == "success"
    insert_events(mysql_db, [(2, "b", "NOW(6)")])
    first = sync(cfg, t, extra=("--backup-only",))["table_results"][t]
    mysql_exec(mysql_db, "ALTER TABLE events MODIFY amount VARCHAR(20)")
    insert_events(mysql_db, [(3, "c", "NOW(6)")])
    assert sync(cfg, t, extra=("--backup-only",))["status"] == "success"
    result = sync(cfg, t, extra=("--load-only",))["table_results"][t]
    assert result["status"] == "failed", result
    stage_a = first["manifest"].rsplit("/", 2)[1]
    assert result["stages_loaded"] == [stage_a], result
    assert result["watermark"] == first["window"]["end"], result
    message = result["error_message"]
    assert f"loaded first: {stage_a}" in message and first["window"]["end"]["ts"] in message, message
    assert not {"rows_processed", "files_created", "duration_seconds", "completed_at"} & result.keys()
    assert [r["id"] for r in pg_fetch(f'SELECT id FROM "{pg_schema}".events ORDER BY id')] == [1, 2]
