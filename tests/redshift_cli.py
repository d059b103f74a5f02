"""Run the real s3shift CLI in its own process with Redshift targets served by the emulation harness.

    python tests/redshift_cli.py S3_ENDPOINT <s3shift arguments...>

Used by process-level tests (SIGKILL, SIGTERM, concurrent runs) to cover the Redshift path exactly like
the PostgreSQL one: only the Redshift connection factory is swapped for the emulator's.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import src.warehouse.factory as factory
from src.cli.main import main
from tests.redshift_emulator import emulator_connect

if __name__ == "__main__":
    endpoint = sys.argv.pop(1)
    factory.connect_asyncpg = emulator_connect(endpoint)  # type: ignore[assignment]
    main()
