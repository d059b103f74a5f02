"""The command line: parse options, call the engine once, render, exit. Nothing else lives here."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence

import anyio
import click

from src.common import log
from src.common.errors import describe
from src.engine.run import SyncRequest, run_sync, unique
from src.report.aggregator import Aggregator
from src.report.models import RunReport, new_execution_id, utc_now
from src.report.render import render_json, render_text


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory holding connections.yml and pipelines/ (default: $S3SHIFT_CONFIG_DIR or ./config).",
)
@click.version_option(package_name="s3shift", prog_name="s3shift")
@click.pass_context
def cli(ctx: click.Context, config_dir: str | None) -> None:
    """s3shift: sync MySQL tables through S3 (Parquet) into Redshift or PostgreSQL."""
    ctx.obj = {"config_dir": config_dir}


@cli.command()
@click.option(
    "-p", "--pipeline", default="default", show_default=True, help="Pipeline name (pipelines/<name>.yml)."
)
@click.option(
    "-t",
    "--table",
    "tables",
    multiple=True,
    required=True,
    help="Table to sync as database.table; repeat for more (a comma-separated list also works).",
)
@click.option("--json-output", is_flag=True, help="Print exactly one JSON run report on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logs on stderr, and tracebacks for failures.")
@click.pass_context
def sync(ctx: click.Context, pipeline: str, tables: Sequence[str], json_output: bool, verbose: bool) -> None:
    """Sync tables of a pipeline. Exit code 0 only when every table succeeded, 1 otherwise."""
    log.configure(verbose)
    requested = unique([t for arg in tables for t in arg.split(",") if t.strip()])
    if not requested:
        raise click.UsageError("no table given: pass -t database.table")
    request = SyncRequest(pipeline=pipeline, tables=requested, config_dir=ctx.obj["config_dir"])
    report = _run(request, verbose)
    click.echo(render_json(report) if json_output else render_text(report))
    ctx.exit(report.exit_code)


def _run(request: SyncRequest, verbose: bool) -> RunReport:
    """Run the engine; whatever happens, return a report naming every requested table."""
    try:
        return anyio.run(run_sync, request)
    except KeyboardInterrupt:
        reason = "run interrupted (SIGINT) before this table finished; target and watermark unchanged"
    except Exception as exc:  # a bug: still honour the contract (JSON on stdout, every table failed)
        if verbose:
            traceback.print_exc(file=sys.stderr)
        reason = f"internal error: {describe(exc)} (rerun with --verbose for the traceback)"
    start = utc_now()
    agg = Aggregator(new_execution_id(start), start, request.pipeline, request.tables)
    return agg.report(missing_reason=reason)


def main() -> None:
    cli(prog_name="s3shift")


if __name__ == "__main__":
    main()
