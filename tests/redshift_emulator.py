"""Test-only Redshift emulation: the Redshift loader's SQL, unchanged, against a real PostgreSQL.

``RedshiftEmulator`` is an ``Executor`` over an asyncpg connection. Through ``tests/redshift_sql.py`` it
rewrites Redshift-only syntax for PostgreSQL (DISTSTYLE/DISTKEY/SORTKEY/ENCODE/BACKUP clauses dropped,
VARBYTE(n) -> the domain public."varbyte(n)" over bytea with an octet_length check, created on demand, so
the catalog and the COPY rules keep the length; SUPER -> jsonb, JSON_PARSE(x) -> jsonb(x), GETDATE() ->
the statement's UTC start) outside quoted identifiers and literals, refuses PostgreSQL-only syntax
Redshift lacks (ON CONFLICT, RETURNING, FOR UPDATE/SHARE, LOCK ... IN ... MODE, advisory locks,
clock_timestamp, SET TRANSACTION, TRUNCATE inside a transaction: it commits there) and the ALTER TABLE
forms Redshift refuses (several actions in one statement; ALTER COLUMN TYPE to anything but a VARCHAR,
inside a transaction block, or on a primary-key column; ADD PRIMARY KEY on a nullable column), runs
transactions SERIALIZABLE whatever BEGIN says (like Redshift, a transaction's snapshot is fixed by its
first query, not by a LOCK it waited on), checks each statement of a message of several (``BEGIN; LOCK
...``) on its own, and carries out ``COPY t FROM 's3://.../manifest.json' IAM_ROLE '...' FORMAT AS PARQUET
MANIFEST`` by reading the manifest and the Parquet files from the moto S3 server. Before inserting
anything it ENFORCES the documented COPY-Parquet rules (research/reliability.md section 2.2): only the
options Redshift accepts for Parquet; manifest entries mandatory with a content_length equal to the
object's size (other keys, such as UNLOAD MANIFEST VERBOSE's record_count and totals or s3shift's own, are
ignored, as AWS documents COPY doing for UNLOAD's manifests; only a real cluster can confirm it); no empty
manifest; column count equal and mapping by POSITION; each Parquet type compatible with the declared
column type (decimal precision and scale equal, no INT64 NANOS, no TIME, no unsigned 64-bit, no decimal
into an integer); VARCHAR(n) in BYTES; valid UTF-8; rows of at most 4 MB. Any violation fails the whole
COPY with ``asyncpg.exceptions.InternalServerError`` (SQLSTATE XX000), as Redshift does. Each file is held
in memory while it is checked: fine for tests, not a production reader."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg
import boto3
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from asyncpg.exceptions import InternalServerError, UndefinedTableError
from pgpq import ArrowToPostgresBinaryEncoder

from src.config.models import TargetConn
from tests.redshift_sql import (
    BEGIN_WORDS,
    END_WORDS,
    add_key_target,
    alter_type_target,
    check_redshift_sql,
    first_word,
    rewrite,
    split_statements,
    tokenize,
)

MAX_ROW_BYTES = 4 * 1024 * 1024
PARQUET_OPTIONS = {
    "IAM_ROLE",
    "FORMAT",
    "AS",
    "PARQUET",
    "MANIFEST",
    "STATUPDATE",
    "ON",
    "OFF",
    "TRUE",
    "FALSE",
}


# ---- COPY parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyCommand:
    table: str  # as written (quoted identifiers), for to_regclass
    manifest_url: str
    iam_role: str


def redshift_unquote(literal: str) -> str:
    """A Redshift string literal's value: '' and backslash escapes both apply."""
    inner = literal[1:-1]
    return re.sub(r"''|\\(.)", lambda m: "'" if m.group(0) == "''" else m.group(1), inner, flags=re.S)


def fail(message: str) -> InternalServerError:
    return InternalServerError(message)


def parse_copy(sql: str) -> CopyCommand | None:
    words = [t for t in tokenize(sql) if not t.isspace()]
    if not words or words[0].upper() != "COPY":
        return None
    try:
        at_from = next(i for i, t in enumerate(words) if t.upper() == "FROM")
    except StopIteration:
        raise fail("COPY without FROM") from None
    table, rest = "".join(words[1:at_from]), words[at_from + 1 :]
    if not rest or not rest[0].startswith("'"):
        raise fail("COPY FROM needs an 's3://' literal")
    options, role = [w.upper() for w in rest[1:] if not w.startswith("'")], None
    for before, word in itertools.pairwise(rest):
        if before.upper() == "IAM_ROLE" and word.startswith("'"):
            role = redshift_unquote(word)
    for word in options:
        if word not in PARQUET_OPTIONS:
            raise fail(f"{word} argument is not supported for PARQUET based COPY")
    if "PARQUET" not in options or "MANIFEST" not in options or role is None:
        raise fail("emulator: only COPY ... IAM_ROLE '...' FORMAT AS PARQUET MANIFEST is emulated")
    return CopyCommand(table=table, manifest_url=redshift_unquote(rest[0]), iam_role=role)


