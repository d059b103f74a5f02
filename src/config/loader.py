"""Reads ``connections.yml`` and ``pipelines/<name>.yml`` into typed, validated config values.

Only this package reads files and the environment. Every error names the file and the key path.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from src.common.errors import ConfigError
from src.common.policy import POLICY_CHOICES, ColumnSelection, TypePolicy
from src.common.secret import Secret
from src.config.interp import interpolate
from src.config.models import (
    STRATEGY_ALIASES,
    Pipeline,
    Processing,
    S3Conn,
    SourceConn,
    TableConfig,
    TargetConn,
)

DEFAULT_CONFIG_DIR = "config"
CONFIG_DIR_ENV = "S3SHIFT_CONFIG_DIR"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# Allowed keys per section: key -> kind ("str" | "int" | "float" | "bool" | "secret" | "map" | "list").
_SOURCE_KEYS = {
    "host": "str",
    "port": "int",
    "username": "str",
    "user": "str",
    "password": "secret",
    "database": "str",
    "max_connections": "int",
    "driver": "str",
    "connect_timeout": "float",
    "read_timeout": "float",
    "description": "str",
    "ssh_tunnel": "map",
}
_TARGET_KEYS = {
    "type": "str",
    "host": "str",
    "port": "int",
    "username": "str",
    "user": "str",
    "password": "secret",
    "database": "str",
    "schema": "str",
    "iam_role": "str",
    "region": "str",
    "max_connections": "int",
    "connect_timeout": "float",
    "ssl": "bool",
    "description": "str",
    "ssh_tunnel": "map",
    "state_schema": "str",
}
_S3_KEYS = {
    "bucket": "str",
    "bucket_name": "str",
    "prefix": "str",
    "region": "str",
    "endpoint_url": "str",
    "access_key_id": "secret",
    "secret_access_key": "secret",
    "session_token": "secret",
    "profile": "str",
    "part_size_mb": "int",
    "max_concurrency": "int",
    "description": "str",
}
_PROCESSING_KEYS = {"max_parallel_tables": "int", "batch_size": "int", "file_size_mb": "int"}
_TABLE_KEYS = {
    "cdc_strategy": "str",
    "cdc_timestamp_column": "str",
    "cdc_id_column": "str",
    "target_name": "str",
    "processing": "map",
    "primary_key": "list",
    "file_size_mb": "int",
    "description": "str",
    "table_type": "str",
    "full_sync_mode": "str",
    "lag_seconds": "float",
    "lookback_seconds": "float",
    "type_policies": "map",
    "include_columns": "list",
    "exclude_columns": "list",
    "rename_columns": "map",
    "where": "str",
    "additional_where": "str",
    "diststyle": "str",
    "distkey": "str",
    "sortkey": "list",
    "encode": "map",
}
_TABLE_PROCESSING_KEYS = {"batch_size": "int", "file_size_mb": "int"}
_PIPELINE_KEYS = {
    "name": "str",
    "description": "str",
    "version": "str",
    "source": "str",
    "target": "str",
    "s3_config": "str",
    "processing": "map",
    "default_table_config": "map",
}


def config_dir(option: str | None) -> Path:
    """--config-dir, else $S3SHIFT_CONFIG_DIR, else ./config."""
    return Path(option or os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR)


def load_pipeline(directory: Path, name: str) -> Pipeline:
    """Load pipeline ``name`` and the connections it references. Raises ConfigError."""
    if not _NAME.match(name):
        raise ConfigError(
            f"pipeline name {name!r} is not valid: use letters, digits, '_', '-', '.'", key=name
        )
    path = directory / "pipelines" / f"{name}.yml"
    if not path.is_file() and path.with_suffix(".yaml").is_file():
        path = path.with_suffix(".yaml")
    if not path.is_file():
        known = sorted(p.stem for p in (directory / "pipelines").glob("*.y*ml"))
        hint = f"; known pipelines: {', '.join(known)}" if known else ""
        raise ConfigError(f"pipeline '{name}' not found: no file {path}{hint}", file=str(path))
    doc = _read_yaml(path)
    _check_keys(doc, {"pipeline": "map", "tables": "map"}, file=path, where="")
    spec = _section(doc, "pipeline", file=path, where="", required=True) or {}
    _check_keys(spec, _PIPELINE_KEYS, file=path, where="pipeline")
    declared = spec.get("name")
    if declared is not None and str(declared) != name:
        raise ConfigError(
            f"{path}: pipeline.name is '{declared}' but the file is named '{name}'; make them equal",
            file=str(path),
            key="pipeline.name",
        )
    conns_path = directory / "connections.yml"
    conns = _read_yaml(conns_path)
    _check_keys(conns, {"connections": "map"}, file=conns_path, where="")
    connections = _section(conns, "connections", file=conns_path, where="", required=True) or {}
    _check_keys(
        connections, {"sources": "map", "targets": "map", "s3": "map"}, file=conns_path, where="connections"
    )
    source = _source(_ref(connections, "sources", spec, "source", path, conns_path), conns_path)
    target = _target(_ref(connections, "targets", spec, "target", path, conns_path), conns_path)
    s3 = _s3(_ref(connections, "s3", spec, "s3_config", path, conns_path), conns_path)
    processing = _processing(spec.get("processing") or {}, path)
    defaults_raw = _section(spec, "default_table_config", file=path, where="pipeline") or {}
    defaults = _table(
        "",
        defaults_raw,
        TableConfig(name="", batch_size=processing.batch_size, file_size_mb=processing.file_size_mb),
        path,
        "pipeline.default_table_config",
    )
    tables: dict[str, TableConfig] = {}
    for table_name, raw in (_section(doc, "tables", file=path, where="") or {}).items():
        key = f"tables.{table_name}"
        if not isinstance(table_name, str) or table_name.count(".") != 1 or not all(table_name.split(".")):
            raise ConfigError(
                f"{path}: {key}: table names must be written as database.table", file=str(path), key=key
            )
        tables[table_name] = _table(table_name, raw or {}, defaults, path, key)
    return Pipeline(
        name=name,
        source=source,
        target=target,
        s3=s3,
        processing=processing,
        tables=tables,
        defaults=defaults,
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found; create it (see README, Configuration)", file=str(path)
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}", file=str(path)) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{at}: {problem}", file=str(path)) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping", file=str(path))
    return doc


def _where(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _check_keys(data: Mapping[str, Any], allowed: Mapping[str, str], *, file: Path, where: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(sorted(allowed))}"
            raise ConfigError(
                f"{file}: unknown key '{_where(where, str(key))}'{hint}",
                file=str(file),
                key=_where(where, str(key)),
            )


def _section(
    data: Mapping[str, Any], key: str, *, file: Path, where: str, required: bool = False
) -> dict[str, Any] | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(
                f"{file}: missing section '{_where(where, key)}'", file=str(file), key=_where(where, key)
            )
        return None
    if not isinstance(value, dict):
        raise ConfigError(
            f"{file}: '{_where(where, key)}' must be a mapping", file=str(file), key=_where(where, key)
        )
    return value


def _ref(
    connections: Mapping[str, Any], kind: str, spec: Mapping[str, Any], key: str, path: Path, conns_path: Path
) -> tuple[str, dict[str, Any]]:
    name = spec.get(key)
    if not name:
        raise ConfigError(f"{path}: missing key 'pipeline.{key}'", file=str(path), key=f"pipeline.{key}")
    section = _section(connections, kind, file=conns_path, where="connections") or {}
    if name not in section:
        known = ", ".join(sorted(section)) or "none"
        raise ConfigError(
            f"{path}: pipeline.{key} '{name}' is not defined under connections.{kind} in {conns_path} "
            f"(defined: {known})",
            file=str(path),
            key=f"pipeline.{key}",
        )
    raw = section[name]
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{conns_path}: connections.{kind}.{name} must be a mapping",
            file=str(conns_path),
            key=f"connections.{kind}.{name}",
        )
    return str(name), raw


def _values(raw: Mapping[str, Any], allowed: Mapping[str, str], *, file: Path, where: str) -> dict[str, Any]:
    """Check keys, interpolate ${VAR}, and convert each value to its declared kind."""
    _check_keys(raw, allowed, file=file, where=where)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            continue
        out[key] = _convert(value, allowed[key], file=file, where=_where(where, key))
    return out


def _convert(value: Any, kind: str, *, file: Path, where: str) -> Any:
    if kind in ("map", "list"):
        expected = dict if kind == "map" else list
        if not isinstance(value, expected):
            raise ConfigError(
                f"{file}: '{where}' must be a {'mapping' if kind == 'map' else 'list'}",
                file=str(file),
                key=where,
            )
        return value
    text = interpolate(value, where=f"{file}: {where}") if isinstance(value, str) else value
    try:
        if kind == "int":
            if isinstance(text, bool):
                raise ValueError
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            return _bool(text)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{file}: '{where}' must be {'an integer' if kind == 'int' else 'a ' + kind} (got {value!r})",
            file=str(file),
            key=where,
        ) from None
    if isinstance(text, dict | list):
        raise ConfigError(f"{file}: '{where}' must be a single value", file=str(file), key=where)
    return Secret(str(text)) if kind == "secret" else str(text)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0", ""):
        return False
    raise ValueError(value)


def _connection_values(
    raw: Mapping[str, Any], allowed: Mapping[str, str], file: Path, where: str
) -> dict[str, Any]:
    """A database connection's values: checked, converted, ``user`` accepted for ``username``."""
    values = _values(raw, allowed, file=file, where=where)
    _no_tunnel(values, file, where)
    if "user" in values:
        values.setdefault("username", values.pop("user"))
    return values


