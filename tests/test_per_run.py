"""What a run asks the warehouse once, not once per table: whether the targets of its incremental tables
still exist (one listing of the target schema, with the states, at the run's start), on PostgreSQL and
on the Redshift emulator (which folds names to lowercase)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from src.common.jsonio import dumps, loads
from src.config.models import S3Conn, SourceConn, TargetConn
from src.engine.dryrun import plan_sync
from src.engine.run import SyncRequest, run_sync
from src.report.render import render_json
from src.source.mysql import SourceConnection
from src.warehouse.sqlwarehouse import SqlWarehouse
from tests.conftest import mysql_exec, pg_fetch
from tests.e2e import REDSHIFT_ROLE, run_json, write_config
from tests.redshift_emulator import emulator_connect

TABLES = 5


def target_of(warehouse: str, pg_target: TargetConn, s3_endpoint: str) -> tuple[TargetConn, Any]:
    """The target connection and the ``redshift_connect`` (the emulator) of a parametrized warehouse."""
    if warehouse == "redshift":
        return replace(pg_target, name="rs", type="redshift", iam_role=REDSHIFT_ROLE), emulator_connect(
            s3_endpoint
        )
    return pg_target, None


def run_doc(cfg: Path, tables: tuple[str, ...], connect: Any) -> dict[str, Any]:
    """A run in this process (so that the test's patches apply), as its JSON document."""
    request = SyncRequest(pipeline="p", tables=tables, config_dir=cfg)
    doc: dict[str, Any] = loads(render_json(anyio.run(partial(run_sync, request, redshift_connect=connect))))
    return doc


class Counting:
    """An executor that notes every message it sends."""

    def __init__(self, inner: Any, sent: list[str]) -> None:
        self._inner, self._sent = inner, sent

    async def execute(self, query: str, *args: Any) -> str:
        self._sent.append(query)
        return str(await self._inner.execute(query, *args))

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        self._sent.append(query)
        return list(await self._inner.fetch(query, *args))

    async def fetchval(self, query: str, *args: Any) -> Any:
        self._sent.append(query)
        return await self._inner.fetchval(query, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every message the run's warehouse sessions send (both warehouses watch each session they open)."""
    messages: list[str] = []
    watched = SqlWarehouse._watched
    monkeypatch.setattr(SqlWarehouse, "_watched", lambda self, ex: Counting(watched(self, ex), messages))
    yield messages


@pytest.mark.parametrize("warehouse", ["postgres", "redshift"])
def test_incremental_rerun_lists_the_targets_once(
    warehouse: str,
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
    pg_schema: str,
    sent: list[str],
) -> None:
    """An incremental re-run with nothing new asks the warehouse as much for one table as for five (it
    asked once per table whether its target exists). A mixed-case target_name is found where the
    warehouse holds it (Redshift: lowercase); a target dropped since is read again from the beginning."""
    names = [f"t{i}" for i in range(TABLES)]
    mysql_exec(
        mysql_db,
        *[f"CREATE TABLE {n} (id INT PRIMARY KEY, v VARCHAR(10))" for n in names],
        *[f"INSERT INTO {n} VALUES (1, 'a'), (2, 'b')" for n in names],
    )
    tables = [f"{mysql_db}.{n}" for n in names]
    config = {t: {"cdc_strategy": "id_only"} for t in tables}
    config[tables[1]]["target_name"] = "Mixed_T1"
    target, connect = target_of(warehouse, pg_target, s3_endpoint)
    cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn, config)

    def sync(*run: str) -> dict[str, Any]:
        sent.clear()
        doc = run_doc(cfg, run, connect)
        assert doc["status"] == "success", doc
        return doc

    assert all(r["rows_processed"] == 2 for r in sync(*tables)["table_results"].values())
    held = {r[0] for r in pg_fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", pg_schema)}
    mixed = "mixed_t1" if warehouse == "redshift" else "Mixed_T1"
    assert mixed in held, held

    sync(tables[0])
    one = len(sent)
    doc = sync(*tables)
    assert all(r["rows_processed"] == 0 for r in doc["table_results"].values()), doc
    assert len(sent) == one, sent  # was one catalog query more per table

    pg_fetch(f'DROP TABLE "{pg_schema}"."{mixed}"')
    mysql_exec(mysql_db, f"INSERT INTO {names[1]} VALUES (3, 'c')", f"INSERT INTO {names[2]} VALUES (3, 'c')")
    results = sync(*tables)["table_results"]
    assert [results[t]["rows_processed"] for t in tables] == [0, 3, 1, 0, 0], results
    assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}"."{mixed}"')[0][0] == 3
    assert pg_fetch(f'SELECT count(*) FROM "{pg_schema}".t2')[0][0] == 3


@pytest.fixture
def source_sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every query the run's MySQL connections send (asked for rows)."""
    queries: list[str] = []
    fetchall = SourceConnection.fetchall

    async def counted(self: SourceConnection, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        queries.append(sql)
        return await fetchall(self, sql, args)

    monkeypatch.setattr(SourceConnection, "fetchall", counted)
    yield queries


def test_dry_run_reads_the_states_listings_and_catalog_once(
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    mysql_db: str,
    sent: list[str],
    source_sent: list[str],
) -> None:
    """A dry run of five tables asks the warehouse, and the source's catalog, as much as one of one table
    (it asked once per table: the state, the committed stages, whether the target exists; the catalog
    rounds), and its plan of each table is the one it makes of that table alone."""
    names = [f"t{i}" for i in range(TABLES)]
    mysql_exec(
        mysql_db,
        *[f"CREATE TABLE {n} (id INT PRIMARY KEY, v VARCHAR(10))" for n in names],
        *[f"INSERT INTO {n} VALUES (1, 'a'), (2, 'b')" for n in names],
    )
    tables = tuple(f"{mysql_db}.{n}" for n in names)
    config = {t: {"cdc_strategy": "id_only" if i % 2 else "full_sync"} for i, t in enumerate(tables)}
    cfg = write_config(tmp_path / "cfg", source_conn, pg_target, s3_conn, config)
    assert run_doc(cfg, tables, None)["status"] == "success"

    def dry_run(*run: str) -> tuple[dict[str, Any], int, int]:
        sent.clear()
        source_sent.clear()
        doc = anyio.run(partial(plan_sync, SyncRequest(pipeline="p", tables=run, config_dir=cfg)))
        assert all(r["status"] == "planned" for r in doc["tables"].values()), doc
        catalog = [q for q in source_sent if "information_schema" in q]
        return doc["tables"], len(sent), len(catalog)

    alone = {t: dry_run(t)[0][t] for t in tables[:2]}
    _, one_sent, one_catalog = dry_run(tables[1])  # incremental: its target is looked for
    planned, all_sent, all_catalog = dry_run(*tables)
    assert (all_sent, all_catalog) == (one_sent, one_catalog), (sent, source_sent)
    for table, plan in alone.items():
        assert _same_plan(planned[table]) == _same_plan(plan), table


def _same_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """A table's plan without what differs between two dry runs (the run's id and the staging table named
    after it, the source's clock)."""
    run = plan["s3_prefix"].rstrip("/").rsplit("/", 1)[1]
    text = re.sub(r"s3shift_stage_[0-9a-f]+", "STAGING", dumps(plan).replace(run, "RUN"))
    return {k: v for k, v in loads(text).items() if k not in ("source_now", "window")}


COUNTED_CLI = (  # the real CLI, saying on stderr each time it loads a pipeline's config
    "import sys\n"
    "import src.cli.main as m\n"
    "import src.engine.run as r\n"
    "load = r.load_pipeline\n"
    "def counted(*args):\n"
    "    print('LOADING CONFIG', file=sys.stderr, flush=True)\n"
    "    return load(*args)\n"
    "r.load_pipeline = counted\n"
    "m.main()\n"
)


@pytest.mark.parametrize("pipeline", ["p", "nope"])
def test_sync_loads_the_config_once(
    pipeline: str, tmp_path: Path, source_conn: SourceConn, pg_target: TargetConn, s3_conn: S3Conn
) -> None:
    """``sync`` reads connections.yml and the pipeline file once (it read them twice: for the number of
    processes to fork, then for the run); a config that does not load fails every table as before."""
    cfg = write_config(
        tmp_path / "cfg", source_conn, pg_target, s3_conn, {"a.b": {"cdc_strategy": "full_sync"}}
    )
    args = ("--config-dir", str(cfg), "sync", "-p", pipeline, "-t", "x.y", "-t", "x.z")
    doc, proc = run_json(*args, cli=(sys.executable, "-c", COUNTED_CLI))
    assert proc.returncode == 1 and doc["status"] == "failed", proc.stderr
    assert proc.stderr.count("LOADING CONFIG") == 1, proc.stderr
    results = doc["table_results"]
    if pipeline == "p":  # the source lacks the tables
        assert {r["phase"] for r in results.values()} == {"introspect"}, results
    else:
        known = "known pipelines: p"
        assert all(r["phase"] == "config" and known in r["error_message"] for r in results.values()), results


@pytest.mark.parametrize("warehouse", ["postgres", "redshift"])
def test_target_name_changed_only_in_case(
    warehouse: str,
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On Redshift ``Orders`` and ``orders`` are one table: a target_name changed only in case keeps the
    watermark (the next run read the whole table again, warning its watermark was committed for another
    target). On PostgreSQL they are two tables: the new one is read from the beginning."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE ev (id INT PRIMARY KEY, v VARCHAR(10))",
        "INSERT INTO ev VALUES (1, 'a'), (2, 'b')",
    )
    table = f"{mysql_db}.ev"
    target, connect = target_of(warehouse, pg_target, s3_endpoint)

    def sync(name: str) -> dict[str, Any]:
        config = {table: {"cdc_strategy": "id_only", "target_name": name}}
        doc = run_doc(write_config(tmp_path / name, source_conn, target, s3_conn, config), (table,), connect)
        assert doc["status"] == "success", doc
        return dict(doc["table_results"][table])

    assert sync("Orders")["rows_processed"] == 2
    mysql_exec(mysql_db, "INSERT INTO ev VALUES (3, 'c')")
    caplog.clear()
    again = sync("orders")
    if warehouse == "redshift":
        assert again["rows_processed"] == 1, again
        assert "reading it from the beginning" not in caplog.text
    else:
        assert again["rows_processed"] == 3, again
        assert "reading it from the beginning" in caplog.text


@pytest.mark.parametrize("warehouse", ["postgres", "redshift"])
def test_target_dropped_during_the_run_fails_the_load_and_the_next_run_reads_it_all(
    warehouse: str,
    tmp_path: Path,
    source_conn: SourceConn,
    pg_target: TargetConn,
    s3_conn: S3Conn,
    s3_endpoint: str,
    mysql_db: str,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run lists its targets at its start: a target dropped after that (a rebuild, while a long run
    works through its other tables) was created afresh by the load and given the new window alone,
    status success, every older row silently gone. The load now refuses, retryable, nothing changed; the
    next run finds the target gone and reads the whole table."""
    mysql_exec(
        mysql_db,
        "CREATE TABLE ev (id INT PRIMARY KEY, v VARCHAR(10))",
        "INSERT INTO ev VALUES (1, 'a'), (2, 'b')",
    )
    table = f"{mysql_db}.ev"
    target, connect = target_of(warehouse, pg_target, s3_endpoint)
    cfg = write_config(tmp_path / "cfg", source_conn, target, s3_conn, {table: {"cdc_strategy": "id_only"}})

    def sync() -> dict[str, Any]:
        return run_doc(cfg, (table,), connect)

    assert sync()["table_results"][table]["rows_processed"] == 2
    mysql_exec(mysql_db, "INSERT INTO ev VALUES (3, 'c')")
    listing = SqlWarehouse.existing_tables

    async def listed_then_dropped(self: SqlWarehouse, schema_name: str, tables: Any) -> set[str]:
        found = await listing(self, schema_name, tables)
        await anyio.to_thread.run_sync(pg_fetch, f'DROP TABLE "{pg_schema}".ev')  # right after the run saw it
        return found

    with monkeypatch.context() as patched:
        patched.setattr(SqlWarehouse, "existing_tables", listed_then_dropped)
        doc = sync()
    result = doc["table_results"][table]
    assert doc["status"] == "failed" and result["retryable"] is True, doc
    assert "no longer exists" in result["error_message"] and "from the beginning" in result["error_message"]
    assert pg_fetch("SELECT to_regclass($1)", f"{pg_schema}.ev")[0][0] is None  # not created afresh
    doc = sync()
    assert doc["status"] == "success" and doc["table_results"][table]["rows_processed"] == 3, doc
    assert [r[0] for r in pg_fetch(f'SELECT id FROM "{pg_schema}".ev ORDER BY id')] == [1, 2, 3]
