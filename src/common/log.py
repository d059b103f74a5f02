"""Logging to stderr only, with secrets scrubbed from every record."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import logging
import os
import re
import select
import sys
import threading
import warnings
from typing import Any, TextIO

from src.common.secret import scrub

LOGGER_NAME = "s3shift"


# control characters but the tab: C0, DEL, C1 (a table or column name may hold them: MySQL quotes any)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r"}.get(char, f"\\x{ord(char):02x}")


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\x1b``): one line of plain text for a
    terminal, whatever a table name or a server's message holds."""
    return _CONTROL.sub(_escaped, text)


class _ScrubFilter(logging.Filter):
    """Secrets out, and control characters escaped: a record is one line of plain text (a name given as
    ``-t $'db.a\\nb'`` split a failure's line in two, and an escape sequence in one reached the terminal)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = one_line(scrub(record.getMessage()))
        record.args = None
        return True


class _OneLineFilter(logging.Filter):
    """A library's record with a traceback (asyncio's 'Task exception was never retrieved' for a request
    task aiohttp left behind when S3 dropped its connection) as one line: the exception named, no
    traceback (--verbose keeps it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = (record.getMessage().splitlines() or [""])[0]  # asyncio adds the task's repr below
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = " ".join(str(exc).split())
            message += f": {type(exc).__name__}" + (f": {text}" if text else "")
        record.msg, record.args, record.exc_info, record.exc_text = message, None, None, None
        return True


class ScrubbedStream:
    """``sys.stderr`` with every write scrubbed: tracebacks (``--verbose``, a thread's uncaught exception,
    an unraisable one), warnings, click's messages and library loggers' last-resort output all write
    here, and their text (an exception's message, its ``__cause__``/``__context__``) may hold a secret a
    driver put in a DSN. Each write is one line or one record, so a secret is never split between two."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(scrub(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, ...
        return getattr(self.stream, name)


def scrub_stderr() -> None:
    """Route every Python-level write to stderr through the scrubber (once; forked workers inherit it)."""
    if not isinstance(sys.stderr, ScrubbedStream):
        sys.stderr = ScrubbedStream(sys.stderr)


class NativeStderr:
    """The process's file descriptor 2, where native code writes (connectorx's Rust, C libraries, worker
    processes), read through a pipe by a thread that copies it to the real stderr scrubbed, line by line.
    A Rust panic's report (connectorx panics on a zero date, which the fast path then reads another way;
    and a backtrace when RUST_BACKTRACE is set) is dropped: one line at debug level instead. Python's own
    ``sys.stderr`` writes to the real stderr directly (a duplicate of the original descriptor), so logs are
    never held up, and a crash (``faulthandler``) is reported there too. ``close`` puts the original
    descriptor back and copies what is left in the pipe."""

    PANIC = re.compile(r"^thread '.*' (?:\(\d+\) )?panicked at ")
    FRAME = re.compile(r"^(?:stack backtrace:|\s+\d+: |\s+at )")
    IDLE_S = 0.2  # a panic's report is written at once: after this long without a line, it has ended

    def __init__(self) -> None:
        self.real = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._read = read
        self._pending = b""
        self._panic: list[str] = []
        self._blank = False  # a blank line held back: Rust writes one before a panic's report
        self._thread = threading.Thread(target=self._relay, name="stderr-relay", daemon=True)
        self._thread.start()

    @classmethod
    def install(cls) -> NativeStderr | None:
        """Relay descriptor 2 (None when there is none to relay), and point ``sys.stderr`` at the real one."""
        try:
            relay = cls()
        except OSError:
            return None
        encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
        sys.stderr = io.TextIOWrapper(
            io.FileIO(relay.real, "w", closefd=False), encoding=encoding, errors="backslashreplace",
            line_buffering=True, write_through=True,
        )  # fmt: skip
        faulthandler.enable(file=sys.stderr)  # a crash says so on the real stderr, which a dying relay cannot
        return relay

    def close(self, wait_s: float = 1.0) -> None:
        """Descriptor 2 back to the real stderr; what native code wrote before is copied out first."""
        with contextlib.suppress(OSError):
            os.dup2(self.real, 2)  # the pipe's last write end in this process is gone: the relay sees EOF
        self._thread.join(wait_s)

    def _relay(self) -> None:
        while True:
            waiting = self._panic or self._blank  # a report, or a blank line that may open one
            ready, _, _ = select.select([self._read], [], [], self.IDLE_S if waiting else None)
            if not ready:
                self._settle()
                continue
            chunk = os.read(self._read, 65536)
            if not chunk:
                break
            *lines, self._pending = (self._pending + chunk).split(b"\n")
            for line in lines:
                with contextlib.suppress(Exception):  # the pipe must be drained whatever a line holds
                    self._line(line.decode("utf-8", "replace"))
        if self._pending:
            self._line(self._pending.decode("utf-8", "replace"))
        self._settle()
        os.close(self._read)

    def _line(self, text: str) -> None:
        if self._panic:
            if self.FRAME.match(text) or text.startswith("note: ") or not self._frames_began():
                self._panic.append(text)
                if text.startswith("note: "):
                    self._end_panic()
                return
            self._end_panic()
        if self.PANIC.match(text):  # Rust writes a blank line before its report: dropped with it
            self._panic, self._blank = [text], False
            return
        self._settle()
        if not text.strip():
            self._blank = True
            return
        self._write(text)

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError):  # a closed stderr: nothing can be said
            os.write(self.real, (scrub(text) + "\n").encode("utf-8", "replace"))

    def _settle(self) -> None:
        """Nothing more came: a report has ended, a held blank line was only that."""
        self._end_panic()
        if self._blank:
            self._blank = False
            self._write("")

    def _frames_began(self) -> bool:
        return "stack backtrace:" in self._panic

    def _end_panic(self) -> None:
        if self._panic:
            lines = (line.strip() for line in self._panic[1:] if not self.FRAME.match(line))
            message = " ".join(line for line in lines if not line.startswith("note: "))
            logging.getLogger(f"{LOGGER_NAME}.native").debug("dropped a Rust panic report: %s", message[:500])
            self._panic = []


MYSQL_DRIVERS = ("asyncmy", "aiomysql")


class _DebugFilter(logging.Filter):
    """A library's record as a debug line of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def _as_debug(logger: logging.Logger, handler: logging.Handler, verbose: bool) -> None:
    """A MySQL driver logs each warning the server gave a statement (asyncmy: every row of its SHOW
    WARNINGS, e.g. error 1356 of a view over a dropped table, met by the catalog query) through a logger
    without a handler, so Python's last-resort handler printed it raw on stderr beside s3shift's own
    one-line failure. What matters of them s3shift reports itself: they are debug lines (--verbose)."""
    for old in list(logger.handlers):
        logger.removeHandler(old)
    for old_filter in list(logger.filters):
        logger.removeFilter(old_filter)
    logger.addFilter(_DebugFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.CRITICAL + 1)
    logger.propagate = False