# ---- COPY-Parquet rules ---------------------------------------------------------------------------


def split_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://") or "/" not in url[5:]:
        raise fail(f"Invalid S3 URL {url!r}")
    bucket, _, key = url[5:].partition("/")
    return bucket, key


def manifest_entries(s3: Any, manifest_url: str) -> list[tuple[str, int]]:
    bucket, key = split_url(manifest_url)
    try:
        doc = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        raise fail(f"Manifest file {manifest_url} not found") from None
    entries = doc.get("entries") if isinstance(doc, dict) else None
    if not entries:
        raise fail(f"Manifest file {manifest_url} has no entries: COPY found no files to load")
    out = []
    for entry in entries:
        url, length = entry.get("url"), entry.get("meta", {}).get("content_length")
        if entry.get("mandatory") is not True:
            raise fail(f"emulator: manifest entry {url} is not mandatory (s3shift manifests must be)")
        if not isinstance(length, int):
            raise fail(f"Manifest entry {url} lacks meta.content_length, which Parquet COPY requires")
        out.append((url, length))
    return out


def fetch_file(s3: Any, url: str, length: int) -> bytes:
    bucket, key = split_url(url)
    try:
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    except s3.exceptions.ClientError:
        raise fail(f"Problem reading manifest file - S3 object {url} does not exist") from None
    if size != length:
        raise fail(f"File {url} has length {size} but the manifest's content_length is {length}")
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


_NUMERIC = re.compile(r"numeric\((\d+),(\d+)\)")
_VARBYTE = re.compile(r'"varbyte\((\d+)\)"')
_VARCHAR = re.compile(r"character(?: varying)?\((\d+)\)")
_INT_BITS = {"smallint": 16, "integer": 32, "bigint": 64}
_INT_ARROW = {"smallint": pa.int16(), "integer": pa.int32(), "bigint": pa.int64()}


def target_type(pg_type: str, src: pa.DataType, physical: str, where: str) -> pa.DataType:
    """The Arrow type to load ``src`` as into a column declared ``pg_type``, or raise like Redshift."""
    ok: pa.DataType | None = None
    if pa.types.is_time(src) or pa.types.is_nested(src):
        ok = None
    elif pg_type == "boolean" and pa.types.is_boolean(src):
        ok = pa.bool_()
    elif pg_type in _INT_BITS and pa.types.is_integer(src) and src != pa.uint64():
        width = src.bit_width * (2 if pa.types.is_unsigned_integer(src) else 1)  # unsigned needs wider
        ok = _INT_ARROW[pg_type] if width <= _INT_BITS[pg_type] else None
    elif (m := _NUMERIC.fullmatch(pg_type)) and pa.types.is_decimal128(src):
        ok = src if (src.precision, src.scale) == (int(m[1]), int(m[2])) else None
    elif pg_type in {"real", "double precision"} and pa.types.is_floating(src):
        ok = pa.float32() if pg_type == "real" and src == pa.float32() else None
        ok = pa.float64() if pg_type == "double precision" else ok
    elif (_VARCHAR.fullmatch(pg_type) or pg_type == "text") and pa.types.is_string(src):
        ok = pa.string()
    elif (pg_type == "bytea" or _VARBYTE.fullmatch(pg_type)) and (
        pa.types.is_binary(src) or pa.types.is_large_binary(src)
    ):
        ok = pa.binary()
    elif pg_type == "date" and pa.types.is_date32(src):
        ok = pa.date32()
    elif pg_type.startswith("timestamp") and pa.types.is_timestamp(src):
        if src.unit == "ns" and physical != "INT96":
            raise fail(f"{where}: INT64 TIMESTAMP(NANOS) is not supported: write MICROS or MILLIS")
        ok = pa.timestamp("us", tz="UTC" if pg_type.endswith("with time zone") else None)
    if ok is None:
        raise fail(
            f"Spectrum Scan Error: {where}: incompatible Parquet schema. Column type: {pg_type}, "
            f"Parquet schema: {physical} {src}"
        )
    return ok


