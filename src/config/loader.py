"""Reads ``connections.yml`` and ``pipelines/<name>.yml`` into typed, validated config values.

Only this package reads files and the environment. Every error names the file and the key path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import yaml

from src.common.errors import ConfigError
from src.common.naming import split_table
from src.config.fields import (
    check_keys,
    checked_values,
    convert,
    get_section,
    port_number,
    positive,
    positive_seconds,
    require,
)
from src.config.models import (
    SSL_MODES,
    Pipeline,
    S3Conn,
    SourceConn,
    TableConfig,
    TargetConn,
)
from src.config.tables import parse_processing, parse_table

DEFAULT_CONFIG_DIR = "config"
CONFIG_DIR_ENV = "S3SHIFT_CONFIG_DIR"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# Allowed keys per section: key -> kind ("str" | "int" | "float" | "bool" | "secret" | "map", or
# "names" | "name_map": a list of names, a mapping of names to names).
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
    "ssl_mode": "str",
    "ssl_ca": "str",
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
    "ssl_ca": "str",
    "description": "str",
    "ssh_tunnel": "map",
    "state_schema": "str",
    "lock_timeout": "float",
    "read_timeout": "float",
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
    "max_attempts": "int",
    "read_timeout": "float",
    "sse": "str",
    "sse_kms_key_id": "str",
    "description": "str",
}
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
    if not directory.is_dir():
        raise ConfigError(
            f"config directory {directory} not found; pass --config-dir DIR or set {CONFIG_DIR_ENV} "
            f"(default ./{DEFAULT_CONFIG_DIR})",
            file=str(directory),
        )
    path = directory / "pipelines" / f"{name}.yml"
    if not path.is_file() and path.with_suffix(".yaml").is_file():
        path = path.with_suffix(".yaml")
    if not path.is_file():
        known = sorted(p.stem for p in (directory / "pipelines").glob("*.y*ml"))
        hint = f"; known pipelines: {', '.join(known)}" if known else ""
        raise ConfigError(f"pipeline '{name}' not found: no file {path}{hint}", file=str(path))
    doc = _read_yaml(path)
    check_keys(doc, {"pipeline": "map", "tables": "map"}, file=path, where="")
    spec = get_section(doc, "pipeline", file=path, where="", required=True) or {}
    check_keys(spec, _PIPELINE_KEYS, file=path, where="pipeline")
    declared = spec.get("name")
    if declared is not None:
        declared = convert(declared, "str", file=path, where="pipeline.name")
    if declared is not None and declared != name:
        raise ConfigError(
            f"{path}: pipeline.name is '{declared}' but the file is named '{name}'; make them equal",
            file=str(path),
            key="pipeline.name",
        )
    conns_path = directory / "connections.yml"
    conns = _read_yaml(conns_path)
    check_keys(conns, {"connections": "map"}, file=conns_path, where="")
    connections = get_section(conns, "connections", file=conns_path, where="", required=True) or {}
    check_keys(
        connections, {"sources": "map", "targets": "map", "s3": "map"}, file=conns_path, where="connections"
    )
    source = _source(_ref(connections, "sources", spec, "source", path, conns_path), conns_path)
    target = _target(_ref(connections, "targets", spec, "target", path, conns_path), conns_path)
    s3 = _s3(_ref(connections, "s3", spec, "s3_config", path, conns_path), conns_path)
    processing = parse_processing(spec.get("processing") or {}, path)
    defaults_raw = get_section(spec, "default_table_config", file=path, where="pipeline") or {}
    defaults = parse_table(
        "",
        defaults_raw,
        TableConfig(name="", batch_size=processing.batch_size, file_size_mb=processing.file_size_mb),
        path,
        "pipeline.default_table_config",
    )
    tables: dict[str, TableConfig] = {}
    for table_name, raw in (get_section(doc, "tables", file=path, where="") or {}).items():
        key = f"tables.{table_name}"
        try:
            split_table(table_name if isinstance(table_name, str) else "")
        except ValueError as exc:
            problem = exc if isinstance(table_name, str) else "table names must be written as database.table"
            raise ConfigError(f"{path}: {key}: {problem}", file=str(path), key=key) from None
        tables[table_name] = parse_table(table_name, raw or {}, defaults, path, key)
    return Pipeline(
        name=name,
        source=source,
        target=target,
        s3=s3,
        processing=processing,
        tables=tables,
        defaults=defaults,
    )


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps the
    last silently, so a table listed twice (or a key repeated by a paste) would pass unnoticed."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base class reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    problem=f"key {key!r} is given twice in one mapping", problem_mark=key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1's implicit types would change what a file says before any key's kind is known: ``0123`` is
# 83 (octal), ``1_000`` and ``12:30`` (sexagesimal, 750) are integers, ``yes``/``on`` are True, ``1.50``
# is 1.5, ``2024-01-01`` a date. So a plain scalar stays the text written, and each key converts it to
# its declared kind (``fields.convert``): a text key keeps ``0123``, an integer key reads it as 123, a
# boolean key takes true/false/yes/no/on/off. Only null (``~``, ``null``, empty: "unset") and merge keys
# (``<<``) keep their meaning; quoted scalars were always text.
_KEPT_TAGS = ("tag:yaml.org,2002:null", "tag:yaml.org,2002:merge")
_StrictLoader.yaml_implicit_resolvers = {
    first: kept
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    if (kept := [(tag, regexp) for tag, regexp in resolvers if tag in _KEPT_TAGS])
}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found; create it (see README, Configuration)", file=str(path)
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at line {line}); save it as UTF-8",
            file=str(path),
        ) from None
    try:
        doc = yaml.load(text, Loader=_StrictLoader)
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


def _ref(
    connections: Mapping[str, Any], kind: str, spec: Mapping[str, Any], key: str, path: Path, conns_path: Path
) -> tuple[str, dict[str, Any]]:
    name = spec.get(key)
    if name is not None:  # a name, ${VAR} resolved: a list or mapping here is an error, not a crash
        name = convert(name, "str", file=path, where=f"pipeline.{key}")
    if not name:
        raise ConfigError(f"{path}: missing key 'pipeline.{key}'", file=str(path), key=f"pipeline.{key}")
    section = get_section(connections, kind, file=conns_path, where="connections") or {}
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


def _connection_values(
    raw: Mapping[str, Any], allowed: Mapping[str, str], file: Path, where: str
) -> dict[str, Any]:
    """A database connection's values: checked, converted, ``user`` accepted for ``username``."""
    values = checked_values(raw, allowed, file=file, where=where)
    _no_tunnel(values, file, where)
    if "user" in values:
        values.setdefault("username", values.pop("user"))
    return values


