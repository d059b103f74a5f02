"""The bulk extract path: primary-key ranges read in parallel by connectorx (Rust, MySQL binary protocol,
straight into Arrow), for full reads, id_only windows and wide timestamp windows (their predicate a
filter of every range: ``src.source.window.window_filter``) of big tables whose every column it carries
exactly. A key whose first column is no integer has no ranges to compute: its table is read in keyset
pages instead (``FastRead._pages``), one connectorx read at a time, each after the last key of the one
before (``key_literal``).

The asyncmy path (``src.source.extract``) stays canonical: this one must give the same Arrow data, which
``tests/test_source_fastpath.py`` proves type by type on edge values. How it stays exact:
- only columns whose connectorx type converts losslessly are allowed (``blocker`` names the first that is
  not: TIME, GEOMETRY, MariaDB's UUID/INET types); each batch is cast to the planned
  Arrow types with safe casts (DECIMAL arrives as decimal128(38,10), or as text when wider than that
  holds, BIT as its number, unsigned and small integers widened), then the canonical path's text
  policies and the TINYINT(1)-as-BOOLEAN check run on the arrays;
- connectorx aborts (a Rust panic) on a zero or invalid date. A table's ranges are first read with the
  dates as stored: the server's cheapest read (on `orders`, the guard below costs MariaDB about a third
  more CPU). The first panic switches the table to guarded reads, from that range on: every
  DATE/DATETIME/TIMESTAMP selected as ``col + INTERVAL 0 DAY`` (NULL for exactly those dates), next to
  one integer column whose bits say which nullable date columns are NULL at the source (``ISNULL``:
  far cheaper for the server than a second date expression per column); a NULL the source does not
  have is such a date, which stays NULL and is counted (``zero_date: null``, as the canonical path
  does), or under ``zero_date: fail`` sends its batch to the canonical path, whose error names it. A
  year-0 date ('0000-01-01') does not panic: read unguarded, a batch holding one goes to the canonical
  path too (Python has no year 0). The panic's report on stderr is the CLI's to drop
  (``src.common.log.NativeStderr``);
- any error of connectorx on a range (and a flagged batch) hands the rest of that range, after the last
  key already sent, to the canonical path on the table's own connection; but a lock wait that timed out
  (MySQL error 1205) fails the table, retryable, as on the canonical path, which would wait as long
  again. Rows are read in key order, so nothing is read twice or skipped. A composite key's range (split
  on its first column, whose values repeat) is converted whole before any of it is sent, so a handover
  takes the whole range: its rest could not start inside one value of that column. A range holding
  more than twice ``range_rows`` under one such value is read by ranges of the key's next column when
  that is an integer too (``_split_value``), else streamed by the canonical path;
- a login refused mid-run (the password changed, max_connections reached: connectorx reports it only
  after retrying it for 30 s) ends connectorx for the run (``refuse``): the reads waiting for a login are
  given up and every range left, of this table and of every later one, is read by the canonical path,
  on connections already open (a new one the server refuses too fails the table at once, naming why).

Connections: the table's own pooled connection plans the ranges and serves the fallbacks; connectorx
opens one connection per worker, each under a token of the source's connection budget taken without
waiting (``MySQLSource.reserve``): with no token free the table is read by the canonical path. The
workers share a queue of ranges (``src.source.ranges``). Each worker holds one range in memory (at most
``RANGE_BYTES`` of MySQL's average row length), then the bounded stream between extract and stage.
connectorx has no timeouts: each read runs in a daemon thread bounded by the source's ``read_timeout``,
after which its range is handed over like any other failure.

Like any multi-connection read, the ranges are not one snapshot: a row inserted or deleted while the
table is read may or may not be in this run's copy (the next run has it); an updated row is read once,
in one state or the other.
"""

from __future__ import annotations

import collections
import contextlib
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import partial
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import asyncmy.errors
import pyarrow as pa
import pyarrow.compute as pc

from src.common.errors import S3ShiftError
from src.common.keyorder import after_position
from src.common.log import get_logger
from src.common.memory import release_freed_memory
from src.common.naming import qualify_mysql, quote_mysql
from src.common.schema import Column, TableSchema
from src.common.secret import Secret, scrub
from src.config.models import SourceConn
from src.source.convert import ZERO_DATE, Coercions, numbers_to_bool
from src.source.extract import ExtractStats, stream_query, with_filter
from src.source.keyset import member_ordered, unique_key
from src.source.mysql import MySQLSource, SourceConnection, session_sql, source_error
from src.source.ranges import KeyRange, integer_key, key_bounds, row_bytes, split, split_key
from src.source.text import ReadRules, text_rules
from src.source.typemap import data_type_of
from src.source.window import explain_rows