def check_values(arr: pa.ChunkedArray, pg_type: str, where: str) -> None:
    if (m := _VARBYTE.fullmatch(pg_type)) and len(arr):
        longest = pc.max(pc.binary_length(arr)).as_py() or 0
        if longest > int(m[1]):
            raise fail(f"{where}: value too long for type binary varying({m[1]}): {longest} bytes")
    if not pa.types.is_string(arr.type):
        return
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        raise fail(f"{where}: String contains invalid or unsupported UTF8 codepoints") from None
    m = _VARCHAR.fullmatch(pg_type)
    longest = pc.max(pc.binary_length(arr)).as_py() or 0
    if m and longest > int(m[1]):
        raise fail(
            f"{where}: the length of the data is longer than the length defined in the table. "
            f"Table: {m[1]}, Data: {longest}"
        )


def check_row_size(table: pa.Table, where: str) -> None:
    total = None
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_binary(column.type):
            sizes = pc.fill_null(pc.binary_length(column), 0)
            total = sizes if total is None else pc.add(total, sizes)
    if total is not None and (pc.max(total).as_py() or 0) > MAX_ROW_BYTES:
        raise fail(f"{where}: a row is larger than the 4 MB COPY limit")


def conform_file(data: bytes, url: str, columns: list[tuple[str, str]]) -> pa.Table:
    """The file's rows as the staging columns' Arrow types, mapped by POSITION, every rule checked."""
    pf = pq.ParquetFile(io.BytesIO(data))
    fields = pf.schema_arrow
    if len(fields) != len(columns):
        raise fail(f"Spectrum Scan Error: File {url} has {len(fields)} columns; the table has {len(columns)}")
    table, arrays = pf.read(), []
    for i, (name, pg_type) in enumerate(columns):
        where = f"file {url} column {i + 1} ({name})"
        physical = pf.schema.column(i).physical_type if not pa.types.is_nested(fields[i].type) else "GROUP"
        want = target_type(pg_type, fields[i].type, physical, where)
        check_values(table.column(i), pg_type, where)
        arrays.append(table.column(i).cast(want, safe=physical != "INT96"))
    result = pa.Table.from_arrays(arrays, names=[n for n, _ in columns])
    check_row_size(result, f"file {url}")
    return result


_S3_CLIENTS: dict[tuple[int, str], Any] = {}
_S3_LOCK = threading.Lock()


def _s3_client(endpoint: str) -> Any:
    """One client per endpoint and process (a forked worker opens its own connections): boto3 clients
    are thread-safe, and a new session and client per COPY cost ~0.1 s of CPU, loading botocore's service
    model again."""
    key = (os.getpid(), endpoint)
    with _S3_LOCK:
        if key not in _S3_CLIENTS:
            session = boto3.session.Session()
            _S3_CLIENTS[key] = session.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        return _S3_CLIENTS[key]


# ---- the Executor ---------------------------------------------------------------------------------

# Redshift's VARBYTE(n), kept in the catalog: a domain per length, created once (concurrent creators and a
# transaction's rollback are both fine: the check runs in a subtransaction).
_VARBYTE_DOMAIN = """DO $$BEGIN
  IF to_regtype('public."varbyte({n})"') IS NULL THEN
    CREATE DOMAIN public."varbyte({n})" AS bytea CHECK (octet_length(VALUE) <= {n});
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END$$"""


