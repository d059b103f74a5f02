"""The ``tables:`` entries and ``processing:`` of a pipeline file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from src.common.errors import ConfigError
from src.common.policy import POLICY_CHOICES, ColumnSelection, TypePolicy
from src.config.fields import checked_values, positive
from src.config.models import STRATEGY_ALIASES, Processing, TableConfig

_PROCESSING_KEYS = {
    "max_parallel_tables": "int",
    "batch_size": "int",
    "file_size_mb": "int",
    "fast_path": "bool",
    "range_rows": "int",
    "range_workers": "int",
    "stream_load": "bool",
    "processes": "int",
}

_TABLE_KEYS = {
    "cdc_strategy": "str",
    "cdc_timestamp_column": "str",
    "cdc_id_column": "str",
    "target_name": "str",
    "processing": "map",
    "primary_key": "names",
    "file_size_mb": "int",
    "description": "str",
    "table_type": "str",
    "full_sync_mode": "str",
    "lag_seconds": "float",
    "lookback_seconds": "float",
    "type_policies": "map",
    "include_columns": "names",
    "exclude_columns": "names",
    "rename_columns": "name_map",
    "where": "str",
    "additional_where": "str",
    "diststyle": "str",
    "distkey": "str",
    "sortkey": "names",
    "encode": "name_map",
}

# lag_seconds and lookback_seconds move a window's bounds back from the clock or the watermark: beyond
# this no date is left to move to (a timedelta of 1e12 s reaches before the year 1).
MAX_WINDOW_SECONDS = 100 * 365 * 86400

_TABLE_PROCESSING_KEYS = {"batch_size": "int", "file_size_mb": "int"}


def parse_processing(raw: Any, file: Path) -> Processing:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{file}: 'pipeline.processing' must be a mapping", file=str(file), key="pipeline.processing"
        )
    raw = {k: v for k, v in raw.items() if k not in ("strategy", "timeout_minutes")}
    v = checked_values(raw, _PROCESSING_KEYS, file=file, where="pipeline.processing")
    positive(
        v,
        tuple(k for k in v if k not in ("fast_path", "stream_load", *_AUTO)),
        file,
        "pipeline.processing",
    )
    for key, auto in _AUTO.items():
        if v.get(key, 0) < 0:
            raise ConfigError(
                f"{file}: 'pipeline.processing.{key}' must be 0 ({auto}) or a number (got {v[key]})",
                file=str(file),
                key=f"pipeline.processing.{key}",
            )
    return Processing(**v)


_AUTO = {  # processing keys whose 0 lets s3shift choose
    "processes": "one process per core for runs of many tables",
    "range_workers": "3 connections per table when the source's max_connections has room for them, else 2",
}


def _table_types(v: dict[str, Any], base: TableConfig, file: Path, where: str) -> None:
    """type_policies, column selection, row filter and Redshift physical design, validated in place."""
    if "type_policies" in v:
        raw = checked_values(
            v.pop("type_policies"),
            dict.fromkeys(POLICY_CHOICES, "str"),
            file=file,
            where=f"{where}.type_policies",
        )
        merged = {**base.type_policies.to_dict(), **raw}
        for key, value in raw.items():
            if value not in POLICY_CHOICES[key]:
                raise ConfigError(
                    f"{file}: '{where}.type_policies.{key}' must be one of {', '.join(POLICY_CHOICES[key])} "
                    f"(got {value!r})",
                    file=str(file),
                    key=f"{where}.type_policies.{key}",
                )
        v["type_policies"] = TypePolicy.from_dict(merged)
    if {"include_columns", "exclude_columns", "rename_columns"} & set(v):
        rename = v.pop("rename_columns", None) or dict(base.columns.rename)
        v["columns"] = ColumnSelection(
            include=tuple(str(c) for c in v.pop("include_columns", base.columns.include)),
            exclude=tuple(str(c) for c in v.pop("exclude_columns", base.columns.exclude)),
            rename=tuple((str(a), str(b)) for a, b in rename.items()),
        )
    if "additional_where" in v:
        if "where" in v:
            raise ConfigError(
                f"{file}: '{where}' sets both where and additional_where; keep one",
                file=str(file),
                key=f"{where}.where",
            )
        v["where"] = v.pop("additional_where")
    if "diststyle" in v:
        v["diststyle"] = str(v["diststyle"]).upper()
        if v["diststyle"] not in ("AUTO", "EVEN", "ALL", "KEY"):
            raise ConfigError(
                f"{file}: '{where}.diststyle' must be AUTO, EVEN, ALL or KEY (got {v['diststyle']!r})",
                file=str(file),
                key=f"{where}.diststyle",
            )
    if "sortkey" in v:
        v["sortkey"] = tuple(str(c) for c in v["sortkey"])
    if "encode" in v:
        v["encode"] = tuple((str(c), str(e).upper()) for c, e in v["encode"].items())


def parse_table(name: str, raw: Any, base: TableConfig, file: Path, where: str) -> TableConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: '{where}' must be a mapping", file=str(file), key=where)
    v = checked_values(raw, _TABLE_KEYS, file=file, where=where)
    for info in ("description", "table_type"):
        v.pop(info, None)
    mode = v.pop("full_sync_mode", "replace")
    if mode != "replace":
        raise ConfigError(
            f"{file}: '{where}.full_sync_mode' must be 'replace' (full_sync always replaces "
            f"the target atomically; got {mode!r})",
            file=str(file),
            key=f"{where}.full_sync_mode",
        )
    processing = v.pop("processing", None)
    if processing is not None:
        v.update(checked_values(processing, _TABLE_PROCESSING_KEYS, file=file, where=f"{where}.processing"))
    if "cdc_strategy" in v:
        strategy = STRATEGY_ALIASES.get(v["cdc_strategy"])
        if strategy is None:
            raise ConfigError(
                f"{file}: '{where}.cdc_strategy' must be one of full_sync, timestamp_only, id_only, hybrid "
                f"(or full, timestamp, id); got {v['cdc_strategy']!r}",
                file=str(file),
                key=f"{where}.cdc_strategy",
            )
        v["cdc_strategy"] = strategy
    if "primary_key" in v:
        v["primary_key"] = tuple(str(c) for c in v["primary_key"])
    _table_types(v, base, file, where)
    positive(v, ("batch_size", "file_size_mb"), file, where)
    for key in ("lag_seconds", "lookback_seconds"):
        if not 0 <= v.get(key, 0) <= MAX_WINDOW_SECONDS:
            raise ConfigError(
                f"{file}: '{where}.{key}' must be from 0 to {MAX_WINDOW_SECONDS} seconds (100 years; "
                f"got {v[key]:g})",
                file=str(file),
                key=f"{where}.{key}",
            )
    _check_lookback(v, base, file, where)
    return replace(base, name=name, **v)


def _check_lookback(v: dict[str, Any], base: TableConfig, file: Path, where: str) -> None:
    """lookback_seconds re-reads a span of time before the watermark: an id_only table's cursor is a
    number, which has no time to look back over, so the key was silently ignored there (refused instead)."""
    lookback = v.get("lookback_seconds", base.lookback_seconds)
    if v.get("cdc_strategy", base.cdc_strategy) != "id_only" or not lookback:
        return
    inherited = "lookback_seconds" not in v
    given = f"inherits lookback_seconds {lookback:g} from pipeline.default_table_config" if inherited else ""
    given = given or f"sets lookback_seconds {lookback:g}"
    raise ConfigError(
        f"{file}: pipeline '{file.stem}', '{where}' {given}, but its cdc_strategy id_only reads by a numeric "
        f"id, which has no time to look back over — set {where}.lookback_seconds to 0, or use cdc_strategy "
        "hybrid (a timestamp and the id) to re-read late commits",
        file=str(file),
        key=f"{where}.lookback_seconds",
    )
