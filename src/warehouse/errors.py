"""Turn driver and network failures into ``WarehouseError``s that say where, what, and whether to retry.

Classification looks only at exception classes and SQLSTATE codes, never at message text.
"""

from __future__ import annotations

import re
import ssl
from typing import Any

import asyncpg

from src.common.errors import S3ShiftError, WarehouseError, causes, describe
from src.config.models import TargetConn

# SQLSTATEs after which running the same transaction again can succeed.
RETRYABLE_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure (Redshift's serializable isolation violation)
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
        "57014",  # query_canceled (statement_timeout, WLM timeout)
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
    }
)
# SQLSTATE classes that are retryable as a whole: connection exceptions, insufficient resources.
RETRYABLE_CLASSES = frozenset({"08", "53"})
UNIQUE_VIOLATION, NOT_NULL_VIOLATION = "23505", "23502"  # e.g. rows a new primary key does not fit


class AnswerLost(WarehouseError):
    """A statement's answer never came (the connection dropped, or the server stopped answering), and the
    error already says what became of the statement (``lost_connection`` keeps its message). ``why``: the
    cause alone, for a message that goes on to say what became of it otherwise (a COMMIT's check)."""

    retryable = True

    def __init__(self, message: str, *, why: str = "", **fields: Any) -> None:
        super().__init__(message, **fields)
        self.why = why or self.message


def where(cfg: TargetConn) -> str:
    """'target NAME (host:port/database)' — never the user's password."""
    return f"target {cfg.name!r} ({cfg.host}:{cfg.port}/{cfg.database})"


def sqlstate_of(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, WarehouseError):
        return exc.retryable
    state = sqlstate_of(exc)
    if state is not None:
        return state in RETRYABLE_SQLSTATES or state[:2] in RETRYABLE_CLASSES
    if isinstance(exc, asyncpg.InterfaceError):
        return False  # client-side misuse: retrying does not help
    return isinstance(exc, OSError | TimeoutError | ConnectionError)


# What to do, after the cause, for SQLSTATEs whose message says only what happened.
HINTS = {
    "55P03": "another session holds a lock on the table (see pg_locks); rerun when it is released, or raise "
    "the target's lock_timeout",
    "42501": "grant the target's username the privilege named (or make it the owner of the schema and "
    "table), then rerun",
    "23502": "the target has a NOT NULL column this load leaves empty (added to the target by hand, or "
    "dropped at the source since): make it nullable or give it a DEFAULT, then rerun",
    "42809": "the target's name belongs to a view or another object that is not a table: drop or rename "
    "it, or set target_name in the table's config, then rerun",
    "54000": "a size limit of the warehouse (in PostgreSQL a row's fixed-width values, such as numbers, "
    "dates and timestamps, must fit in one 8 kB page; an index entry in about a third of one): leave "
    "columns out with exclude_columns in the table's config, then rerun",
    "2BP01": "objects such as views depend on the target, which this load must drop and recreate: drop "
    "them, rerun, then create them again",
    "23505": "rows of this load repeat a unique key of the target that is not the source's primary key "
    "(PostgreSQL's primary key follows the source's: a load re-keys the target when the source's changed): a "
    "unique index or constraint added to the target by hand, or a primary_key configured for the table that "
    "the source's rows repeat; drop that index, or fix primary_key, then rerun",
    "22P02": "a source value the target column's type does not take: typically a JSON column holding text "
    "that is not JSON (written past MariaDB's JSON_VALID check, e.g. with check_constraint_checks=0, or "
    "by a restored dump); find the rows with WHERE NOT JSON_VALID(column), fix them or leave the column "
    "out with exclude_columns, then rerun",
}
# A COPY's CONTEXT line names the column a value failed in: "COPY t, line 2, column j: ..."
_COPY_COLUMN = re.compile(r"^COPY .*?, line \d+, column (.+?)(?::|$)", re.MULTILINE)


# SQLSTATEs whose DETAIL is 'Failing row contains (...)': every value of the row (not null, check
# violations). It would put a customer's data into the report, CI logs and S3, and make the one-line
# message as long as the row; the message, the column and the constraint named are enough.
ROW_DETAIL = frozenset({"23502", "23514"})


def cause_text(exc: BaseException) -> str:
    state = sqlstate_of(exc)
    if state is not None and isinstance(exc, asyncpg.PostgresError):
        hint = f" — {HINTS[state]}" if state in HINTS else ""
        copied = _COPY_COLUMN.search(str(getattr(exc, "context", None) or ""))
        column = f" (column {copied.group(1)!r})" if copied else ""
        text = " ".join(_server_text(exc, state).split())
        return f"{type(exc).__name__} (SQLSTATE {state}): {text}{column}{hint}"
    return describe(exc)


