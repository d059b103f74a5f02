"""Pure planning: pipeline config (+ later, warehouse state) -> what to do for each requested table."""

from __future__ import annotations

from dataclasses import dataclass

from src.common.errors import ConfigError
from src.common.naming import split_table
from src.config.models import Pipeline, Strategy

MIB = 1024 * 1024
SUPPORTED_STRATEGIES: tuple[Strategy, ...] = ("full_sync",)


@dataclass(frozen=True)
class TablePlan:
    table: str  # "db.table" as requested
    database: str
    source_table: str
    strategy: Strategy
    target_schema: str
    target_table: str
    batch_size: int
    file_size_bytes: int
    primary_key: tuple[str, ...] | None


def plan_table(pipeline: Pipeline, table: str) -> TablePlan:
    """Raise ConfigError (naming the pipeline and table) when the table cannot be planned."""
    try:
        database, name = split_table(table)
    except ValueError:
        raise ConfigError(
            f"table '{table}' must be written as database.table (pipeline '{pipeline.name}')", table=table
        ) from None
    cfg = pipeline.table(table)
    if cfg.cdc_strategy not in SUPPORTED_STRATEGIES:
        raise ConfigError(
            f"pipeline '{pipeline.name}', table {table}: cdc_strategy '{cfg.cdc_strategy}' is not supported "
            "by this version yet; use cdc_strategy: full_sync",
            table=table,
            key=f"tables.{table}.cdc_strategy",
        )
    return TablePlan(
        table=table,
        database=database,
        source_table=name,
        strategy=cfg.cdc_strategy,
        target_schema=pipeline.target.schema,
        target_table=cfg.target_table,
        batch_size=cfg.batch_size,
        file_size_bytes=cfg.file_size_mb * MIB,
        primary_key=cfg.primary_key,
    )
