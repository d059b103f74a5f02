"""Logging to stderr only, with secrets scrubbed from every record."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

from src.common.secret import scrub

LOGGER_NAME = "s3shift"


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
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
