"""S3 staging. This package is where aiohttp (under aiobotocore) is first imported, so it imports it here
without the two default SSL contexts aiohttp builds at import time: each loads the system CA store,
about 35 ms apiece on the 2-core box, on every run's start-up, for contexts s3shift never uses:
aiobotocore hands aiohttp a context of its own for every connection (with certifi's or the configured
CA bundle), or none for an ``http://`` endpoint. Those two defaults are left with no CA at all, so
anything that did use them would fail verification (fail closed), never skip it.
``tests/test_stage_s3.py`` pins both halves: the defaults hold no CA, an HTTPS client still verifies.
"""

from __future__ import annotations

import ssl
import sys


def _import_aiohttp() -> None:
    if "aiohttp.connector" in sys.modules:
        return
    load = ssl.SSLContext.set_default_verify_paths
    ssl.SSLContext.set_default_verify_paths = lambda self: None  # type: ignore[method-assign]
    try:
        import aiohttp.connector  # noqa: F401
    finally:
        ssl.SSLContext.set_default_verify_paths = load  # type: ignore[method-assign]


_import_aiohttp()
