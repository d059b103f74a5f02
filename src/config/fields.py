"""Checked and converted config values (unknown keys, kinds, ${VAR}); every error names file and key."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from src.common.errors import ConfigError
from src.common.secret import Secret
from src.config.interp import interpolate


def where_of(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def check_keys(data: Mapping[str, Any], allowed: Mapping[str, str], *, file: Path, where: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(sorted(allowed))}"
            raise ConfigError(
                f"{file}: unknown key '{where_of(where, str(key))}'{hint}",
                file=str(file),
                key=where_of(where, str(key)),
            )


def get_section(
    data: Mapping[str, Any], key: str, *, file: Path, where: str, required: bool = False
) -> dict[str, Any] | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(
                f"{file}: missing section '{where_of(where, key)}'", file=str(file), key=where_of(where, key)
            )
        return None
    if not isinstance(value, dict):
        raise ConfigError(
            f"{file}: '{where_of(where, key)}' must be a mapping", file=str(file), key=where_of(where, key)
        )
    return value


def checked_values(
    raw: Mapping[str, Any], allowed: Mapping[str, str], *, file: Path, where: str
) -> dict[str, Any]:
    """Check keys, interpolate ${VAR}, and convert each value to its declared kind."""
    check_keys(raw, allowed, file=file, where=where)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            continue
        out[key] = convert(value, allowed[key], file=file, where=where_of(where, key))
    return out


def convert(value: Any, kind: str, *, file: Path, where: str) -> Any:
    if kind in ("map", "pairs", "list"):
        expected = list if kind == "list" else dict
        if not isinstance(value, expected):
            raise ConfigError(
                f"{file}: '{where}' must be a {'list' if kind == 'list' else 'mapping'}",
                file=str(file),
                key=where,
            )  # a "map" is a section whose own values are checked (and interpolated) in their turn
        return value if kind == "map" else _interpolated(value, file=file, where=where)
    text = interpolate(value, where=f"{file}: {where}") if isinstance(value, str) else value
    try:
        if kind == "int":
            if isinstance(text, bool):
                raise ValueError
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            return as_bool(text)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{file}: '{where}' must be {'an integer' if kind == 'int' else 'a ' + kind} (got {value!r})",
            file=str(file),
            key=where,
        ) from None
    if isinstance(text, dict | list):
        raise ConfigError(f"{file}: '{where}' must be a single value", file=str(file), key=where)
    return Secret(str(text)) if kind == "secret" else str(text)


def _interpolated(value: Any, *, file: Path, where: str) -> Any:
    """``value`` with ``${VAR}`` resolved in every string it holds: the items of a list, the values (not
    the keys) of a mapping, at any depth. For leaf values only: resolving twice would undo ``$${``."""
    if isinstance(value, str):
        return interpolate(value, where=f"{file}: {where}")
    if isinstance(value, list):
        return [_interpolated(item, file=file, where=f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {k: _interpolated(item, file=file, where=where_of(where, str(k))) for k, item in value.items()}
    return value


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0", ""):
        return False
    raise ValueError(value)


def require(values: Mapping[str, Any], keys: tuple[str, ...], file: Path, where: str) -> None:
    for key in keys:
        if not values.get(key):
            raise ConfigError(f"{file}: missing key '{where}.{key}'", file=str(file), key=f"{where}.{key}")


def positive(values: Mapping[str, Any], keys: tuple[str, ...], file: Path, where: str) -> None:
    for key in keys:
        if key in values and values[key] <= 0:
            raise ConfigError(
                f"{file}: '{where}.{key}' must be a positive integer (got {values[key]})",
                file=str(file),
                key=f"{where}.{key}",
            )


def port_number(values: Mapping[str, Any], file: Path, where: str) -> None:
    """``port``, when given, is a TCP port: an out-of-range one would only fail later, inside a driver,
    with a message that names neither the file nor the key."""
    port = values.get("port")
    if port is not None and not 0 < port <= 65535:
        raise ConfigError(
            f"{file}: '{where}.port' must be a TCP port from 1 to 65535 (got {port})",
            file=str(file),
            key=f"{where}.port",
        )