connectorx: Any
try:
    import connectorx
except ImportError:  # a platform without its wheels: the asyncmy path reads every table
    connectorx = None

log = get_logger("source.fastpath")
T = TypeVar("T")
MIN_ROWS = 100_000  # below this (estimated) one pooled asyncmy connection is as quick
RANGE_BYTES = 12 * 1024 * 1024  # a range in MySQL's average row length: a worker holds one range in memory
MIN_RANGE_ROWS = 1_000
MAX_MYSQL_INT = 2**64 - 1  # BIGINT UNSIGNED: no integer key lies above it
DECIMAL_DIGITS = 28  # connectorx reads DECIMAL into rust_decimal (28 digits), then at scale 10
_INTEGERS = frozenset({"tinyint", "smallint", "mediumint", "int", "bigint", "year"})
_TEXTS = frozenset({"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set", "json"})
_BINARIES = frozenset({"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"})
_DATES = {"date": "date", "timestamp": "datetime", "timestamptz": "timestamp"}  # logical -> DATA_TYPE
# key columns a page can start after: their values written as literals no sql_mode reads otherwise
_PAGE_KEYS = frozenset({"bool", "int16", "int32", "int64", "decimal", "string", "binary"})
_URL = re.compile(r"mysql://\S*")
_SERVER_ERROR = re.compile(
    r"ERROR (\d+) \(\w+\): (.*?)\s*\}?\s*$"
)  # connectorx: MySqlError { ERROR 1205 (HY000): … }
_NOT_HANDED_OVER = frozenset({1205})  # a lock wait: the canonical path would wait as long again
# the server refused the login: access denied (to the user, the database), too many connections (the
# server's, the user's), host blocked or not allowed, auth plugin, expired password, account locked
_LOGIN_REFUSED = frozenset({1040, 1044, 1045, 1129, 1130, 1203, 1226, 1251, 1524, 1820, 1862, 3118, 4151})
_NO_CONNECTION = "timed out waiting for connection"  # r2d2, connectorx's pool: 30 s of failed logins


class KeyLayout(NamedTuple):
    """A window's keys as the table holds them (``key_layout``): its lowest and highest key, and the rows
    per range a worker reads."""

    low: int
    high: int
    range_rows: int


def column_blocker(column: Column) -> str | None:
    """Why connectorx cannot carry this column exactly (None: it can)."""
    data_type, logical = data_type_of(column), column.logical
    if logical in ("int16", "int32", "int64"):
        ok = data_type in _INTEGERS or data_type == "bit"
    elif logical == "bool":
        ok = data_type in ("tinyint", "bit")
    elif logical == "decimal" and data_type == "decimal":
        ok = True  # wider than connectorx's own decimal: as text (``_as_text``), cast exactly
    elif logical == "decimal":
        ok = data_type in ("bigint", "bit")  # BIGINT UNSIGNED and BIT(64) + 0 arrive as uint64
    elif logical in ("float32", "float64"):
        ok = data_type in ("float", "double")
    elif logical in ("string", "json"):
        ok = data_type in _TEXTS
    elif logical == "binary":
        ok = data_type in _BINARIES
    else:
        ok = _DATES.get(logical) == data_type
    return None if ok else f"{column.source_type} is read by the asyncmy path only"


def blocker(schema: TableSchema) -> str | None:
    """Why the table cannot take the fast path (None: it can): key ranges when its key's first column is
    an integer, else keyset pages (``paged``)."""
    if connectorx is None:
        return "connectorx is not installed on this platform"
    if paged(schema):
        key = unique_key(schema)
        if key is None:
            date = next((c for c in map(schema.column, schema.primary_key) if c.logical in _DATES), None)
            if date is not None:  # planned nullable: a zero date is read as NULL, which follows no key
                return f"the primary key's column {date.name!r} ({date.source_type}) may hold a zero date"
            return "the table has no primary key (or a nullable configured one) to read in key order"
        for column in key:
            if member_ordered(column) or column.logical not in _PAGE_KEYS:
                return f"the primary key's column {column.name!r} ({column.source_type}) cannot bound a page"
    for column in schema.columns:
        if reason := column_blocker(column):
            return f"column {column.name!r}: {reason}"
    return None


def paged(schema: TableSchema) -> bool:
    """The fast path reads the table in keyset pages, not in key ranges: the key's first column is no
    integer (a UUID, a code, a ``(code, n)`` key)."""
    return split_key(schema) is None


