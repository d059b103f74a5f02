"""The command line: parse options, call the engine once, render, exit. Nothing else lives here."""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import anyio
import click

from src.cli import HELD, hold_signals, hold_signals_again
from src.common import log
from src.common.errors import S3ShiftError, describe, internal_error
from src.common.jsonio import dumps
from src.engine.context import RunMode
from src.engine.dryrun import plan_sync
from src.engine.run import SyncRequest, configured, run_sync, start_workers, unique
from src.engine.unitplan import plan_units
from src.engine.units import parse_unit
from src.engine.watermarks import Action, WatermarkRequest, run_watermark
from src.plan.models import Watermark
from src.report.aggregator import INTERNAL, INTERRUPTED, Aggregator
from src.report.models import RunReport, new_execution_id, utc_now
from src.report.render import render_json, render_text

_log = log.get_logger("cli")
ID_RANGE = click.IntRange(-(2**63), 2**64 - 1)  # MySQL's integers: BIGINT to BIGINT UNSIGNED


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config-dir",
    metavar="DIR",
    default=None,  # checked with the config (a bad one is a failed run with its JSON, exit 1): not by click
    help="Directory holding connections.yml and pipelines/ (default: $S3SHIFT_CONFIG_DIR or ./config).",
)
@click.version_option(package_name="s3shift", prog_name="s3shift")
@click.pass_context
def cli(ctx: click.Context, config_dir: str | None) -> None:
    """s3shift: sync MySQL tables through S3 (Parquet) into Redshift or PostgreSQL."""
    ctx.obj = {"config_dir": config_dir}


_PIPELINE = click.option(
    "-p", "--pipeline", default="default", show_default=True, help="Pipeline name (pipelines/<name>.yml)."
)


@cli.command()
@_PIPELINE
@click.option(
    "-t",
    "--table",
    "tables",
    multiple=True,
    help="Table to sync as database.table; repeat for more (a comma-separated list also works).",
)
@click.option(
    "--unit",
    metavar="UNIT",
    default=None,
    help="Run one unit of `s3shift plan` (its JSON, or @FILE holding it) instead of -t: its pipeline, "
    "table, window and key ranges are the unit's.",
)
@click.option("--json-output", is_flag=True, help="Print exactly one JSON document on stdout.")
@click.option("--backup-only", is_flag=True, help="Extract and stage to S3 (manifest written), load nothing.")
@click.option(
    "--load-only",
    "--redshift-only",
    "load_only",
    is_flag=True,
    help="Load the pending staged manifests in order; no MySQL reads. (--redshift-only is an alias.)",
)
@click.option("--dry-run", is_flag=True, help="Print the plan per table (window, rows, SQL); change nothing.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logs on stderr, and tracebacks for failures.")
@click.pass_context
def sync(
    ctx: click.Context,
    pipeline: str,
    tables: Sequence[str],
    unit: str | None,
    json_output: bool,
    backup_only: bool,
    load_only: bool,
    dry_run: bool,
    verbose: bool,
) -> None:
    """Sync tables of a pipeline. Exit code 0 only when every table succeeded, 1 otherwise."""
    log.configure(verbose)
    os.environ["RUST_BACKTRACE"] = "1" if verbose else "0"  # a connectorx panic: no backtrace unless -v
    if backup_only and load_only:
        raise click.UsageError("--backup-only and --load-only exclude each other (a normal run does both)")
    requested = _table_names(tables)
    mode: RunMode = "backup_only" if backup_only else "load_only" if load_only else "sync"
    request = SyncRequest(pipeline=pipeline, tables=requested, config_dir=ctx.obj["config_dir"], mode=mode)
    if unit is not None:
        explicit = ctx.get_parameter_source("pipeline") != click.core.ParameterSource.DEFAULT
        request = _unit_request(
            request, unit, explicit=explicit, exclusive=backup_only or load_only or dry_run
        )
    elif not tables:
        raise click.UsageError("Missing option '-t' / '--table' (or --unit UNIT).")
    elif not requested:
        raise click.UsageError("no table given: pass -t database.table")
    if dry_run:
        try:
            plan = _guarded(
                lambda: anyio.run(functools.partial(plan_sync, request, interrupted=HELD)), verbose
            )
        finally:
            hold_signals_again()  # the event loop's handlers are gone (SIGTERM was fatal again)
        _emit(dumps(plan, pretty=True))
        planned = plan.get("tables") or {}  # none at all: the plan itself failed
        ctx.exit(0 if planned and all(t.get("status") == "planned" for t in planned.values()) else 1)
    report = _run(request, verbose)
    _emit(render_json(report) if json_output else render_text(report))
    ctx.exit(report.exit_code)


