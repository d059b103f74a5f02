"""Logging to stderr only, with secrets scrubbed from every record."""

from __future__ import annotations

import logging
import sys

from src.common.secret import scrub

LOGGER_NAME = "s3shift"


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        return True


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}")


def configure(verbose: bool) -> None:
    """Send s3shift logs to stderr: INFO by default, DEBUG with --verbose. Library noise stays quiet."""
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
