"""The one exception hierarchy. Exceptions carry fields and say whether a retry can help."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Self

from src.common.log import get_logger
from src.common.secret import scrub

log = get_logger("errors")


class S3ShiftError(Exception):
    """Base of every error s3shift raises on purpose.

    ``str(err)`` is the one-line, user-facing message: it names what and where and, where it
    can, what to do. Known secret values are scrubbed from it.
    """

    retryable: bool = False
    echo: bool = False  # only the echo of a failure raised elsewhere: report that one (``first_error``)

    def __init__(
        self,
        message: str,
        *,
        table: str | None = None,
        column: str | None = None,
        file: str | None = None,
        key: str | None = None,
        sqlstate: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.message = scrub(" ".join(message.split()))
        self.table = table
        self.column = column
        self.file = file
        self.key = key
        self.sqlstate = sqlstate
        if retryable is not None:
            self.retryable = retryable
        super().__init__(self.message)

    def amended(self, more: str) -> Self:
        """The same error (class, fields, retryable) with ``more`` said after its message."""
        amended = copy.copy(self)
        amended.message = scrub(f"{self.message} — {' '.join(more.split())}")
        amended.args = (amended.message,)
        return amended


class ConfigError(S3ShiftError):
    """Bad or missing configuration (file, key, reference, environment variable)."""


class SourceError(S3ShiftError):
    """MySQL could not be reached, queried, or described."""


class UnsupportedTypeError(SourceError):
    """A source column type that s3shift cannot carry exactly (yet)."""


class StageError(S3ShiftError):
    """Encoding Parquet or talking to S3 failed."""


class S3Error(StageError):
    """An S3 request failed: S3 answered with an error (throttling, 5xx, access denied, ...), could not be
    reached, or stored other bytes than were sent. A table that fails so reports the phase ``s3``,
    whatever it was doing (reading back its stages, uploading, loading the staged files)."""


class WarehouseError(S3ShiftError):
    """The target warehouse refused a statement or could not be reached."""


def describe(exc: BaseException) -> str:
    """One line for any exception: ours verbatim, foreign ones prefixed with their class name."""
    if isinstance(exc, S3ShiftError):
        return exc.message
    text = " ".join(str(exc).split()) or "no details"
    return scrub(f"{type(exc).__name__}: {text}")


def internal_error(exc: BaseException) -> str:
    """The one line for an exception that escaped s3shift's error handling: a bug, said as one."""
    return f"internal error: {describe(exc)} (rerun with --verbose for the traceback)"


def first_error(exc: BaseException) -> BaseException:
    """The one exception to report for ``exc``, which may be a (nested) exception group: ours first (they
    carry the cause), an echo of another failure only when nothing else failed."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    found = leaves(exc)
    found = [e for e in found if not (isinstance(e, S3ShiftError) and e.echo)] or found
    ours = [e for e in found if isinstance(e, S3ShiftError)]
    chosen = (ours or found)[0]
    for other in found:
        if other is not chosen:
            log.debug("also failed: %r", other)  # --verbose shows what the one reported error hides
    return chosen


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what led to it (its ``__cause__``, else its ``__context__``), and so on, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions in ``exc``, a (nested) exception group or not, in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]