def _emit(text: str) -> None:
    """The command's output on stdout. A stdout that refuses it (a full disk, a quota, an I/O error on the
    file it is redirected to) is one line on stderr and exit 1, not a traceback; a closed pipe (``| head``)
    a quiet exit 1, as click's."""
    try:
        click.echo(text)
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            sys.stderr.write(
                f"Error: could not write the output to stdout: {exc.strerror or exc} (the command itself "
                "ran to its end; rerun it with stdout on a file system that takes it)\n"
            )
        raise SystemExit(1) from None


def _table_names(values: Sequence[str]) -> tuple[str, ...]:
    """The tables ``-t`` names: each value may list several, comma-separated; the first of repeats kept."""
    return unique([t for value in values for t in value.split(",") if t.strip()])


def _unit_request(request: SyncRequest, text: str, *, explicit: bool, exclusive: bool) -> SyncRequest:
    """The request that runs the unit ``--unit`` names; a usage error (one line) when it is not a unit,
    is combined with what it replaces, or belongs to another pipeline than ``-p`` names."""
    if request.tables or exclusive:
        raise click.UsageError(
            "--unit runs one unit of a plan: it excludes -t, --backup-only, --load-only, --dry-run"
        )
    try:
        unit = parse_unit(text)
    except S3ShiftError as exc:
        raise click.BadParameter(describe(exc), param_hint="--unit") from None
    if explicit and unit.pipeline != request.pipeline:
        raise click.BadParameter(
            f"unit {unit.id} belongs to pipeline {unit.pipeline!r}, not {request.pipeline!r} (-p): run it "
            f"with -p {unit.pipeline}, or without -p",
            param_hint="--unit",
        )
    return replace(request, pipeline=unit.pipeline, tables=(unit.table,), unit=unit)


def _run(request: SyncRequest, verbose: bool) -> RunReport:
    """Run the engine; whatever happens, return a report naming every requested table. A signal held
    before the run (``src.cli.HELD``) ends it at its start; one after it is held, not fatal: the report
    is written next."""
    interrupted = "SIGINT"
    try:
        if not HELD:
            request = configured(request)  # loaded once: the processes to fork, then the run
            workers = start_workers(request)  # before the event loop: forked processes share many tables
            return anyio.run(functools.partial(run_sync, request, workers=workers, interrupted=HELD))
        interrupted = HELD[0]
        _log.warning("%s received: the run ends before it started", interrupted)
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        reason = f"run interrupted ({interrupted}) before this table finished; target and watermark unchanged"
        extra = INTERRUPTED
    except Exception as exc:  # a bug: still honour the contract (JSON on stdout, every table failed)
        if verbose:
            traceback.print_exc(file=sys.stderr)
        reason = internal_error(exc)
        extra = INTERNAL  # not "interrupted, retryable": a retry loop would rerun the bug forever
        _log.error("%s", reason)
    finally:
        hold_signals_again()  # the event loop's handlers are gone (SIGTERM was fatal again)
    start = utc_now()
    agg = Aggregator(new_execution_id(start), start, request.pipeline, request.tables)
    return agg.report(missing_reason=reason, missing_extra=extra)


def _guarded(fn: Any, verbose: bool) -> dict[str, Any]:
    try:
        result: dict[str, Any] = fn()
        return result
    except Exception as exc:  # the plan reports our errors per table: this is a bug
        if verbose:
            traceback.print_exc(file=sys.stderr)
        message = internal_error(exc)
        _log.error("%s", message)
        return {"status": "failed", "error_message": message}


