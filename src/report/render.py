"""Render a run report as the JSON document of the spec, or as a short human summary."""

from __future__ import annotations

from src.common.jsonio import dumps
from src.common.log import one_line
from src.report.models import RunReport, TableFailure


def render_json(report: RunReport) -> str:
    return dumps(report.to_dict(), pretty=True)


def render_text(report: RunReport) -> str:
    """The summary for a terminal: names and messages with their control characters escaped
    (``one_line``), as the log's lines are."""
    s = report.summary()
    lines = [
        f"s3shift sync {report.execution_id} (pipeline {report.pipeline}): {report.status}",
        f"  {s['success_count']} succeeded, {s['failure_count']} failed; "
        f"{s['total_rows_processed']:,} rows, {s['total_files_created']} files "
        f"in {report.duration_seconds:.1f}s",
    ]
    names = {table: one_line(table) for table in report.tables_requested}
    width = max((len(t) for t in names.values()), default=0)
    for table in report.tables_requested:
        r, name = report.results[table], names[table]
        if isinstance(r, TableFailure):
            lines.append(f"  FAIL {name:<{width}}  {one_line(r.error_message)}")
        else:
            lines.append(
                f"  ok   {name:<{width}}  {r.rows_processed:>12,} rows  {r.files_created:>4} files"
                f"  {r.duration_seconds:8.2f}s"
            )
    return "\n".join(lines)
