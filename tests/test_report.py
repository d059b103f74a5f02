"""Run report: every rule of spec/json-output-format.md that does not need a database."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from src.common.jsonio import loads
from src.report.aggregator import Aggregator
from src.report.models import RunReport, TableFailure, TableSuccess, iso, new_execution_id
from src.report.render import render_json, render_text
from tests.e2e import check_contract

T0 = datetime(2025, 9, 26, 19, 54, 38, 135401, tzinfo=UTC)


def ok(table: str, rows: int, files: int) -> TableSuccess:
    return TableSuccess(table, rows, files, 1.5, T0 + timedelta(seconds=5), extra={"bytes_written": 10})


def bad(table: str) -> TableFailure:
    return TableFailure(
        table,
        "Connection timeout to MySQL database",
        T0 + timedelta(seconds=3),
        {"phase": "connect", "retryable": True},
    )


def report(*results: TableSuccess | TableFailure, order: tuple[str, ...] | None = None) -> RunReport:
    tables = order or tuple(r.table for r in results)
    return RunReport(
        "sync_20250926_195438_2f01922d",
        T0,
        "pipe",
        tables,
        {r.table: r for r in results},
        T0 + timedelta(seconds=134.331168),
    )


def test_status_rules_and_exit_codes() -> None:
    assert (report(ok("a.x", 1, 1), ok("a.y", 2, 1)).status, report(ok("a.x", 1, 1)).exit_code) == (
        "success",
        0,
    )
    partial = report(bad("a.x"), ok("a.y", 2, 1))
    assert (partial.status, partial.exit_code) == ("partial_success", 1)
    failed = report(bad("a.x"), bad("a.y"))
    assert (failed.status, failed.exit_code) == ("failed", 1)


def test_document_shape_matches_spec() -> None:
    doc = loads(
        render_json(
            report(
                bad("settlement.orders"),
                ok("settlement.payments", 12000, 2),
                order=("settlement.orders", "settlement.payments"),
            )
        )
    )
    check_contract(doc, ["settlement.orders", "settlement.payments"], pipeline="pipe")
    success = doc["table_results"]["settlement.payments"]
    assert success["bytes_written"] == 10  # added keys allowed inside a table result
    assert doc["summary"] == {
        "success_count": 1,
        "failure_count": 1,
        "total_rows_processed": 12000,
        "total_files_created": 2,
    }
    assert doc["duration_seconds"] == 134.331168 and isinstance(doc["duration_seconds"], float)
    assert doc["start_time"] == "2025-09-26T19:54:38.135401+00:00"


def test_execution_id_format_matches_start_time() -> None:
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    eid = new_execution_id(start)
    assert re.fullmatch(r"sync_20260102_030405_[0-9a-f]{8}", eid)
    assert new_execution_id(start) != eid


def test_iso_converts_to_utc_and_keeps_microseconds() -> None:
    aware = datetime(2026, 1, 2, 8, 4, 5, tzinfo=UTC).astimezone(
        __import__("zoneinfo").ZoneInfo("Asia/Tokyo")
    )
    assert iso(aware) == "2026-01-02T08:04:05.000000+00:00"


def test_text_summary_lists_every_table() -> None:
    text = render_text(report(bad("a.x"), ok("a.y", 1234, 1)))
    assert "partial_success" in text and "FAIL a.x" in text and "1,234 rows" in text


def test_a_table_the_run_never_finished_is_failed_and_retryable() -> None:
    """A run interrupted (SIGTERM, SIGINT) reports the tables it had not finished with the failure keys an
    orchestrator reads, ``retryable`` included (it was missing, so a retry loop had to treat it as fatal)."""
    agg = Aggregator("sync_20250926_195438_2f01922d", T0, "pipe", ("a.x", "a.y"))
    agg.record(ok("a.x", 1, 1))
    doc = loads(
        render_json(agg.report(missing_reason="run interrupted (SIGTERM) before this table finished"))
    )
    check_contract(doc, ["a.x", "a.y"], pipeline="pipe")
    assert doc["table_results"]["a.y"]["retryable"] is True and doc["status"] == "partial_success"
    assert "retryable" not in doc["table_results"]["a.x"]
