"""Typed configuration: frozen values built by ``src.config.loader`` from the YAML files."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from src.common.policy import ColumnSelection, TypePolicy
from src.common.secret import Secret

Strategy = Literal["full_sync", "timestamp_only", "id_only", "hybrid"]
Driver = Literal["asyncmy", "aiomysql"]
SslMode = Literal["disabled", "preferred", "required", "verify_ca", "verify_identity"]
SSL_MODES: tuple[SslMode, ...] = ("disabled", "preferred", "required", "verify_ca", "verify_identity")
TargetType = Literal["postgres", "redshift"]

STRATEGY_ALIASES: dict[str, Strategy] = {
    "full_sync": "full_sync",
    "full": "full_sync",
    "timestamp_only": "timestamp_only",
    "timestamp": "timestamp_only",
    "id_only": "id_only",
    "id": "id_only",
    "hybrid": "hybrid",
}


@dataclass(frozen=True)
class SourceConn:
    """A MySQL / MariaDB server (connections.sources.<name>)."""

    name: str
    host: str
    port: int = 3306
    username: str = "root"
    password: Secret = field(default_factory=lambda: Secret(""))
    database: str | None = None
    max_connections: int = 8
    driver: Driver = "asyncmy"
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    ssl_mode: SslMode = "preferred"  # as the mysql client's --ssl-mode (``src.source.mysql.tls_context``)
    ssl_ca: str | None = None  # CA bundle the server's certificate is verified against (verify_* modes)


@dataclass(frozen=True)
class TargetConn:
    """A warehouse (connections.targets.<name>): PostgreSQL or Redshift."""

    name: str
    type: TargetType
    host: str
    port: int
    username: str
    password: Secret = field(default_factory=lambda: Secret(""))
    database: str = "dev"
    schema: str = "public"
    iam_role: str | None = None  # Redshift COPY role ARN
    region: str | None = None  # Redshift COPY REGION, when the bucket is elsewhere
    max_connections: int = 4  # concurrent loads (WLM slots)
    connect_timeout: float = 15.0
    ssl: bool = False
    ssl_ca: str | None = None  # PEM bundle ``ssl: true`` verifies the server against (else the system's CAs)
    state_schema: str | None = None  # where s3shift_state lives; None = ``schema``
    lock_timeout: float = 300.0  # PostgreSQL: seconds a statement waits for a lock; 0 = no limit
    read_timeout: float = 60.0  # seconds a statement waits for its answer before the server is checked


@dataclass(frozen=True)
class S3Conn:
    """An S3 staging location (connections.s3.<name>)."""

    name: str
    bucket: str
    prefix: str = ""
    region: str = "us-east-1"
    endpoint_url: str | None = None
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None
    profile: str | None = None
    part_size_mb: int = 8
    max_concurrency: int = 8  # S3 parts in flight
    max_attempts: int = 5  # tries of one S3 request (botocore's standard retry mode, with backoff)
    read_timeout: float = 60.0  # seconds for the answer to a request sent; unanswered, it is tried twice
    sse: str | None = None  # server-side encryption asked for on every object: AES256, aws:kms, aws:kms:dsse
    sse_kms_key_id: str | None = None  # the KMS key (id, ARN or alias) of aws:kms / aws:kms:dsse


@dataclass(frozen=True)
class TableConfig:
    """One entry of a pipeline's ``tables:`` (or the pipeline defaults for a table passed with -t only)."""

    name: str  # "db.table" as requested
    cdc_strategy: Strategy = "full_sync"
    cdc_timestamp_column: str | None = None
    cdc_id_column: str | None = None
    target_name: str | None = None
    batch_size: int = 50_000
    file_size_mb: int = 128
    primary_key: tuple[str, ...] | None = None
    lag_seconds: float = 5.0  # the window ends at the source's NOW(6) minus this (late commits)
    lookback_seconds: float = 0.0  # re-read this much before the watermark (needs a key: merged)
    type_policies: TypePolicy = field(default_factory=TypePolicy)
    columns: ColumnSelection = field(default_factory=ColumnSelection)
    where: str | None = None  # a row filter (SQL) ANDed into every source query
    diststyle: str | None = None  # Redshift: AUTO | EVEN | ALL | KEY
    distkey: str | None = None
    sortkey: tuple[str, ...] = ()
    encode: tuple[tuple[str, str], ...] = ()  # (column, Redshift ENCODE)

    @property
    def database(self) -> str:
        return self.name.partition(".")[0]

    @property
    def table(self) -> str:
        return self.name.partition(".")[2]

    @property
    def target_table(self) -> str:
        return self.target_name or self.table


@dataclass(frozen=True)
class Processing:
    max_parallel_tables: int = 4
    batch_size: int = 50_000
    file_size_mb: int = 128
    fast_path: bool = True  # big full reads through connectorx key ranges (src.source.fastpath)
    range_rows: int = 250_000  # rows per key range of the fast path
    range_workers: int = 0  # connectorx connections per table (within the source's max_connections); 0: auto
    stream_load: bool = True  # PostgreSQL: a full_sync loads the target while it is staged (one commit)
    processes: int = 0  # processes sharing the run's tables (src.engine.workers); 0: one per core if many


@dataclass(frozen=True)
class Pipeline:
    name: str
    source: SourceConn
    target: TargetConn
    s3: S3Conn
    processing: Processing
    tables: dict[str, TableConfig]
    defaults: TableConfig  # what a table passed with -t but absent from ``tables:`` gets (name filled in)

    def table(self, name: str) -> TableConfig:
        return self.tables.get(name) or replace(self.defaults, name=name)