def connection_url(cfg: SourceConn, database: str, *, tls: bool | None) -> str:
    """connectorx's URL; the quoted password is registered as a secret so no message can show it. ``tls``:
    whether the pool's connections use it (``MySQLSource.tls``): connectorx's own ``preferred`` refuses a
    server without TLS (after 30 s of retries), so it is told what the pool found."""
    password = cfg.password.reveal()
    quoted = quote(password, safe="")
    Secret(quoted)
    user = quote(cfg.username, safe="")
    auth = f"{user}:{quoted}" if password else user
    url = f"mysql://{auth}@{cfg.host}:{cfg.port}/{quote(database, safe='')}"
    if not tls:
        return url
    mode = cfg.ssl_mode if cfg.ssl_mode.startswith("verify_") else "required"
    return url + f"?ssl-mode={mode}" + (f"&ssl-ca={quote(cfg.ssl_ca, safe='')}" if cfg.ssl_ca else "")


def _nullable_dates(schema: TableSchema) -> list[str]:
    """The nullable date columns, in order: bit i of the NULL mask column is the i-th one's ISNULL."""
    return [c.name for c in schema.columns if c.logical in _DATES and c.nullable][:62]


def fast_select(database: str, table: str, schema: TableSchema, where: str, guarded: bool) -> str:
    """The planned columns in key order. ``guarded``: dates through ``+ INTERVAL 0 DAY`` and the NULL mask
    of the nullable date columns last (``_nullable_dates``); otherwise the columns as stored. BIT is read
    as its number (``+ 0``: unsigned), which connectorx carries (its BIT bytes it does not); a DECIMAL too
    wide for connectorx's as text (``_as_text``)."""
    items = []
    for column in schema.columns:
        name = quote_mysql(column.name)
        if data_type_of(column) == "bit":
            items.append(f"{name} + 0 AS {name}")
        elif _as_text(column):
            items.append(f"CAST({name} AS CHAR) AS {name}")
        elif guarded and column.logical in _DATES:
            items.append(f"{name} + INTERVAL 0 DAY AS {name}")
        else:
            items.append(name)
    if guarded:
        bits = [f"ISNULL({quote_mysql(n)}) << {i}" for i, n in enumerate(_nullable_dates(schema))]
        items.append(" | ".join(bits) if bits else "0")
    source = qualify_mysql(database, table)
    # InnoDB's own order: no sort. Each key column qualified: its bare name would be the select item it
    # names (a wide DECIMAL's text, a guarded date), whose order is not the key's
    order = ", ".join(f"{source}.{quote_mysql(k)}" for k in schema.primary_key)
    return f"SELECT {', '.join(items)} FROM {source} WHERE {where}" + (f" ORDER BY {order}" if order else "")


def _as_text(column: Column) -> bool:
    """A DECIMAL wider than connectorx's decimal carries (28 digits, read at scale 10): selected as its
    text, which the planned decimal128 takes by a safe cast (digit for digit)."""
    if column.logical != "decimal" or data_type_of(column) != "decimal":
        return False
    precision, scale = column.precision or 0, column.scale or 0
    return scale > 10 or precision - scale + 10 > DECIMAL_DIGITS


def _invalid_dates(raw: pa.RecordBatch, schema: TableSchema) -> dict[str, int]:
    """Per date column, how many of its values are NULL where the source's are not: zero or invalid
    dates, which the guard (``fast_select``) made NULL."""
    mask = raw.column(len(schema.columns))
    bit = {name: 1 << i for i, name in enumerate(_nullable_dates(schema))}
    found: dict[str, int] = {}
    for index, column in enumerate(schema.columns):
        if column.logical not in _DATES or not raw.column(index).null_count:
            continue
        nulls = pc.is_null(raw.column(index))
        if column.name in bit:  # NULL at the source too: not a bad date
            nulls = pc.and_(nulls, pc.equal(pc.bit_wise_and(mask, bit[column.name]), 0))
        if count := pc.sum(nulls.cast(pa.int64())).as_py():
            found[column.name] = count
    return found


# The first day Python's datetime holds (0001-01-01), in Arrow's units: connectorx reads year 0 as a date
_FIRST_DAY = {pa.date32(): -719_162, pa.timestamp("us"): -62_135_596_800_000_000}


def _year_zero(raw: pa.RecordBatch, schema: TableSchema) -> bool:
    """A date column holds a date before 0001-01-01 (unguarded reads: MySQL stores '0000-01-01')."""
    for index, column in enumerate(schema.columns):
        array = raw.column(index)
        first = _FIRST_DAY.get(array.type)
        if column.logical not in _DATES or first is None or array.null_count == len(array):
            continue
        if pc.min(array).value < first:
            return True
    return False