def _server_text(exc: BaseException, state: str) -> str:
    if state not in ROW_DETAIL:
        return str(exc)
    server_hint = getattr(exc, "hint", None)
    return str(exc.args[0] if exc.args else "") + (f" HINT: {server_hint}" if server_hint else "")


def connect_hint(exc: BaseException, cfg: TargetConn) -> str:
    """What to check when a connection to ``cfg`` cannot be opened: the config key, as MySQL's say."""
    key = f"connections.targets.{cfg.name}"
    state = sqlstate_of(exc)
    if state == "28000" and not cfg.ssl and any(w in str(exc) for w in (", SSL off", ", no encryption")):
        # pg_hba has only hostssl lines for us (Redshift's require_ssl, RDS's rds.force_ssl)
        return f"the server accepts only TLS connections: set {key}.ssl: true"
    if state in ("28P01", "28000"):  # invalid password, invalid authorization (unknown role, pg_hba)
        return f"check {key}.username and its password"
    if state == "3D000":
        return f"check {key}.database"
    if isinstance(exc, ssl.SSLCertVerificationError):
        against = f"{key}.ssl_ca" if cfg.ssl_ca else "the system's CAs"
        return f"the server's certificate did not verify against {against}: set {key}.ssl_ca to its CA"
    if state is None and isinstance(exc, OSError | TimeoutError):  # refused, unresolved, timed out
        return f"check {key}.host/port, the network path and that the server is running"
    return ""


def client_side_cause(exc: BaseException) -> BaseException | None:
    """The asyncpg client-side error in ``exc``'s chain (``InterfaceError`` other than bad input data,
    ``InternalClientError``), if any."""
    return next(
        (
            e
            for e in causes(exc)
            if isinstance(e, asyncpg.InternalClientError)
            or (isinstance(e, asyncpg.InterfaceError) and not isinstance(e, asyncpg.DataError))
        ),
        None,
    )


def lost_connection(exc: BaseException, cfg: TargetConn) -> WarehouseError:
    """A session's connection closed or broken under it (terminated by the server, a network cut): asyncpg
    then raises client-side errors ('connection has been released back to the pool', 'another operation
    is in progress') that name no cause and that ``classify`` would take for a misuse no retry can help."""
    if isinstance(exc, AnswerLost):
        return exc
    cause = client_side_cause(exc) or exc
    return WarehouseError(
        f"lost the connection to {where(cfg)} ({describe(cause)}); rerun the table",
        retryable=True,
    )


def outcome_unknown(exc: BaseException) -> bool:
    """A statement failed without the server's answer: the connection broke (asyncpg's client-side
    errors, SQLSTATE class 08, OS errors) or the server stopped answering (``AnswerLost``); whatever it
    did is unknown. A server's error answer (any other SQLSTATE) says it was not done."""
    state = sqlstate_of(exc)
    if isinstance(exc, AnswerLost) or client_side_cause(exc) is not None:
        return True
    if state is not None:
        return state[:2] == "08"
    return isinstance(exc, OSError | TimeoutError | ConnectionError)


def classify(exc: BaseException, *, cfg: TargetConn, action: str, table: str | None = None) -> S3ShiftError:
    """A ``WarehouseError`` for ``exc`` raised while doing ``action`` on ``cfg`` (ours pass through). An
    error of another layer raised inside a load is not the warehouse's and passes through as it is, with
    its own ``retryable``: the S3 read of the staged files (throttled: retryable, not a failed load)."""
    if isinstance(exc, S3ShiftError) and not isinstance(exc, WarehouseError):
        return exc
    if isinstance(exc, WarehouseError):
        if table is None or exc.table is not None:
            return exc
        return WarehouseError(
            f"{table}: {exc.message}",
            table=table,
            column=exc.column,
            file=exc.file,
            key=exc.key,
            sqlstate=exc.sqlstate,
            retryable=exc.retryable,
        )
    subject = f"{action} {table} on {where(cfg)}" if table else f"{action} {where(cfg)}"
    connecting = action == "connecting to"
    hint = connect_hint(exc, cfg) if connecting else ""
    cause = cause_text(exc)
    if connecting and isinstance(exc, TimeoutError) and not str(exc):  # it said "TimeoutError: no details"
        cause = f"no answer within connect_timeout ({cfg.connect_timeout:g} s)"
    return WarehouseError(
        f"{subject} failed: {cause}" + (f" — {hint}" if hint else ""),
        table=table,
        sqlstate=sqlstate_of(exc),
        retryable=is_retryable(exc),
    )
