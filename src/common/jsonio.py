"""All JSON goes through here: the only module that imports orjson."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(value: Any, *, pretty: bool = False) -> str:
    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(value, option=option).decode()


def dumps_bytes(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(data: str | bytes) -> Any:
    return orjson.loads(data)