def to_planned(
    raw: pa.RecordBatch, schema: TableSchema, rules: ReadRules, guarded: bool = True
) -> tuple[pa.RecordBatch | None, Coercions]:
    """connectorx's batch (``fast_select(..., guarded)``) -> one of exactly the planned schema with the
    table's policies applied; None when the canonical path must read it: a year-0 date (unguarded), or
    a zero or invalid date under ``zero_date: fail`` (its error names the value). Under ``zero_date:
    null`` such a date read through the guard is already NULL, and counted as the canonical path counts
    it. CPU work: call it in a worker thread."""
    width = len(schema.columns)
    if raw.num_columns != width + guarded or tuple(raw.schema.names[:width]) != schema.names:
        raise ValueError(f"connectorx returned columns {raw.schema.names}, not {list(schema.names)}")
    bad = _invalid_dates(raw, schema) if guarded else {}
    if (bad and rules.policy.zero_date != "null") or (not guarded and _year_zero(raw, schema)):
        return None, {}
    arrays: list[pa.Array] = []
    coerced: Coercions = {name: {ZERO_DATE: count} for name, count in bad.items()}
    for index, column in enumerate(schema.columns):
        array = raw.column(index)
        if column.logical == "bool":
            array = numbers_to_bool(column, array, rules)
        else:
            array = array.cast(column.arrow_type(), safe=True)
        if column.logical in ("string", "json"):
            array, counts = text_rules(column, array, rules)
            if counts:
                coerced[column.name] = counts
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, schema=schema.arrow_schema()), coerced


@dataclass(frozen=True)
class _Part:
    """A range of one key column (``keys``) within ``fixed``, the values held by the key's columns before
    it (none: a range of the first column); ``bounds``: that column's lowest and highest value there,
    which stand in for an open side."""

    keys: KeyRange
    bounds: tuple[int, int]
    fixed: tuple[int, ...] = ()

    def __str__(self) -> str:
        inside = "".join(f"{v}, " for v in self.fixed)
        return f"[{inside}{self.keys.low}, {self.keys.high})"

    @property
    def low(self) -> int:
        """The lowest value the part's column can hold in it (the only one, when its span is one)."""
        return self.bounds[0] if self.keys.low is None else self.keys.low