@cli.command("plan")
@_PIPELINE
@click.option(
    "-t",
    "--table",
    "tables",
    multiple=True,
    required=True,
    help="Table to plan as database.table; repeat for more (a comma-separated list also works).",
)
@click.option("--json-output", is_flag=True, help="Accepted for symmetry with sync: the plan is always JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logs on stderr, and tracebacks for failures.")
@click.pass_context
def plan(ctx: click.Context, pipeline: str, tables: Sequence[str], json_output: bool, verbose: bool) -> None:
    """Plan the tables' work as units that `sync --unit` runs in any process on any host (one JSON
    document on stdout); changes nothing. Exit code 0 when every table is planned, 1 otherwise."""
    log.configure(verbose)
    requested = _table_names(tables)
    if not requested:
        raise click.UsageError("no table given: pass -t database.table")
    request = SyncRequest(pipeline=pipeline, tables=requested, config_dir=ctx.obj["config_dir"])
    try:
        doc = _guarded(lambda: anyio.run(functools.partial(plan_units, request, interrupted=HELD)), verbose)
    finally:
        hold_signals_again()  # the event loop's handlers are gone (SIGTERM was fatal again)
    _emit(dumps(doc, pretty=True))
    ctx.exit(0 if doc.get("status") == "planned" else 1)


@cli.group()
def watermark() -> None:
    """Read or move a table's watermark (kept in the warehouse state table)."""


def _watermark_command(action: Action) -> Any:
    @click.option("-p", "--pipeline", default="default", show_default=True, help="Pipeline name.")
    @click.option(
        "-t", "--table", "tables", multiple=True, required=True, help="The table, as database.table (one)."
    )
    @click.option("--json-output", is_flag=True, help="Print one JSON document on stdout.")
    @click.option("-v", "--verbose", is_flag=True, help="Debug logs on stderr.")
    @click.pass_context
    def command(
        ctx: click.Context,
        /,
        pipeline: str,
        tables: Sequence[str],
        json_output: bool,
        verbose: bool,
        **kw: Any,
    ) -> None:
        log.configure(verbose)
        named = _table_names(tables)  # as sync reads -t
        if len(named) != 1:  # click keeps only the last of a repeated single option: say so instead
            raise click.UsageError(
                f"watermark {action} takes one table; got {len(named)}: {', '.join(named) or '(none)'}"
            )
        table = named[0]
        mark = _parse_watermark(kw.get("timestamp"), kw.get("id")) if action == "set" else None
        request = WatermarkRequest(action, pipeline, table, ctx.find_root().obj["config_dir"], mark)
        try:
            result: dict[str, Any] = anyio.run(functools.partial(run_watermark, request, interrupted=HELD))
            result["status"] = "success"
        except Exception as exc:  # ours carry the cause; anything else is a bug, still one line
            if verbose:
                traceback.print_exc(file=sys.stderr)
            message = describe(exc) if isinstance(exc, S3ShiftError) else internal_error(exc)
            result = {"pipeline": pipeline, "table": table, "status": "failed", "error_message": message}
            _log.error("watermark %s of %s (pipeline %s) failed: %s", action, table, pipeline, message)
        finally:
            hold_signals_again()  # the event loop's handlers are gone (SIGTERM was fatal again)
        if json_output:
            _emit(dumps(result, pretty=True))
        else:
            _emit(_watermark_text(result))
        ctx.exit(0 if result["status"] == "success" else 1)

    return command


def _parse_watermark(timestamp: str | None, ident: int | None) -> Watermark:
    if timestamp is None and ident is None:
        raise click.UsageError("watermark set needs --timestamp and/or --id")
    ts = None
    if timestamp is not None:
        try:
            ts = datetime.fromisoformat(timestamp)
        except ValueError:
            raise click.BadParameter(
                f"{timestamp!r} is not an ISO 8601 timestamp", param_hint="--timestamp"
            ) from None
        if ts.tzinfo is not None:
            try:
                ts = ts.astimezone(UTC).replace(tzinfo=None)
            except OverflowError:  # 0001-01-01T00:00+01:00 is in the year 0 in UTC
                raise click.BadParameter(
                    f"{timestamp!r} is out of range in UTC (0001-01-01 to 9999-12-31)",
                    param_hint="--timestamp",
                ) from None
    return Watermark(ts=ts, id=ident)


