"""The set-up and demo scripts: demo data against the real MariaDB, the demo config, the S3 server script."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from src.config.loader import load_pipeline
from tests.conftest import (
    MYSQL_HOST,
    MYSQL_PASSWORD,
    MYSQL_PORT,
    MYSQL_USER,
    ROOT,
    _free_port,
    mysql_rows,
    s3_client,
)

SHELL_SCRIPTS = ["setup.sh", "services.sh", "s3_server.sh", "demo.sh", "test.sh"]
CONFIG_ENV = ["MYSQL_HOST", "MYSQL_PORT", "MYSQL_USER", "MYSQL_PASSWORD", "PG_HOST", "PG_PORT", "PG_USER"]
CONFIG_ENV += ["PG_PASSWORD", "PG_DATABASE", "S3_BUCKET", "S3_ENDPOINT_URL"]


def _demo_data() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_data", ROOT / "scripts" / "demo_data.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo_data = _demo_data()


@pytest.fixture(scope="module")
def generated() -> dict[str, list[tuple[Any, ...]]]:
    return dict(demo_data.generate())


def test_generated_data_is_deterministic_and_consistent(generated: dict[str, list[tuple[Any, ...]]]) -> None:
    assert demo_data.generate() == generated
    customers, orders, products = generated["customers"], generated["orders"], generated["products"]
    assert (len(customers), len(orders), len(products)) == (5_000, 20_000, 500)
    for rows in generated.values():
        assert len({row[0] for row in rows}) == len(rows)  # primary keys are unique
    assert {row[1] for row in orders} <= {row[0] for row in customers}
    names = [row[1] for row in customers]
    assert any(not name.isascii() for name in names)
    assert any(any(ord(ch) > 0xFFFF for ch in name) for name in names)  # 4-byte UTF-8 (emoji)
    for order in orders:
        payload = json.loads(order[8])
        assert order[4] == sum(item["qty"] for item in payload["items"])
        assert (order[11] is not None) == (order[2] in ("shipped", "delivered"))
    assert any(row[7] is None for row in products) and any(row[7] for row in products)


def test_load_round_trips_through_mariadb(
    mysql_db: str, generated: dict[str, list[tuple[Any, ...]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, value in [("HOST", MYSQL_HOST), ("PORT", str(MYSQL_PORT)), ("USER", MYSQL_USER)]:
        monkeypatch.setenv(f"MYSQL_{var}", value)
    monkeypatch.setenv("MYSQL_PASSWORD", MYSQL_PASSWORD)
    demo_data.load(generated, database=mysql_db)
    demo_data.load(generated, database=mysql_db)  # idempotent: tables are recreated, not appended to
    for table, rows in generated.items():
        assert mysql_rows(mysql_db, f"SELECT COUNT(*) FROM `{table}`") == [(len(rows),)]
    assert mysql_rows(mysql_db, "SELECT * FROM customers ORDER BY id") == generated["customers"]
    stored = mysql_rows(mysql_db, "SELECT id, note, payload, created_at, updated_at FROM orders ORDER BY id")
    assert stored == [(r[0], r[6], r[8], r[9], r[10]) for r in generated["orders"]]
    binary = mysql_rows(mysql_db, "SELECT id, sku_hash, thumbnail FROM products ORDER BY id")
    assert binary == [(r[0], r[6], r[7]) for r in generated["products"]]


def test_demo_pipeline_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in CONFIG_ENV:
        monkeypatch.delenv(var, raising=False)
    pipeline = load_pipeline(ROOT / "config", "demo")
    assert (pipeline.source.host, pipeline.source.port, pipeline.source.database) == (
        "127.0.0.1",
        3306,
        "shop",
    )
    assert pipeline.source.password.reveal() == ""
    assert (pipeline.target.type, pipeline.target.database, pipeline.target.schema) == (
        "postgres",
        "test",
        "analytics",
    )
    assert (pipeline.s3.bucket, pipeline.s3.prefix, pipeline.s3.endpoint_url) == (
        "s3shift-demo",
        "staging/",
        None,
    )
    assert list(pipeline.tables) == ["shop.customers", "shop.orders", "shop.products"]
    assert {t.cdc_strategy for t in pipeline.tables.values()} == {"full_sync"}
    assert pipeline.table("shop.customers").target_table == "customers"
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:5055")
    monkeypatch.setenv("MYSQL_PASSWORD", "from-env")
    pipeline = load_pipeline(ROOT / "config", "demo")
    assert pipeline.s3.endpoint_url == "http://127.0.0.1:5055"
    assert pipeline.source.password.reveal() == "from-env"


@pytest.mark.parametrize("script", [*SHELL_SCRIPTS, "../.ci/run"])
def test_shell_script_parses(script: str) -> None:
    path = ROOT / "scripts" / script
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert path.read_text().startswith("#!/usr/bin/env bash\n")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
            return True
    except OSError:
        return False


def _s3_server(*args: str) -> subprocess.CompletedProcess[str]:
    script = str(ROOT / "scripts" / "s3_server.sh")
    proc = subprocess.run(["bash", script, *args], capture_output=True, text=True, timeout=60, check=False)
    if args[0] == "--stop":
        (ROOT / ".s3shift" / f"moto-{args[1]}.log").unlink(missing_ok=True)
    return proc


def test_s3_server_script_starts_reuses_and_stops() -> None:
    port = str(_free_port())
    url = f"http://127.0.0.1:{port}"
    started = _s3_server(port)
    try:
        assert (started.returncode, started.stdout) == (0, f"{url}\n"), started.stderr
        assert _s3_server(port).stdout == f"{url}\n"  # already up: reused
        s3_client(url).create_bucket(Bucket="probe")
        assert [b["Name"] for b in s3_client(url).list_buckets()["Buckets"]] == ["probe"]
    finally:
        assert _s3_server("--stop", port).returncode == 0
    deadline = time.monotonic() + 10
    while _answers(url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _answers(url)
    assert not Path(ROOT / ".s3shift" / f"moto-{port}.pid").exists()


def test_services_script_is_a_noop_when_everything_answers() -> None:
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_ENV} | {"S3SHIFT_S3_PORT": port}
    script = str(ROOT / "scripts" / "services.sh")
    try:
        proc = subprocess.run(
            ["bash", script], capture_output=True, text=True, timeout=120, env=env, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == ""  # stdout stays free for callers (demo.sh prints JSON there)
        assert "MariaDB ready on 127.0.0.1:3306" in proc.stderr
        assert "PostgreSQL ready on 127.0.0.1:5432" in proc.stderr
        assert f"S3 (moto) ready at http://127.0.0.1:{port}" in proc.stderr
        for action in ("installing", "starting", "creating", "allowing", "trusting"):
            assert action not in proc.stderr  # nothing was changed
    finally:
        _s3_server("--stop", port)


# Sourcing services.sh defines its functions without running it; these stubs stand in for the system.
STUBS = """
set -euo pipefail
source scripts/services.sh
TIMEOUT=1
port_open() { false; }
apt_install() { echo "STUB apt_install $*" >&2; }
install() { :; }
start-stop-daemon() { echo "STUB start-stop-daemon $*" >&2; }
pg_ctlcluster() { echo "STUB pg_ctlcluster $*" >&2; }
"""


@pytest.mark.parametrize(
    ("call", "service"),
    [("mysql_start", "MariaDB (127.0.0.1:3306)"), ("pg_start", "PostgreSQL (127.0.0.1:5432)")],
)
def test_services_script_names_the_service_that_does_not_come_up(call: str, service: str) -> None:
    proc = subprocess.run(
        ["bash", "-c", STUBS + call], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 1, proc.stderr
    assert f"services: ERROR: {service} did not answer within 1s" in proc.stderr