@dataclass
class FastRead:
    """One table's fast read: what to read, how to convert it, and where the rows go."""

    source: MySQLSource
    conn: SourceConnection  # the table's own connection: range checks and fallbacks
    database: str
    table: str
    schema: TableSchema
    rules: ReadRules
    send: anyio.abc.ObjectSendStream[pa.RecordBatch]
    stats: ExtractStats
    batch_size: int
    range_rows: int
    workers: int
    where: str | None = None
    cpu_limiter: anyio.CapacityLimiter | None = None
    after: int | None = None  # an id_only window: keys after this one (exclusive) ...
    upto: int | None = None  # ... up to this one (inclusive); None: the whole table
    ranges: tuple[KeyRange, ...] = ()  # the ranges to read, planned before (a unit of a plan); (): plan them
    blocked: str = ""  # why connectorx must not read them (planned ranges only): the asyncmy path reads each
    fallbacks: list[str] = field(default_factory=list)
    _queue: collections.deque[_Part] = field(default_factory=collections.deque)
    _lock: anyio.Lock = field(default_factory=anyio.Lock)
    _guarded: bool = False  # dates through the guard (``fast_select``): since a range panicked on one

    @property
    def key(self) -> Column:
        key = split_key(self.schema)
        assert key is not None
        return key

    def _column(self, part: _Part) -> str:
        """The key column ``part`` is a range of."""
        return self.schema.primary_key[len(part.fixed)]

    def _unique(self, part: _Part) -> bool:
        """``part``'s column ends the key: one row per value (else a value may hold many)."""
        return len(part.fixed) + 1 == len(self.schema.primary_key)

    def _condition(self, part: _Part) -> str:
        """SQL text of ``part`` (its values are ints we read or computed, formatted as literals)."""
        key = self.schema.primary_key
        held = [f"{quote_mysql(c)} = {int(v)}" for c, v in zip(key, part.fixed, strict=False)]
        return " AND ".join([*held, part.keys.condition(self._column(part))])

    @property
    def window(self) -> KeyRange:
        """The keys to read: the whole table, or an id_only window ``(after, upto]``."""
        return key_window(self.after, self.upto)

    async def run(self, estimated_rows: int) -> None:
        """Read every range into ``send`` (left open), with at most ``workers`` connectorx connections."""
        if paged(self.schema):
            await self._pages()
            return
        window = self.window
        layout = await key_layout(
            self.conn, self.database, self.table, self.key.name, window, self.range_rows
        )
        if layout is None:
            self.stats.path = {"path": "connectorx", "ranges": 0}
            return
        self.range_rows = layout.range_rows
        ranges = self.ranges or split_window(layout, window, estimated_rows, self.workers)
        self._queue.extend(_Part(r, (layout.low, layout.high)) for r in ranges)
        planned = len(self._queue)
        refused = self.blocked or await connectorx_refused(self.source, self.database)
        async with self.source.reserve(0 if refused else self.workers) as workers:
            if workers == 0:  # the table's own connection reads it all: the report says asyncmy, and why
                reason = refused or "no free connection in the source's budget for connectorx"
                self.stats.path = {"path": "asyncmy", "reason": reason}
                for part in ranges if self.ranges else (window,):
                    await self._canonical(_Part(part, (layout.low, layout.high)))
                return
            async with anyio.create_task_group() as tg:
                for _ in range(workers):
                    tg.start_soon(self._worker)
        self._report({"workers": workers, "ranges": planned})

    def _report(self, read: dict[str, Any]) -> None:
        """The report's ``extract`` of a read by connectorx: how it was read, and what it handed over."""
        self.stats.path = {"path": "connectorx", **read}
        if self._guarded:
            self.stats.path["guarded_dates"] = True
        if self.fallbacks:
            self.stats.path["fallbacks"] = self.fallbacks[:10]

    async def _pages(self) -> None:
        """The window in keyset pages ordered by the key (its first column is no integer to split on),
        one connectorx read at a time: each page starts after the last key of the one before, written
        into its SQL (``key_literal``: connectorx binds nothing). What a failure leaves, after the last
        key sent, the canonical path reads."""
        refused = self.blocked or await connectorx_refused(self.source, self.database)
        async with self.source.reserve(0 if refused else 1) as workers:
            if workers == 0:
                reason = refused or "no free connection in the source's budget for connectorx"
                self.stats.path = {"path": "asyncmy", "reason": reason}
                await self._canonical_after(None)
                return
            async with self._lock:
                rows = await held_rows(self.conn, self.database, self.table, self.range_rows)
            url = connection_url(self.source.cfg, self.database, tls=self.source.tls)
            pages = await self._pages_from(url, rows)
        self._report({"workers": 1, "pages": pages})

    async def _pages_from(self, url: str, rows: int) -> int:
        """Read pages of ``rows`` until one comes back short; the number read."""
        key = self.schema.primary_key
        names, at = [quote_mysql(k) for k in key], [self.schema.names.index(k) for k in key]
        columns = [self.schema.column(k) for k in key]
        last: tuple[Any, ...] | None = None
        pages = 0
        while True:
            guarded = self._guarded
            try:
                after = None
                if last is not None:
                    after = after_position(names, last, partial(_literal, columns, last), range_first=True)[0]
                where = with_filter(after, self.where, bound=False) or "TRUE"
                sql = fast_select(self.database, self.table, self.schema, where, guarded) + f" LIMIT {rows}"
                fetched = await self._connectorx(partial(_fetch, url, sql, session_sql(self.source.cfg)))
                pages += 1
                for raw in fetched.to_batches(max_chunksize=self.batch_size):
                    batch, coerced = await self._planned(raw, guarded)
                    if batch.num_rows:
                        await self._send(batch, coerced)
                        ends = (raw.column(i)[-1].as_py() for i in at)  # as read: no policy applied
                        last = tuple(map(key_value, columns, ends))
            except (S3ShiftError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise
            except BaseException as exc:  # connectorx raises PanicException, a BaseException
                reason = self._failed(exc)
                if not guarded and type(exc).__name__ == "PanicException":  # a zero or invalid date
                    log.debug("%s: dates read through the guard after %s: %s", self.rules.ref, last, reason)
                    self._guarded = True
                    continue
                log.debug("%s: pages handed to the asyncmy path after %s: %s", self.rules.ref, last, reason)
                self.fallbacks.append(reason)
                await self._canonical_after(last)
                return pages
            finally:
                release_freed_memory()
            if fetched.num_rows < rows:
                return pages

    async def _connectorx(self, call: Callable[[], T]) -> T:
        """``call`` in a daemon thread, bounded by the source's ``read_timeout``, and given up
        (``_Handover``) when a login of the run is refused."""
        with anyio.CancelScope() as scope:
            self.source.connectorx_reads.add(scope)
            try:
                with anyio.fail_after(self.source.cfg.read_timeout):
                    return await in_daemon_thread(call)
            finally:
                self.source.connectorx_reads.discard(scope)
        raise _Handover(f"given up: {self.source.connectorx_error}")

    def _failed(self, exc: BaseException) -> str:
        """Why connectorx's read failed, when the canonical path may read on (else raised: a
        cancellation, or a lock wait the canonical path would wait as long again)."""
        if isinstance(exc, anyio.get_cancelled_exc_class() | KeyboardInterrupt | SystemExit):
            raise exc
        text = " ".join(str(exc).split())
        refusal = _SERVER_ERROR.search(text)
        if refusal and int(refusal[1]) in _NOT_HANDED_OVER:
            server = asyncmy.errors.OperationalError(int(refusal[1]), refusal[2])
            raise source_error(self.source.cfg, server, doing="a connectorx read") from exc
        if _NO_CONNECTION in text or (refusal and int(refusal[1]) in _LOGIN_REFUSED):
            return refuse(self.source, exc)
        return _reason(exc)

    async def _canonical_after(self, last: tuple[Any, ...] | None) -> None:
        """The window by the canonical path, after the key ``last`` (None: all of it)."""
        if last is None:
            await self._asyncmy(self.where, ())
            return
        after, order = after_position([quote_mysql(k) for k in self.schema.primary_key], last, lambda _: "%s")
        await self._asyncmy(with_filter(after, self.where, bound=True), [last[i] for i in order])

    async def _worker(self) -> None:
        url = connection_url(self.source.cfg, self.database, tls=self.source.tls)
        while self._queue:
            part = self._queue.popleft()
            if self.source.connectorx_error:  # refused meanwhile (``refuse``): asyncmy reads the rest
                await self._canonical(part)
                continue
            halves = part.keys.halves(*part.bounds)
            # An integer key holds at most one row per value: only a wide span can be too big. A column
            # of a composite key before its last can hold any number: each of its ranges is estimated.
            wide = halves is not None and part.keys.span(*part.bounds) > 2 * self.range_rows
            unique = self._unique(part)
            if (wide or not unique) and (rows := await self._estimate_range(part)) > 2 * self.range_rows:
                if halves:
                    self._queue.extendleft(replace(part, keys=half) for half in reversed(halves))
                    continue
                if inner := await self._split_value(part, rows):  # one value: ranges of the next column
                    self._queue.extendleft(reversed(inner))
                    continue
                held = ", ".join(map(str, (*part.fixed, part.low)))
                self.fallbacks.append(f"about {rows} rows share the key value ({held}): streamed")
                await self._canonical(part)  # too many rows for a worker to hold
                continue
            await self._read(url, part)

    async def _estimate_range(self, part: _Part) -> int:
        source = qualify_mysql(self.database, self.table)
        sql = f"SELECT {quote_mysql(self._column(part))} FROM {source} WHERE {self._condition(part)}"
        async with self._lock:
            return await explain_rows(self.conn, sql, [])

    async def _split_value(self, part: _Part, rows: int) -> list[_Part]:
        """The ranges of the key's next column that read ``part``, a range of a single value holding
        ``rows`` (estimated); none when that column is not an integer (or the value holds no row)."""
        key = self.schema.primary_key
        depth = len(part.fixed) + 1
        if depth >= len(key) or not integer_key(self.schema.column(key[depth])):
            return []
        inner = _Part(KeyRange(None, None), (0, 0), (*part.fixed, part.low))
        column, source = quote_mysql(key[depth]), qualify_mysql(self.database, self.table)
        sql = f"SELECT MIN({column}), MAX({column}) FROM {source} WHERE {self._condition(inner)}"
        async with self._lock:
            found = await self.conn.fetchall(sql)
        if not found or found[0][0] is None:
            return []
        bounds = (int(found[0][0]), int(found[0][1]))
        ranges = split(*bounds, rows, self.range_rows, self.workers)
        return [replace(inner, keys=r, bounds=bounds) for r in ranges]

    async def _read(self, url: str, part: _Part) -> None:
        try:
            await self._read_range(url, part)
        finally:  # connectorx allocates each range's Arrow buffers with the C allocator, from a new
            # thread each time, and glibc kept what was freed in per-thread arenas: on 20M rows (160
            # ranges) peak RSS crept from 215 to 255 MB over the read; 210-240 MB with this (measured)
            release_freed_memory()

    async def _read_range(self, url: str, part: _Part) -> None:
        last: int | None = None
        key_index = self.schema.names.index(self._column(part))
        unique = self._unique(part)
        where = with_filter(self._condition(part), self.where, bound=False) or ""
        guarded = self._guarded
        sql = fast_select(self.database, self.table, self.schema, where, guarded)
        try:  # a hung server (``read_timeout``): the range handed over
            fetched = await self._connectorx(partial(_fetch, url, sql, session_sql(self.source.cfg)))
            held: list[tuple[pa.RecordBatch, Coercions]] = []
            for raw in fetched.to_batches(max_chunksize=self.batch_size):
                batch, coerced = await self._planned(raw, guarded)
                if not unique:  # the rest of a range cannot start inside one key value: the whole
                    held.append((batch, coerced))  # range is converted before any of it is sent
                elif batch.num_rows:
                    await self._send(batch, coerced)
                    last = int(batch.column(key_index)[-1].as_py())  # BIGINT UNSIGNED: a Decimal
            for batch, coerced in held:
                await self._send(batch, coerced)
        except (S3ShiftError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise  # a policy of the table refused a value (so would the canonical path), or the stage failed
        except BaseException as exc:  # connectorx raises PanicException, a BaseException
            reason = self._failed(exc)
            if not guarded and type(exc).__name__ == "PanicException":  # a zero or invalid date, most likely
                log.debug("%s: dates read through the guard from %s on: %s", self.rules.ref, part, reason)
                self._guarded = True
                await self._read_range(url, part if last is None else self._after(part, last))
                return
            log.debug("%s: range %s handed to the asyncmy path: %s", self.rules.ref, part, reason)
            self.fallbacks.append(reason)
            await self._canonical(part if last is None else self._after(part, last))

    async def _planned(self, raw: pa.RecordBatch, guarded: bool) -> tuple[pa.RecordBatch, Coercions]:
        """connectorx's batch as planned (``to_planned``, in a worker thread); ``_Handover`` when the
        canonical path must read it."""
        batch, coerced = await anyio.to_thread.run_sync(
            to_planned, raw, self.schema, self.rules, guarded, limiter=self.cpu_limiter
        )
        if batch is None:
            raise _Handover("a zero or invalid date")
        return batch, coerced

    async def _send(self, batch: pa.RecordBatch, coerced: Coercions) -> None:
        if batch.num_rows:
            self.stats.add(coerced)
            self.stats.rows += batch.num_rows
            self.stats.batches += 1
            await self.send.send(batch)

    @staticmethod
    def _after(part: _Part, last: int) -> _Part:
        """The rest of ``part`` after ``last``, the last value of its column read."""
        return replace(part, keys=part.keys.after(last))

    async def _canonical(self, part: _Part) -> None:
        await self._asyncmy(with_filter(self._condition(part), self.where, bound=False), ())

    async def _asyncmy(self, condition: str | None, args: Sequence[object]) -> None:
        """The rows of ``condition`` by the canonical path, on the table's own connection."""
        async with self._lock:
            await stream_query(
                self.conn,
                self.database,
                self.table,
                self.schema,
                self.send,
                self.rules,
                condition,
                args,
                self.batch_size,
                self.stats,
                self.cpu_limiter,
            )


def key_window(after: int | None, upto: int | None) -> KeyRange:
    """The keys ``(after, upto]`` of an id_only window (None, None: every key) as a range. Up to the
    largest integer MySQL holds (BIGINT UNSIGNED's 2^64-1) is open above: no key lies beyond it, and the
    bound 2^64 is no 64-bit integer (a plan's JSON could not carry its last range)."""
    high = None if upto is None or upto >= MAX_MYSQL_INT else upto + 1
    return KeyRange(None if after is None else after + 1, high)


async def key_layout(
    conn: SourceConnection, database: str, table: str, key: str, window: KeyRange, range_rows: int
) -> KeyLayout | None:
    """How a read of ``window`` is split (``split_window``): the lowest and highest key of the table
    within it (None when it holds none), and ``range_rows``, fewer for wide rows (a worker holds one range
    in memory: ``RANGE_BYTES``)."""
    bounds = await key_bounds(conn, database, table, key)
    if bounds is None:
        return None
    low = bounds[0] if window.low is None else max(bounds[0], window.low)
    high = bounds[1] if window.high is None else min(bounds[1], window.high - 1)
    if low > high:
        return None
    return KeyLayout(low, high, await held_rows(conn, database, table, range_rows))


async def held_rows(conn: SourceConnection, database: str, table: str, range_rows: int) -> int:
    """The rows one read (a range, a page) may bring: ``range_rows``, fewer for wide rows (a worker holds
    one read in memory: ``RANGE_BYTES`` of MySQL's average row length)."""
    width = await row_bytes(conn, database, table)
    return min(range_rows, max(MIN_RANGE_ROWS, RANGE_BYTES // width))


def split_window(layout: KeyLayout, window: KeyRange, estimated_rows: int, workers: int) -> list[KeyRange]:
    """The key ranges that read ``window`` (laid out as ``key_layout`` found), no gap and no overlap: the
    first open below as the window is, the last open above as it is (``split``)."""
    ranges = split(layout.low, layout.high, estimated_rows, layout.range_rows, workers)
    ranges[0] = KeyRange(window.low, ranges[0].high)
    ranges[-1] = KeyRange(ranges[-1].low if len(ranges) > 1 else window.low, window.high)
    return ranges


async def connectorx_refused(source: MySQLSource, database: str) -> str | None:
    """Why connectorx cannot read from ``source`` (None: it can), found out once per run. connectorx
    retries a refused login for 30 s before it reports it, so the probe gives up after the source's
    ``connect_timeout`` and every table takes the asyncmy path instead."""
    async with source.connectorx_lock:
        if source.connectorx_error is None:
            url = connection_url(source.cfg, database, tls=source.tls)
            source.connectorx_error = await _probe(url, source.cfg)
            if source.connectorx_error:
                log.warning(
                    "MySQL source %r: %s — reading with asyncmy", source.cfg.name, source.connectorx_error
                )
    return source.connectorx_error or None


def refuse(source: MySQLSource, exc: BaseException) -> str:
    """connectorx's login was refused mid-run: no read of the run uses it from now on, and the reads
    waiting for a login (their tables hand their ranges to asyncmy) are given up. Returns the reason."""
    if not source.connectorx_error:
        source.connectorx_error = f"connectorx login refused: {_reason(exc)}"
        log.warning("MySQL source %r: %s — reading with asyncmy", source.cfg.name, source.connectorx_error)
        for scope in list(source.connectorx_reads):
            scope.cancel()
    return source.connectorx_error


async def _probe(url: str, cfg: SourceConn) -> str:
    """One round trip through connectorx: a login it keeps retrying must not hold the run up past
    ``connect_timeout``."""
    try:
        with anyio.fail_after(cfg.connect_timeout):
            await in_daemon_thread(partial(connectorx.read_sql, url, "SELECT 1", return_type="arrow"))
    except TimeoutError:
        return f"connectorx could not connect within connect_timeout ({cfg.connect_timeout:g} s)"
    except BaseException as exc:  # PanicException is a BaseException
        if isinstance(exc, anyio.get_cancelled_exc_class() | KeyboardInterrupt | SystemExit):
            raise
        return f"connectorx cannot connect: {_reason(exc)}"
    return ""


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """``fn()`` in a daemon thread of its own. connectorx has no timeouts, so callers bound the wait with
    ``anyio.fail_after``: on a timeout or a cancellation the thread is left behind, and a daemon thread
    never holds up the process's exit (anyio's worker threads would). connectorx lets go of the GIL."""
    done = anyio.Event()
    token = anyio.lowlevel.current_token()
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # PanicException is a BaseException
            outcome.append((False, exc))
        with contextlib.suppress(Exception):  # the run may be over
            anyio.from_thread.run_sync(done.set, token=token)

    threading.Thread(target=target, name="connectorx", daemon=True).start()
    await done.wait()
    ok, value = outcome[0]
    if not ok:
        raise value
    result: T = value
    return result


class _Handover(Exception):
    """A batch the canonical path must read (not an error of the table)."""


def key_literal(column: Column, value: Any) -> str:
    """A key value, as connectorx read it, as SQL text (connectorx binds nothing): text as a hex literal
    in the connection's character set (``_utf8mb4 X'…'``, compared in the column's collation: a literal
    yields to a column), bytes as ``X'…'``, neither of which any byte or sql_mode can end early; a decimal
    as its digits (``key_value`` made it a ``Decimal``), an integer as its digits. (A date column is
    planned nullable, its zero dates read as NULL: it is never a page's key.)"""
    if column.logical == "string":
        return f"_utf8mb4 X'{str(value).encode('utf-8').hex()}'"
    if column.logical == "binary":
        return f"X'{bytes(value).hex()}'"
    if column.logical == "decimal":
        return format(Decimal(value), "f")
    return str(int(value))


def key_value(column: Column, value: Any) -> Any:
    """A key value as connectorx read it, as the position's value: a DECIMAL read as text (``_as_text``)
    a ``Decimal`` again, so that asyncmy binds a number (MySQL compares a DECIMAL with a string as
    floating point)."""
    return Decimal(value) if column.logical == "decimal" and isinstance(value, str) else value


def _literal(key: Sequence[Column], values: Sequence[Any], i: int) -> str:
    return key_literal(key[i], values[i])


def _fetch(url: str, sql: str, setup: str) -> pa.Table:
    """One range (or page) as an Arrow table, in a session set up as the pool's are (``session_sql``). Its
    Arrow mode lets go of the GIL for the whole read, and holds only the range in memory. Its stream mode
    (``arrow_stream``) keeps a read-ahead of tens of MB per connection whatever the batch size, and its
    reader holds the GIL while it waits for the server: a stalled server froze the process (measured)."""
    table: pa.Table = connectorx.read_sql(url, sql, return_type="arrow", pre_execution_query=[setup])
    return table


def _reason(exc: BaseException) -> str:
    """A one-line reason, with no connection URL and no secret."""
    text = _URL.sub("mysql://…", " ".join(str(exc).split()))
    return scrub((text if isinstance(exc, _Handover) else f"{type(exc).__name__}: {text}")[:300])
