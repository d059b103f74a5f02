"""MySQL / MariaDB connections: a small bounded pool over asyncmy (default) or aiomysql.

Every connection speaks utf8mb4, pins ``time_zone='+00:00'``, runs in autocommit and sets its own
``lock_wait_timeout`` and network timeouts. A connection that saw an error, a cancellation or an
unfinished streaming result is closed hard (socket dropped): never drained, never reused.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import asyncmy
import asyncmy.converters
import asyncmy.cursors

from src.common.errors import SourceError, causes
from src.common.log import get_logger
from src.common.naming import escape_percent
from src.common.secret import Secret
from src.config.models import SourceConn

log = get_logger("source.mysql")
T = TypeVar("T")

LOCK_WAIT_TIMEOUT_S = 60  # our session never waits long behind DDL or LOCK TABLES
LOCK_REPORT_AFTER_S = 5.0  # a statement unanswered this long: the server is asked whether it waits for a lock
_STATE_SQL = "SELECT STATE FROM information_schema.PROCESSLIST WHERE ID = %s"
IDLE_CHECK_AFTER_S = 30.0  # an idle pooled connection older than this is pinged before reuse
CLOSE_TIMEOUT_S = 5.0


def _driver_errors() -> tuple[type[BaseException], ...]:
    """The drivers' base exceptions: aiomysql raises PyMySQL's, which exists only once aiomysql was
    imported (it is imported on first use: 40 ms of every run's start otherwise)."""
    pymysql = sys.modules.get("pymysql")
    return (asyncmy.errors.MySQLError, pymysql.err.MySQLError) if pymysql else (asyncmy.errors.MySQLError,)


def _aiomysql() -> Any:
    import aiomysql  # only the aiomysql driver needs it

    return aiomysql


_RETRYABLE = frozenset(
    {1040, 1053, 1077, 1152, 1153, 1158, 1159, 1160, 1161, 1180, 1181, 1205, 1213, 1226, 1317}
    | {1927, 1969, 2002, 2003, 2006, 2013, 2055, 3024, 4031}
)
_HINTS = {
    2002: "check host/port and that the server is running",
    2003: "check host/port and that the server is running",
    2005: "check the host name",
    1045: "check the username and the password",
    1044: "grant the user access to the database",
    1142: "grant the user SELECT on the table",
    1049: "check the database name",
    1146: "check the table name",
    1040: "the server has no free connections; lower max_connections or retry later",
    1226: "the user has no free connections; lower max_connections or retry later",
    1205: "another session holds a lock on the table (DDL or LOCK TABLES?); retry later",
}


def driver_error_code(exc: BaseException) -> int | None:
    """The MySQL error number of a driver exception, if it carries one."""
    if isinstance(exc, _driver_errors()) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def is_source_failure(exc: BaseException) -> bool:
    """A driver, socket or timeout error (as opposed to a bug or a cancellation)."""
    return isinstance(exc, (*_driver_errors(), OSError, TimeoutError))


def _cause(exc: BaseException) -> str:
    """A short reason: the OS error's text when there is one (e.g. 'Connection refused')."""
    code = driver_error_code(exc)
    for seen in causes(exc) if code in (None, 2002, 2003) else ():
        if isinstance(seen, ssl.SSLError):  # an OSError whose errno (1) would read "Operation not permitted"
            detail = getattr(seen, "verify_message", None) or seen.reason or type(seen).__name__
            return f"TLS handshake failed ({detail})"
        if isinstance(seen, socket.gaierror) and seen.strerror:
            return f"cannot resolve the host name ({seen.strerror})"
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = " ".join(str(exc.args[1] if code is not None and len(exc.args) > 1 else exc).split())
    return f"({code}) {text}" if code is not None else text or type(exc).__name__


def source_error(cfg: SourceConn, exc: BaseException, *, doing: str, table: str | None = None) -> SourceError:
    """A driver/socket/timeout error as a one-line ``SourceError`` (the password never appears)."""
    code = driver_error_code(exc)
    hint = _HINTS.get(code or 0, "")
    retryable = code in _RETRYABLE if code is not None else isinstance(exc, (OSError, TimeoutError))
    if doing == "connect" and (tls_hint := _tls_hint(cfg, exc)):
        hint, retryable = tls_hint, False  # a setting of the server's or ours: the same again on a rerun
    if not hint and doing == "connect":
        hint = "check host/port, the network path and that the server is running"
    where = f"MySQL source {cfg.name!r} at {cfg.host}:{cfg.port}"
    head = f"cannot connect to {where}" if doing == "connect" else f"{where}: {doing} failed"
    message = f"{head}: {_cause(exc)}" + (f" — {hint}" if hint else "")
    return SourceError(message, table=table, retryable=retryable)


def _tls_hint(cfg: SourceConn, exc: BaseException) -> str:
    """What to do about a TLS handshake that failed (empty: it was not one)."""
    key = f"connections.sources.{cfg.name}"
    if _no_tls_offered(exc):
        return f"the server offers no TLS: enable it there, or set {key}.ssl_mode to preferred or disabled"
    seen = next((e for e in causes(exc) if isinstance(e, ssl.SSLError)), None)
    if isinstance(seen, ssl.SSLCertVerificationError):
        against = f"{key}.ssl_ca" if cfg.ssl_ca else "the system's CAs (set ssl_ca)"
        return f"the server's certificate did not verify against {against} ({key}.ssl_mode: {cfg.ssl_mode})"
    if seen is not None:
        return f"check the server's TLS set-up and {key}.ssl_mode ({cfg.ssl_mode})"
    return ""


class RowStream:
    """An open unbuffered (server-side) result: its column description and ``fetchmany``."""

    def __init__(self, conn: SourceConnection, cursor: Any) -> None:
        self._conn = conn
        self._cursor = cursor
        self.done = False
        description = cursor.description or ()
        self.names: tuple[str, ...] = tuple(str(d[0]) for d in description)
        self.type_codes: tuple[int, ...] = tuple(int(d[1]) for d in description)

    async def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        """Up to ``size`` rows; fewer means the result is complete. Reads only while called."""
        self._conn._resume_reading()
        rows: list[tuple[Any, ...]] = await self._conn._run("reading rows", lambda: self._fetch(size))
        if len(rows) < size:
            self.done = True
        else:
            self._conn._pause_reading()
        return rows

    async def _fetch(self, size: int) -> list[tuple[Any, ...]]:
        return list(await self._cursor.fetchmany(size))


class SourceConnection:
    """One MySQL connection, the same API for asyncmy and aiomysql. Errors become ``SourceError``."""

    def __init__(self, raw: Any, cfg: SourceConn) -> None:
        self._raw = raw
        self.cfg = cfg
        self._broken = False
        self.last_used = time.monotonic()
        self.table: str | None = None  # what it reads for, named by a lock wait's line (``_report_wait``)
        # what the server says this session is doing, asked on another connection (None: none free)
        self.ask_state: Callable[[int], Awaitable[str | None]] | None = None

    @property
    def broken(self) -> bool:
        """True when the connection must not be reused: an error, a cancellation, an unfinished stream, or
        the server ended the session while it sat idle (KILL, wait_timeout, a restart: its socket is at EOF,
        which the drivers notice only at the next query, as '(2006) MySQL server has gone away')."""
        if self._broken:
            return True
        if self.cfg.driver == "aiomysql":
            reader = getattr(self._raw, "_reader", None)
            return bool(self._raw.closed) or (reader is not None and reader.at_eof())
        transport = getattr(self._raw, "_transport", None)
        return not self._raw.connected or transport is None or transport.is_closing()

    @property
    def thread_id(self) -> int:
        """The server's id of this session (for ``KILL QUERY`` from a side connection)."""
        return int(self._raw.thread_id())

    @property
    def is_mariadb(self) -> bool:
        return "mariadb" in str(self._raw.get_server_info()).lower()

    async def fetchall(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run a small query with a buffered cursor. With ``args``, placeholders are ``%s``."""

        async def go() -> list[tuple[Any, ...]]:
            cursor = await self._cursor(unbuffered=False)
            await self._watched(cursor.execute(*_driver_args(sql, args)))
            rows = list(await cursor.fetchall())
            await cursor.close()
            return rows

        return await self._run("a query", go)

    async def execute(self, sql: str, args: Sequence[object] = ()) -> None:
        await self.fetchall(sql, args)

    @contextlib.asynccontextmanager
    async def stream(self, sql: str, args: Sequence[object] = ()) -> AsyncIterator[RowStream]:
        """Execute ``sql`` on an unbuffered server-side cursor. Leaving the block before the result is
        complete (error, cancellation, early exit) marks the connection broken, so it is closed, not drained.
        """
        self._broken = True  # until the result is read to its end
        cursor = await self._cursor(unbuffered=True)
        await self._run("a streaming query", lambda: self._watched(cursor.execute(*_driver_args(sql, args))))
        rows = RowStream(self, cursor)
        yield rows
        if rows.done:
            self._resume_reading()
            await self._run("closing a result", cursor.close)
            self._broken = False

    def close_hard(self) -> None:
        """Drop the socket now: no QUIT, no draining of a pending result."""
        self._broken = True
        with contextlib.suppress(Exception):
            self._raw.close()

    async def close(self) -> None:
        """Say goodbye politely (shielded, time-boxed), falling back to dropping the socket."""
        if not self.broken:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(CLOSE_TIMEOUT_S),
                contextlib.suppress(Exception),
            ):
                await self._raw.ensure_closed()
        self.close_hard()

    async def _cursor(self, *, unbuffered: bool) -> Any:
        if self.cfg.driver == "asyncmy":
            return self._raw.cursor(asyncmy.cursors.SSCursor if unbuffered else asyncmy.cursors.Cursor)
        driver = _aiomysql()
        return await self._raw.cursor(driver.SSCursor if unbuffered else driver.Cursor)

    async def _watched(self, statement: Awaitable[T]) -> T:
        """Await a statement; one still unanswered after ``LOCK_REPORT_AFTER_S`` may be waiting for a lock
        another session holds (a LOCK TABLES ... WRITE, DDL's metadata lock), silently for up to
        ``lock_wait_timeout``: ``_report_wait`` says so. Nothing is asked of a statement answered sooner."""
        if self.ask_state is None:
            return await statement
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._report_wait)
            try:
                result = await statement
            except Exception as exc:  # raised below as it is, not in the task group's ExceptionGroup
                failure = exc
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return result

    async def _report_wait(self) -> None:
        await anyio.sleep(LOCK_REPORT_AFTER_S)
        assert self.ask_state is not None
        try:
            state = await self.ask_state(self.thread_id)
        except Exception as exc:  # a line of diagnosis is never worth failing the read
            log.debug("asking MySQL what session %d waits for failed: %s", self.thread_id, exc)
            state = None
        reading = self.table or f"MySQL source {self.cfg.name!r}"
        if state is None:
            log.info(
                "%s: a query has had no answer for %g s, and no connection is free to ask MySQL why (a lock "
                "another session holds, e.g. LOCK TABLES ... WRITE or an ALTER TABLE, or a slow query)",
                reading, LOCK_REPORT_AFTER_S,
            )  # fmt: skip
        elif "lock" in state.lower():
            log.warning(
                "%s: waiting %g s so far for a lock another session holds (MySQL: %r): a LOCK TABLES ... "
                "WRITE, or DDL such as ALTER TABLE; the read goes on when it is released, or fails after "
                "lock_wait_timeout (%d s), retryable",
                reading, LOCK_REPORT_AFTER_S, state, LOCK_WAIT_TIMEOUT_S,
            )  # fmt: skip
        else:
            log.debug("%s: a query has run %g s (MySQL: %r)", reading, LOCK_REPORT_AFTER_S, state)

    async def _run(self, doing: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` under the read timeout; failures become ``SourceError`` and break the connection
        unless the server answered with an ordinary SQL error (which leaves the session usable)."""
        try:
            with anyio.fail_after(self.cfg.read_timeout):
                result = await fn()
        except BaseException as exc:
            code = driver_error_code(exc)
            if code is None or code >= 2000 or code in _RETRYABLE:
                self._broken = True
            if is_source_failure(exc):
                raise source_error(self.cfg, exc, doing=doing) from exc
            raise
        self.last_used = time.monotonic()
        return result

    # asyncmy never stops reading its socket, so a stalled consumer would buffer the whole remaining
    # result in memory. We read only while fetching: between fetches the server waits (net_write_timeout).
    def _pause_reading(self) -> None:
        transport = getattr(self._raw, "_transport", None) if self.cfg.driver == "asyncmy" else None
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def _resume_reading(self) -> None:
        transport = getattr(self._raw, "_transport", None) if self.cfg.driver == "asyncmy" else None
        if transport is not None and not transport.is_closing():
            transport.resume_reading()


def _driver_args(sql: str, args: Sequence[object]) -> tuple[str, tuple[object, ...] | None]:
    """What the driver's ``execute`` takes. With arguments it formats the text with them (``%s``), so a
    ``%`` in a quoted name (a column ``pct%``, a table ``a%b``) is doubled; a row filter's are already
    (``with_filter``)."""
    if not args:
        return sql, None
    return escape_percent(sql, names=True, rest=False), tuple(args)


def inline_args(sql: str, args: Sequence[object]) -> str:
    """The text the driver sends for ``sql`` with ``args`` (``_driver_args``, then its own escaping of
    each value), for a reader that binds none (connectorx). Integers and dates only: nothing a value holds
    can end its literal, and a string's or bytes' escaping would depend on the server's sql_mode."""
    for value in args:
        if isinstance(value, bool) or not isinstance(value, int | datetime.date):
            raise TypeError(f"not a value to inline: {type(value).__name__}")
    text, driver_args = _driver_args(sql, args)
    if driver_args is None:
        return text
    return text % tuple(asyncmy.converters.escape_item(value, "utf8mb4") for value in driver_args)


def session_sql(cfg: SourceConn) -> str:
    """What every session of ours sets first (the pool's and connectorx's): UTC, our lock wait and network
    timeouts, and no statement time limit. A DBA's ``max_statement_time`` (MariaDB; a global or an
    account's) is meant for OLTP queries: it ended a bulk read as the table grew (1969, "Query execution
    was interrupted", failing each retry again), so our sessions read without one, as mariadb-dump's do.
    The ``/*M!...*/`` comment is MariaDB's alone: MySQL reads it as a comment."""
    net = max(int(cfg.read_timeout), 60)
    return (
        f"SET time_zone='+00:00', lock_wait_timeout={LOCK_WAIT_TIMEOUT_S}, "
        f"net_write_timeout={net}, net_read_timeout={net} /*M!100108 , max_statement_time=0 */"
    )


def wire_password(password: Secret) -> str:
    """The password as the drivers must be handed it. The server checks the password's UTF-8 bytes (what
    the mysql client, Connector/J and Connector/Python send), but asyncmy and aiomysql encode a str
    password as Latin-1: a password beyond Latin-1 (``€``, CJK) failed with UnicodeEncodeError, and one
    within it (``pässwörd``) was refused by the server. So they get the str whose Latin-1 bytes are the
    password's UTF-8 bytes; that form is a secret too (scrubbed from any message)."""
    text = password.reveal()
    wire = text.encode("utf-8").decode("latin-1")
    if wire != text:
        Secret(wire)
    return wire


def tls_context(cfg: SourceConn) -> ssl.SSLContext | None:
    """The TLS of ``cfg.ssl_mode``, as the mysql client's ``--ssl-mode``: none (disabled); encrypted, the
    certificate unchecked (preferred, required); checked against ``ssl_ca`` or the system's CAs
    (verify_ca), and the host name too (verify_identity)."""
    if cfg.ssl_mode == "disabled":
        return None
    if not cfg.ssl_mode.startswith("verify_"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        context = ssl.create_default_context(cafile=cfg.ssl_ca)
    except (OSError, ssl.SSLError) as exc:
        raise SourceError(
            f"MySQL source {cfg.name!r}: cannot read the CA bundle connections.sources.{cfg.name}.ssl_ca "
            f"({cfg.ssl_ca!r}): {' '.join(str(exc).split()) or type(exc).__name__} — give the PEM file of "
            "the CA that signed the server's certificate",
            retryable=False,
        ) from exc
    context.check_hostname = cfg.ssl_mode == "verify_identity"
    return context


def _no_tls_offered(exc: BaseException) -> bool:
    """The TLS request got a plain answer: the server does not offer TLS (not a refused connection, not a
    certificate the client refused). ``exc`` or what caused it."""
    return any(
        (isinstance(e, ssl.SSLError) and e.reason == "WRONG_VERSION_NUMBER")
        or "SSL not supported" in str(e)  # aiomysql's words
        or "does not support SSL" in str(e)
        for e in causes(exc)
    )


async def open_connection(cfg: SourceConn, context: ssl.SSLContext | None) -> SourceConnection:
    """Open one configured connection, with TLS when ``context`` (``MySQLSource`` decides), or raise
    ``SourceError`` naming host:port and the cause."""
    kwargs: dict[str, Any] = {
        "host": cfg.host,
        "port": cfg.port,
        "user": cfg.username,
        "password": wire_password(cfg.password),
        "charset": "utf8mb4",
        "autocommit": True,
        "init_command": session_sql(cfg),
        "connect_timeout": cfg.connect_timeout,
    }
    if cfg.database:
        kwargs["db" if cfg.driver == "aiomysql" else "database"] = cfg.database
    if context is not None:
        kwargs["ssl"] = context
    connect = _aiomysql().connect if cfg.driver == "aiomysql" else asyncmy.connect
    try:
        with anyio.fail_after(cfg.connect_timeout):
            raw = await connect(**kwargs)
    except BaseException as exc:
        if is_source_failure(exc):
            raise source_error(cfg, exc, doing="connect") from exc
        raise
    return SourceConnection(raw, cfg)


@contextlib.asynccontextmanager
async def _token(limiter: anyio.CapacityLimiter | None, borrower: object) -> AsyncIterator[None]:
    if limiter is None:
        yield
        return
    await limiter.acquire_on_behalf_of(borrower)
    try:
        yield
    finally:
        limiter.release_on_behalf_of(borrower)


def _try_token(limiter: anyio.CapacityLimiter | None, borrower: object) -> bool:
    if limiter is None:
        return True
    try:
        limiter.acquire_on_behalf_of_nowait(borrower)
    except anyio.WouldBlock:
        return False
    return True


class MySQLSource:
    """A bounded pool of connections to one source (never more than ``cfg.max_connections`` open, nor
    more than the account's own limit: ``ping``). ``share``: this process's part of a run-wide number of
    connections (``Limits.share_of``; the whole of it when the run has one process)."""

    def __init__(
        self,
        cfg: SourceConn,
        limiter: anyio.CapacityLimiter | None = None,
        *,
        share: Callable[[int], int] | None = None,
    ) -> None:
        self.cfg = cfg
        self._limiter = limiter
        self._share = share or (lambda total: total)
        self._slots = anyio.CapacityLimiter(cfg.max_connections)
        # the connections use TLS (None: not known yet; ssl_mode preferred finds out at the first connect)
        self.tls: bool | None = False if cfg.ssl_mode == "disabled" else None
        self._context: ssl.SSLContext | None = None  # built once: a verify mode reads the CA bundle
        self._idle: list[SourceConnection] = []
        self._open: set[SourceConnection] = set()
        self._reserved = 0  # tokens held for connections opened outside the pool
        self.connectorx_lock = anyio.Lock()
        self.connectorx_error: str | None = None  # why connectorx cannot connect ("" once it did)
        self.connectorx_reads: set[anyio.CancelScope] = set()  # reads in flight, given up on a refusal
        self._closed = False

    async def __aenter__(self) -> MySQLSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT_S):
            for conn in idle:
                await conn.close()
        for conn in list(self._open):
            conn.close_hard()
        self._open.clear()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def connection(
        self, table: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[SourceConnection]:
        """Borrow one connection (holding a token of the limiter while borrowed), reading for ``table`` (named
        by the line a lock wait logs). On any error or cancellation while borrowed the connection is closed
        hard, never returned to the pool."""
        return self._borrow(table)

    @contextlib.asynccontextmanager
    async def _borrow(self, table: str | None) -> AsyncIterator[SourceConnection]:
        if self._closed:
            raise SourceError(f"MySQL source {self.cfg.name!r} is already closed")
        borrower = object()
        async with _token(self._limiter, borrower), _token(self._slots, borrower), self._lent(table) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _lent(self, table: str | None) -> AsyncIterator[SourceConnection]:
        """A pooled connection for the borrower holding its tokens; back to the pool, or closed on error."""
        conn = await self._checkout()
        conn.table, conn.ask_state = table, self._state_of
        try:
            yield conn
        except BaseException:
            self._discard(conn)
            raise
        conn.table = None
        await self._checkin(conn)

    async def _state_of(self, session: int) -> str | None:
        """What the server says ``session`` is doing (PROCESSLIST's STATE), asked on a connection of the pool
        only if one is free now: the budget of connections holds, and the asking never waits for one."""
        borrower = object()
        if not _try_token(self._limiter, borrower):
            return None
        try:
            if not _try_token(self._slots, borrower):
                return None
            try:
                with anyio.move_on_after(self.cfg.connect_timeout):
                    async with self._lent(None) as conn:
                        conn.ask_state = None  # its own query is not watched
                        rows = await conn.fetchall(_STATE_SQL, (session,))
                        return str(rows[0][0] or "") if rows else ""
                return None
            finally:
                self._slots.release_on_behalf_of(borrower)
        finally:
            if self._limiter is not None:
                self._limiter.release_on_behalf_of(borrower)

    @contextlib.asynccontextmanager
    async def reserve(self, wanted: int) -> AsyncIterator[int]:
        """Take up to ``wanted`` connection tokens without waiting, for connections opened outside the pool
        (connectorx's); yields how many were taken. Idle pooled connections are closed to make room, so the
        server never sees more than ``max_connections`` of ours."""
        borrowers: list[object] = []  # a limiter lends one token per borrower
        try:
            while len(borrowers) < wanted:
                borrower = object()
                if not _try_token(self._limiter, borrower):
                    break
                if not _try_token(self._slots, borrower):
                    if self._limiter is not None:
                        self._limiter.release_on_behalf_of(borrower)
                    break
                borrowers.append(borrower)
            self._reserved += len(borrowers)
            while self._idle and len(self._open) + self._reserved > self._slots.total_tokens:
                conn = self._idle.pop()
                self._open.discard(conn)
                await conn.close()
            yield len(borrowers)
        finally:
            self._reserved -= len(borrowers)
            for borrower in borrowers:
                self._slots.release_on_behalf_of(borrower)
                if self._limiter is not None:
                    self._limiter.release_on_behalf_of(borrower)

    async def ping(self) -> None:
        """Prove the source answers; raise ``SourceError`` naming host:port, the cause and what to check.
        The answer is the account's own connection limit (``MAX_USER_CONNECTIONS``; 0: none): the pool
        and connectorx's reads stay within it too, or the tables past it would fail to connect (8 tables
        as a user limited to 2: 4 failed, error 1226)."""
        async with self.connection() as conn:
            rows = await conn.fetchall("SELECT @@max_user_connections")
        self._fit(int(rows[0][0] or 0) if rows else 0)

    def _fit(self, account_limit: int) -> None:
        if not 0 < account_limit < self.cfg.max_connections:
            return
        total = self._share(account_limit)
        self._slots.total_tokens = min(self._slots.total_tokens, total)
        if self._limiter is not None:
            self._limiter.total_tokens = min(self._limiter.total_tokens, total)
        log.info(
            "MySQL source %r: the account may open %d connection(s) (MAX_USER_CONNECTIONS), fewer than "
            "connections.sources.%s.max_connections (%d): the run keeps to %d",
            self.cfg.name, account_limit, self.cfg.name, self.cfg.max_connections, account_limit,
        )  # fmt: skip

    async def _checkout(self) -> SourceConnection:
        while self._idle:
            conn = self._idle.pop()
            if await self._still_alive(conn):
                return conn
            self._discard(conn)
        conn = await self._connect()
        self._open.add(conn)
        log.debug("opened connection %d to %s", len(self._open), self.cfg.name)
        return conn

    async def _connect(self) -> SourceConnection:
        """A new connection, with TLS unless the server offers none and ``ssl_mode`` is preferred (then
        found out once: one TLS request answered in plain text, a few ms)."""
        if self.tls is not False and self._context is None:
            self._context = tls_context(self.cfg)
        try:
            conn = await open_connection(self.cfg, self._context if self.tls is not False else None)
        except SourceError as exc:
            if self.cfg.ssl_mode != "preferred" or self.tls is True or not _no_tls_offered(exc):
                raise
            if self.tls is None:  # (connections opened at once all find out)
                log.info("MySQL source %r offers no TLS: ssl_mode preferred goes without", self.cfg.name)
            self.tls = False
        else:
            if self.tls is None:
                self.tls = True
            return conn
        return await open_connection(self.cfg, None)  # outside the except: its errors are its own

    async def _still_alive(self, conn: SourceConnection) -> bool:
        if conn.broken:
            return False
        if time.monotonic() - conn.last_used < IDLE_CHECK_AFTER_S:
            return True
        with anyio.move_on_after(min(5.0, self.cfg.connect_timeout)):
            with contextlib.suppress(SourceError):
                await conn.fetchall("SELECT 1")
                return True
        return False

    async def _checkin(self, conn: SourceConnection) -> None:
        if conn.broken:
            self._discard(conn)
        elif self._closed:
            self._open.discard(conn)
            await conn.close()
        else:
            self._idle.append(conn)

    def _discard(self, conn: SourceConnection) -> None:
        conn.close_hard()
        self._open.discard(conn)