def _driver_warnings_logged() -> None:
    """aiomysql reports the server's warnings as Python warnings (PyMySQL's ``Warning``), which printed
    two raw lines (file, line, message, source) on stderr: they go to its logger, a debug line as asyncmy's.
    Every other warning is shown as before."""
    shown = warnings.showwarning
    if getattr(shown, "s3shift", False):
        return

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if category.__module__.split(".")[0] == "pymysql":
            logging.getLogger("aiomysql").warning("%s", message)
            return
        shown(message, category, filename, lineno, file, line)

    showwarning.s3shift = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}")


def configure(verbose: bool) -> None:
    """Send s3shift logs to stderr: INFO by default, DEBUG with --verbose. Library noise stays quiet."""
    scrub_stderr()
    root = logging.getLogger(LOGGER_NAME)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_ScrubFilter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    for noisy in ("botocore", "aiobotocore", "boto3", "aioboto3", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for driver in MYSQL_DRIVERS:
        _as_debug(logging.getLogger(driver), handler, verbose)
    _driver_warnings_logged()
    # asyncio's own reports (unretrieved task exceptions) go through the same handler, in one line, instead
    # of Python's last-resort handler, which printed them with a traceback.
    loop_log = logging.getLogger("asyncio")
    for old in list(loop_log.handlers):
        loop_log.removeHandler(old)
    for old_filter in list(loop_log.filters):
        loop_log.removeFilter(old_filter)
    if not verbose:  # a logger's filter runs before its handlers': one line, then scrubbed
        loop_log.addFilter(_OneLineFilter())
    loop_log.addHandler(handler)
    loop_log.propagate = False