def _no_tunnel(values: dict[str, Any], file: Path, where: str) -> None:
    tunnel = values.pop("ssh_tunnel", None)
    values.pop("description", None)
    if tunnel and _bool(tunnel.get("enabled", True)):
        raise ConfigError(
            f"{file}: '{where}.ssh_tunnel' is not supported; open the tunnel outside "
            "s3shift (e.g. ssh -L) and point host/port at it",
            file=str(file),
            key=f"{where}.ssh_tunnel",
        )


def _require(values: Mapping[str, Any], keys: tuple[str, ...], file: Path, where: str) -> None:
    for key in keys:
        if not values.get(key):
            raise ConfigError(f"{file}: missing key '{where}.{key}'", file=str(file), key=f"{where}.{key}")


def _source(ref: tuple[str, dict[str, Any]], file: Path) -> SourceConn:
    name, raw = ref
    where = f"connections.sources.{name}"
    v = _connection_values(raw, _SOURCE_KEYS, file, where)
    _require(v, ("host",), file, where)
    if v.get("driver", "asyncmy") not in ("asyncmy", "aiomysql"):
        raise ConfigError(
            f"{file}: '{where}.driver' must be asyncmy or aiomysql (got {v['driver']!r})",
            file=str(file),
            key=f"{where}.driver",
        )
    _positive(v, ("port", "max_connections"), file, where)
    return SourceConn(name=name, **v)


