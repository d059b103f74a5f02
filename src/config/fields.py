"""Checked and converted config values (unknown keys, kinds, ${VAR}); every error names file and key."""

from __future__ import annotations

import difflib
import math
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
    if kind in ("map", "names", "name_map"):
        return _collection(value, kind, file=file, where=where)
    text = interpolate(value, where=f"{file}: {where}") if isinstance(value, str) else value
    try:
        if kind == "int":
            return _integer(text)
        if kind == "float":
            return _finite(text)
        if kind == "bool":
            return as_bool(text)
    except (TypeError, ValueError):
        expected = {"int": "an integer", "float": "a finite number", "bool": "a bool"}[kind]
        raise ConfigError(
            f"{file}: '{where}' must be {expected} (got {value!r})", file=str(file), key=where
        ) from None
    if isinstance(text, dict | list):
        raise ConfigError(f"{file}: '{where}' must be a single value", file=str(file), key=where)
    return Secret(str(text)) if kind == "secret" else str(text)


def _integer(value: Any) -> int:
    """An integer, from an int or its text in decimal (``0123`` is 123, never YAML 1.1's octal 83), or an
    integral number (``8.0``, ``1e3``); never a bool, never truncated."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            value = _finite(value)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _finite(value: Any) -> float:
    """A finite number (NaN and infinity reach the drivers as errors that name no key)."""
    if isinstance(value, bool):
        raise ValueError(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _collection(value: Any, kind: str, *, file: Path, where: str) -> Any:
    """A mapping (a section: its values are checked, and resolved, in their turn), a list of names
    (columns) or a mapping of names to names; a name is text or a number (YAML reads ``2024`` as one),
    never a list, a mapping, a boolean or empty. ``${VAR}`` is resolved in the names (once: resolving
    twice would undo ``$${``)."""
    expected = list if kind == "names" else dict
    if not isinstance(value, expected):
        what = "a list" if kind == "names" else "a mapping"
        raise ConfigError(f"{file}: '{where}' must be {what}", file=str(file), key=where)
    if kind == "map":
        return value
    # ${VAR} is resolved in the names first; a mapping's keys are column names, taken as written
    if isinstance(value, list):
        value = [_resolved(item, file=file, where=f"{where}[{i}]") for i, item in enumerate(value)]
    else:
        value = {k: _resolved(item, file=file, where=where_of(where, str(k))) for k, item in value.items()}
    items = list(value) if isinstance(value, list) else [n for pair in value.items() for n in pair]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int) or item == "":
            quote = "; put it in quotes" if isinstance(item, bool) or item is None else ""
            raise ConfigError(
                f"{file}: '{where}' must hold names, not {item!r}{quote}", file=str(file), key=where
            )
    return value


def _resolved(name: Any, *, file: Path, where: str) -> Any:
    """One name with its ``${VAR}`` references resolved (anything else passes, to be checked)."""
    return interpolate(name, where=f"{file}: {where}") if isinstance(name, str) else name


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


def positive(
    values: Mapping[str, Any],
    keys: tuple[str, ...],
    file: Path,
    where: str,
    *,
    what: str = "a positive integer",
) -> None:
    for key in keys:
        if key in values and values[key] <= 0:
            raise ConfigError(
                f"{file}: '{where}.{key}' must be {what} (got {values[key]})",
                file=str(file),
                key=f"{where}.{key}",
            )


def positive_seconds(values: Mapping[str, Any], keys: tuple[str, ...], file: Path, where: str) -> None:
    """Timeouts: zero or less would reach a driver, which refuses it naming neither file nor key."""
    positive(values, keys, file, where, what="more than zero seconds")


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