class RedshiftEmulator:
    """An Executor that behaves like Redshift for the SQL ``src.warehouse.redshift`` sends."""

    def __init__(self, conn: Any, *, s3_endpoint: str) -> None:
        self.conn = conn
        self.s3_endpoint = s3_endpoint
        self.statements: list[str] = []  # every message as the loader sent it, for assertions

    async def _accept(self, query: str) -> str:
        """The message for PostgreSQL: each statement checked (a transaction opened or ended by an earlier
        one of the same message counts) and rewritten; a BEGIN, whatever its level, SERIALIZABLE."""
        self.statements.append(query)
        in_transaction, out = self.conn.is_in_transaction(), []
        for statement in split_statements(query):
            word = first_word(statement)
            if word in BEGIN_WORDS | END_WORDS:
                in_transaction = word in BEGIN_WORDS
                out.append("BEGIN ISOLATION LEVEL SERIALIZABLE" if in_transaction else statement)
                continue
            check_redshift_sql(statement, in_transaction=in_transaction)
            out.append(await self._rewrite(statement))
        return "; ".join(out)

    async def _rewrite(self, statement: str) -> str:
        sql = rewrite(statement)
        for size in sorted({int(n) for n in _VARBYTE.findall(sql)}):
            await self.conn.execute(_VARBYTE_DOMAIN.format(n=size))
        target = alter_type_target(statement)
        if target is not None and target[1] in await self._primary_key(target[0]):
            raise InternalServerError(f"emulator: cannot alter type of column {target[1]!r}: it is a key")
        keyed = add_key_target(statement)
        nullable = [c for c in keyed[1] if c not in await self._not_null(keyed[0])] if keyed else []
        if nullable:  # PostgreSQL makes them NOT NULL; Redshift refuses (its ALTER TABLE reference)
            raise InternalServerError(
                f"emulator: cannot add a primary key to nullable column {nullable[0]!r}"
            )
        return sql

    async def _primary_key(self, table: str) -> set[str]:
        rows = await self.conn.fetch(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass($1) AND i.indisprimary",
            table,
        )
        return {r[0] for r in rows}

    async def _not_null(self, table: str) -> set[str]:
        rows = await self.conn.fetch(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 "
            "AND attnotnull AND NOT attisdropped",
            table,
        )
        return {r[0] for r in rows}

    def get_server_pid(self) -> int:
        return int(self.conn.get_server_pid())

    def terminate(self) -> None:
        self.conn.terminate()

    async def execute(self, query: str, *args: Any) -> str:
        sql = await self._accept(query)
        command = parse_copy(query)
        if command is not None and len(split_statements(query)) > 1:
            raise fail("emulator: a COPY from S3 is emulated only alone in its message")
        if command is not None:
            return await self._copy(command)
        return str(await self.conn.execute(sql, *args))

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        return list(await self.conn.fetch(await self._accept(query), *args))

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self.conn.fetchval(await self._accept(query), *args)

    async def _table(self, table: str) -> tuple[str, str, list[tuple[str, str]]]:
        """(schema, name, [(column, declared type)]) of the COPY's table, by to_regclass."""
        rows = await self.conn.fetch(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod) "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            table,
        )
        if not rows:
            raise UndefinedTableError(f"relation {table} does not exist")
        return rows[0][0], rows[0][1], [(r[2], r[3]) for r in rows]

    def _s3(self) -> Any:
        return _s3_client(self.s3_endpoint)

    async def _copy(self, command: CopyCommand) -> str:
        schema, name, columns = await self._table(command.table)
        s3 = await anyio.to_thread.run_sync(self._s3)
        entries = await anyio.to_thread.run_sync(manifest_entries, s3, command.manifest_url)

        def read(url: str, length: int) -> pa.Table:
            return conform_file(fetch_file(s3, url, length), url, columns)

        async def source() -> AsyncIterator[bytes]:
            encoder = None  # one binary COPY stream: one header, every file's rows, one trailer
            for url, length in entries:  # a bad file aborts the whole COPY (asyncpg sends CopyFail)
                table = await anyio.to_thread.run_sync(read, url, length)
                if encoder is None:
                    encoder = ArrowToPostgresBinaryEncoder(table.schema)
                    yield encoder.write_header()
                for batch in table.to_batches():
                    yield await anyio.to_thread.run_sync(encoder.write_batch, batch)
            if encoder is not None:
                yield encoder.finish()

        status = await self.conn.copy_to_table(
            name, schema_name=schema, source=source(), columns=[c for c, _ in columns], format="binary"
        )
        return str(status)


def emulator_connect(
    s3_endpoint: str, sessions: list[RedshiftEmulator] | None = None
) -> Callable[[TargetConn], AbstractAsyncContextManager[RedshiftEmulator]]:
    """A ``RedshiftConnect`` that opens PostgreSQL at the target's host/port and wraps it.

    Each emulator opened is appended to ``sessions`` (when given), so tests can inspect its SQL.
    """

    @asynccontextmanager
    async def connect(cfg: TargetConn) -> AsyncIterator[RedshiftEmulator]:
        conn = await asyncpg.connect(
            host=cfg.host,
            port=cfg.port,
            user=cfg.username,
            password=cfg.password.reveal() or None,
            database=cfg.database,
            timeout=cfg.connect_timeout,
        )
        emulator = RedshiftEmulator(conn, s3_endpoint=s3_endpoint)
        if sessions is not None:
            sessions.append(emulator)
        try:
            yield emulator
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close(timeout=10)

    return connect
