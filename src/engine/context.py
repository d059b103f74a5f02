"""What every table of a run shares: the run's identity, config, limits and open resources."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from src.config.models import Pipeline
from src.engine.limits import Limits
from src.source.introspect import Catalog, SourceClock
from src.source.mysql import MySQLSource
from src.stage.pending import PipelineScan
from src.stage.s3 import S3Stage
from src.warehouse.base import StateRow, Warehouse

RunMode = Literal["sync", "backup_only", "load_only"]


@dataclass(frozen=True)
class RunContext:
    execution_id: str
    pipeline: Pipeline
    limits: Limits
    source: MySQLSource | None  # None for --load-only: no MySQL reads at all
    s3: S3Stage
    warehouse: Warehouse
    mode: RunMode = "sync"
    catalog: Catalog | None = None  # the run's batched source catalog (None: one query per table)
    scan: PipelineScan | None = None  # the S3 listings made at the run's start (None: per table)
    # every table's state, read and located (``table.locate``) at the run's start (None: per table)
    states: Mapping[str, StateRow] | None = None
    clock: SourceClock = field(default_factory=SourceClock)  # the source's clock for stage labels
    tables_at_once: int = 1  # the most tables this process reads at a time (its slots, or fewer tables)