def _target(ref: tuple[str, dict[str, Any]], file: Path) -> TargetConn:
    name, raw = ref
    where = f"connections.targets.{name}"
    v = _connection_values(raw, _TARGET_KEYS, file, where)
    kind = v.pop("type", "redshift")
    if kind not in ("postgres", "redshift"):
        raise ConfigError(
            f"{file}: '{where}.type' must be postgres or redshift (got {kind!r})",
            file=str(file),
            key=f"{where}.type",
        )
    _require(v, ("host", "username", "database"), file, where)
    v.setdefault("port", 5439 if kind == "redshift" else 5432)
    _positive(v, ("port", "max_connections"), file, where)
    if not v.get("iam_role"):
        v.pop("iam_role", None)
    if not v.get("region"):
        v.pop("region", None)
    return TargetConn(name=name, type=kind, **v)


def _s3(ref: tuple[str, dict[str, Any]], file: Path) -> S3Conn:
    name, raw = ref
    where = f"connections.s3.{name}"
    v = _values(raw, _S3_KEYS, file=file, where=where)
    v.pop("description", None)
    if "bucket_name" in v:
        v.setdefault("bucket", v.pop("bucket_name"))
    _require(v, ("bucket",), file, where)
    for key in ("endpoint_url", "profile", "access_key_id", "secret_access_key", "session_token"):
        if key in v and not v[key]:
            del v[key]
    prefix = str(v.get("prefix", "")).strip("/")
    v["prefix"] = f"{prefix}/" if prefix else ""
    _positive(v, ("part_size_mb", "max_concurrency"), file, where)
    if v.get("part_size_mb", 16) < 5:
        raise ConfigError(
            f"{file}: '{where}.part_size_mb' must be at least 5 (S3's minimum part size)",
            file=str(file),
            key=f"{where}.part_size_mb",
        )
    return S3Conn(name=name, **v)


def _positive(values: Mapping[str, Any], keys: tuple[str, ...], file: Path, where: str) -> None:
    for key in keys:
        if key in values and values[key] <= 0:
            raise ConfigError(
                f"{file}: '{where}.{key}' must be a positive integer (got {values[key]})",
                file=str(file),
                key=f"{where}.{key}",
            )


def _processing(raw: Any, file: Path) -> Processing:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{file}: 'pipeline.processing' must be a mapping", file=str(file), key="pipeline.processing"
        )
    raw = {k: v for k, v in raw.items() if k not in ("strategy", "timeout_minutes")}
    v = _values(raw, _PROCESSING_KEYS, file=file, where="pipeline.processing")
    _positive(v, tuple(v), file, "pipeline.processing")
    return Processing(**v)


def _table_types(v: dict[str, Any], base: TableConfig, file: Path, where: str) -> None:
    """type_policies, column selection, row filter and Redshift physical design, validated in place."""
    if "type_policies" in v:
        raw = v.pop("type_policies")
        _check_keys(raw, dict.fromkeys(POLICY_CHOICES, "str"), file=file, where=f"{where}.type_policies")
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


def _table(name: str, raw: Any, base: TableConfig, file: Path, where: str) -> TableConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: '{where}' must be a mapping", file=str(file), key=where)
    v = _values(raw, _TABLE_KEYS, file=file, where=where)
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
        v.update(_values(processing, _TABLE_PROCESSING_KEYS, file=file, where=f"{where}.processing"))
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
    _positive(v, ("batch_size", "file_size_mb"), file, where)
    for key in ("lag_seconds", "lookback_seconds"):
        if v.get(key, 0) < 0:
            raise ConfigError(
                f"{file}: '{where}.{key}' must be zero or more seconds (got {v[key]})",
                file=str(file),
                key=f"{where}.{key}",
            )
    return replace(base, name=name, **v)