def _no_tunnel(values: dict[str, Any], file: Path, where: str) -> None:
    tunnel = values.pop("ssh_tunnel", None)
    values.pop("description", None)
    if tunnel and convert(
        tunnel.get("enabled", True), "bool", file=file, where=f"{where}.ssh_tunnel.enabled"
    ):
        raise ConfigError(
            f"{file}: '{where}.ssh_tunnel' is not supported; open the tunnel outside "
            "s3shift (e.g. ssh -L) and point host/port at it",
            file=str(file),
            key=f"{where}.ssh_tunnel",
        )


def _source(ref: tuple[str, dict[str, Any]], file: Path) -> SourceConn:
    name, raw = ref
    where = f"connections.sources.{name}"
    v = _connection_values(raw, _SOURCE_KEYS, file, where)
    require(v, ("host",), file, where)
    if v.get("driver", "asyncmy") not in ("asyncmy", "aiomysql"):
        raise ConfigError(
            f"{file}: '{where}.driver' must be asyncmy or aiomysql (got {v['driver']!r})",
            file=str(file),
            key=f"{where}.driver",
        )
    positive(v, ("port", "max_connections"), file, where)
    positive_seconds(v, ("connect_timeout", "read_timeout"), file, where)
    port_number(v, file, where)
    _source_tls(v, file, where)
    return SourceConn(name=name, **v)