def _watermark_text(result: dict[str, Any]) -> str:
    if result["status"] != "success":
        return f"{result['table']}: FAILED: {result['error_message']}"
    mark = result.get("watermark")
    where = "none (next run starts from the beginning)" if not mark else f"ts={mark['ts']} id={mark['id']}"
    return f"{result['pipeline']} {result['table']}: watermark {where}"


watermark.command("get", help="Show the current watermark.")(_watermark_command("get"))
watermark.command("reset", help="Forget the watermark: the next run reads from the beginning.")(
    _watermark_command("reset")
)
watermark.command("set", help="Set the watermark (the next run reads after it).")(
    click.option("--id", "id", type=ID_RANGE, default=None, help="Integer cursor value.")(
        click.option("--timestamp", default=None, help="Timestamp cursor value, ISO 8601 (UTC).")(
            _watermark_command("set")
        )
    )
)


def main() -> None:
    """Run the command, then end the process at once: its output is written and flushed, and every
    connection, upload and transaction closed, so the interpreter's own teardown (freeing every module
    and Arrow buffer, joining idle worker threads: ~0.15 s measured after a 2M-row run) has nothing
    left to do for the user."""
    hold_signals()  # already, when launched as the CLI (``src.cli``); not when a wrapper calls main()
    gc.freeze()  # the modules' objects: never garbage, so no collection walks them again
    gc.enable()
    relay = log.NativeStderr.install()  # native code's stderr scrubbed, Rust panic reports dropped
    try:
        try:
            code = cli.main(prog_name="s3shift", standalone_mode=False)
        except click.UsageError as exc:
            exc.show()
            code = _usage_json(sys.argv[1:], exc.format_message()) if "--json-output" in sys.argv else 2
        except click.ClickException as exc:
            exc.show()
            code = exc.exit_code
        except click.Abort:
            sys.stderr.write("Aborted!\n")
            code = 1
    except SystemExit as done:
        code = done.code
        if code is not None and not isinstance(code, int):  # sys.exit("message") semantics
            sys.stderr.write(f"{code}\n")
            code = 1
    _exit_now(code if isinstance(code, int) else 0, relay)


def _usage_json(args: Sequence[str], message: str) -> int:
    """A usage error (a missing or unknown option, options that exclude each other) of a command run with
    ``--json-output``: the JSON is printed all the same (the contract: always a document, exit 0 or 1),
    the run failed, each table it names failed with the message. Returns the exit code, 1."""
    command = next((a for a in args if a in ("sync", "watermark")), "sync")
    pipeline = _option(args, "-p", "--pipeline")
    tables = _table_names(_options(args, "-t", "--table"))
    if not tables and (text := _option(args, "--unit", "--unit")) is not None:
        with contextlib.suppress(S3ShiftError):  # the table of a unit that parses (say, of another pipeline)
            named = parse_unit(text)
            tables, pipeline = (named.table,), pipeline or named.pipeline
    reason = f"usage error: {message} — see s3shift {command} --help"
    if command == "watermark":
        table = tables[0] if len(tables) == 1 else None
        result = {
            "pipeline": pipeline or "default",
            "table": table,
            "status": "failed",
            "error_message": reason,
        }
        _emit(dumps(result, pretty=True))
        return 1
    start = utc_now()
    agg = Aggregator(new_execution_id(start), start, pipeline or "default", tables)
    report = agg.report(missing_reason=reason, missing_extra={"phase": "usage", "retryable": False})
    _emit(render_json(replace(report, error=reason)))
    return 1


def _options(args: Sequence[str], short: str, long: str) -> list[str]:
    """The values given to an option, as click would read them (``-t x``, ``-tx``, ``--table x``,
    ``--table=x``); best effort, for a command line click refused."""
    found: list[str] = []
    for i, arg in enumerate(args):
        if arg in (short, long) and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith(f"{long}="):
            found.append(arg[len(long) + 1 :])
        elif arg.startswith(short) and not arg.startswith("--") and len(arg) > len(short):
            found.append(arg[len(short) :])
    return found


def _option(args: Sequence[str], short: str, long: str) -> str | None:
    found = _options(args, short, long)
    return found[-1] if found else None


def _exit_now(code: int, relay: log.NativeStderr | None = None) -> None:
    if relay is not None:
        relay.close()
    logging.shutdown()  # flushes every handler
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
