"""All JSON goes through here: the only module that imports orjson."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(value: Any, *, pretty: bool = False) -> str:
    return dumps_bytes(value, pretty=pretty).decode()


def dumps_bytes(value: Any, *, pretty: bool = False) -> bytes:
    option = orjson.OPT_INDENT_2 if pretty else 0
    try:
        return orjson.dumps(value, option=option)
    except TypeError:  # a str with lone surrogates: the bytes of an argument or path that is not UTF-8
        return orjson.dumps(_utf8(value), option=option)


def printable(text: str) -> str:
    """``text`` as valid UTF-8: a byte that was not (``\\udcff`` for the byte 0xff, as Python decodes
    arguments and paths) is written as its escape, ``\\xff``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def _utf8(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_utf8(k): _utf8(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_utf8(v) for v in value]
    return value


def loads(data: str | bytes) -> Any:
    return orjson.loads(data)