def _source_tls(v: dict[str, Any], file: Path, where: str) -> None:
    """``ssl_mode`` as the mysql client spells it (``VERIFY_IDENTITY``, ``verify-identity``); ``ssl_ca``
    alone means verify_ca, and it is for the verify modes only; it must be a readable file."""
    mode = str(v.get("ssl_mode", "verify_ca" if v.get("ssl_ca") else "preferred")).lower().replace("-", "_")
    if mode not in SSL_MODES:
        raise ConfigError(
            f"{file}: '{where}.ssl_mode' must be one of {', '.join(SSL_MODES)} (got {v['ssl_mode']!r})",
            file=str(file),
            key=f"{where}.ssl_mode",
        )
    v["ssl_mode"] = mode
    ca = v.get("ssl_ca")
    if ca is None:
        return
    if not mode.startswith("verify_"):
        raise ConfigError(
            f"{file}: '{where}.ssl_ca' verifies the server's certificate: set ssl_mode to verify_ca or "
            f"verify_identity (it is {mode}), or remove ssl_ca",
            file=str(file),
            key=f"{where}.ssl_ca",
        )
    _readable_ca(ca, file, where)


def _readable_ca(ca: str, file: Path, where: str) -> None:
    if not os.path.isfile(ca) or not os.access(ca, os.R_OK):
        raise ConfigError(
            f"{file}: '{where}.ssl_ca' is not a readable file: {ca!r} (the CA bundle in PEM)",
            file=str(file),
            key=f"{where}.ssl_ca",
        )


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
    require(v, ("host", "username", "database"), file, where)
    v.setdefault("port", 5439 if kind == "redshift" else 5432)
    positive(v, ("port", "max_connections"), file, where)
    positive_seconds(v, ("connect_timeout", "read_timeout"), file, where)
    port_number(v, file, where)
    if v.get("lock_timeout", 0) < 0:
        raise ConfigError(
            f"{file}: '{where}.lock_timeout' must be zero (no limit) or more seconds "
            f"(got {v['lock_timeout']})",
            file=str(file),
            key=f"{where}.lock_timeout",
        )
    if not v.get("iam_role"):
        v.pop("iam_role", None)
    if not v.get("region"):
        v.pop("region", None)
    if v.get("ssl_ca"):
        if not v.get("ssl"):
            raise ConfigError(
                f"{file}: '{where}.ssl_ca' verifies the server's certificate: set ssl: true beside it",
                file=str(file),
                key=f"{where}.ssl_ca",
            )
        _readable_ca(v["ssl_ca"], file, where)
    return TargetConn(name=name, type=kind, **v)


def _s3(ref: tuple[str, dict[str, Any]], file: Path) -> S3Conn:
    name, raw = ref
    where = f"connections.s3.{name}"
    v = checked_values(raw, _S3_KEYS, file=file, where=where)
    v.pop("description", None)
    if "bucket_name" in v:
        v.setdefault("bucket", v.pop("bucket_name"))
    require(v, ("bucket",), file, where)
    for key in ("endpoint_url", "profile", "access_key_id", "secret_access_key", "session_token"):
        if key in v and not v[key]:
            del v[key]
    prefix = str(v.get("prefix", "")).strip("/")
    v["prefix"] = f"{prefix}/" if prefix else ""
    positive(v, ("part_size_mb", "max_concurrency", "max_attempts"), file, where)
    positive_seconds(v, ("read_timeout",), file, where)
    if v.get("part_size_mb", 16) < 5:
        raise ConfigError(
            f"{file}: '{where}.part_size_mb' must be at least 5 (S3's minimum part size)",
            file=str(file),
            key=f"{where}.part_size_mb",
        )
    _s3_encryption(v, file, where)
    return S3Conn(name=name, **v)


SSE_KINDS = ("AES256", "aws:kms", "aws:kms:dsse")


def _s3_encryption(v: dict[str, Any], file: Path, where: str) -> None:
    """``sse`` as S3 spells it (``aes256`` and ``AWS:KMS`` read too); a KMS key only with a KMS kind."""
    sse = v.get("sse")
    if sse is not None:
        kind = next((k for k in SSE_KINDS if k.lower() == str(sse).lower()), None)
        if kind is None:
            raise ConfigError(
                f"{file}: '{where}.sse' must be one of {', '.join(SSE_KINDS)} (got {sse!r}), or left out "
                "for the bucket's default encryption",
                file=str(file),
                key=f"{where}.sse",
            )
        v["sse"] = kind
    if v.get("sse_kms_key_id") and not str(v.get("sse", "")).startswith("aws:kms"):
        raise ConfigError(
            f"{file}: '{where}.sse_kms_key_id' needs sse: aws:kms (or aws:kms:dsse) beside it",
            file=str(file),
            key=f"{where}.sse_kms_key_id",
        )
