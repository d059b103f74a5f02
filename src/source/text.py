"""Text values by policy, column by column on Arrow arrays (``pyarrow.compute``): invalid UTF-8, NUL and
values longer than the target's VARCHAR byte limit.

The common case costs one Arrow conversion (which validates UTF-8 in C), one substring scan for U+0000
and, only when a byte limit applies to the column, one length computation. Per-value Python runs only on
a batch where a policy actually applies, and only to decode bytes or to cut the values that need it.

Policies (``src.common.policy.TypePolicy``), each counted per column in ``coercions`` by kind:
- ``invalid_utf8``: bytes that are not UTF-8. MariaDB converts every text column to the connection's
  utf8mb4 (replacing what it cannot convert) and refuses invalid utf8mb4 on write, so such bytes reach us
  only from columns stored ``CHARACTER SET binary`` that map to text (ENUM / SET), which the drivers hand
  over as bytes. ``fail`` (default) names the column and the first bad value; ``replace`` decodes with
  U+FFFD (kind ``invalid_utf8_replaced``).
- ``nul_bytes``: U+0000 in text or JSON, which PostgreSQL cannot store (in JSON it is the escape
  ``\u0000``, which jsonb refuses). ``strip`` (default, kind ``nul_stripped``) removes it (in JSON, the
  escape); ``fail`` names the column.
- ``long_text``: with a byte limit (Redshift VARCHAR: 65,535 bytes), a longer value: ``fail`` (default)
  names the column and the byte length; ``truncate`` cuts at a UTF-8 character boundary (kind
  ``truncated_to_<n>_bytes``). JSON is never truncated (it would no longer parse): it always fails.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from src.common.errors import SourceError
from src.common.policy import TypePolicy
from src.common.schema import Column
from src.source.typemap import DEFAULT_POLICY

INVALID_UTF8 = "invalid_utf8_replaced"
NUL_STRIPPED = "nul_stripped"
_STRING = pa.string()
_SHOWN = 40  # bytes of a bad value shown in a message
_JSON_NUL = b"\\u0000"
# A JSON escape (an escaped backslash never starts one) or a raw NUL: ``_json_nul`` drops the NULs.
_JSON_ESCAPE = re.compile(r"\\(u0000|.)|\x00", re.DOTALL)


@dataclass(frozen=True)
class ReadRules:
    """How one table's values that cannot be carried exactly are handled while reading it."""

    ref: str  # 'db.table', for messages
    policy: TypePolicy = DEFAULT_POLICY
    max_text_bytes: int | None = None  # the target's VARCHAR byte limit (None: unbounded)


Counts = dict[str, int]  # {kind: count}


def truncated_kind(limit: int) -> str:
    return f"truncated_to_{limit}_bytes"


def text_array(column: Column, values: Sequence[Any], rules: ReadRules) -> tuple[pa.Array, Counts]:
    """``str`` (or bytes, from binary-charset columns) -> a string array with every text policy applied."""
    counts: Counts = {}
    try:
        array = pa.array(values, type=_STRING)  # bytes are accepted when they are valid UTF-8
    except pa.ArrowInvalid:
        array = pa.array(_decode(column, values, rules, counts), type=_STRING)
    array, more = text_rules(column, array, rules)
    return array, {**counts, **more}


def text_rules(column: Column, array: pa.Array, rules: ReadRules) -> tuple[pa.Array, Counts]:
    """The NUL and long-text policies on a string array that is already valid UTF-8."""
    counts: Counts = {}
    array = _nul(column, array, rules, counts)
    return _long(column, array, rules, counts), counts


def _decode(column: Column, values: Sequence[Any], rules: ReadRules, counts: Counts) -> list[str | None]:
    decoded: list[str | None] = []
    replaced = 0
    for value in values:
        if not isinstance(value, bytes | bytearray):
            decoded.append(value)
            continue
        try:
            decoded.append(value.decode())
        except UnicodeDecodeError:
            if rules.policy.invalid_utf8 == "fail":
                raise _invalid_utf8(column, bytes(value), rules) from None
            decoded.append(value.decode(errors="replace"))
            replaced += 1
    if replaced:
        counts[INVALID_UTF8] = replaced
    return decoded


def _invalid_utf8(column: Column, value: bytes, rules: ReadRules) -> SourceError:
    shown = value[:_SHOWN].hex(" ") + (" …" if len(value) > _SHOWN else "")
    return SourceError(
        f"column {column.name!r} of {rules.ref} holds bytes that are not UTF-8 (hex {shown}) — set "
        "type_policies: {invalid_utf8: replace} to load them with U+FFFD, or fix the data",
        table=rules.ref,
        column=column.name,
        retryable=False,
    )


def has_nul(array: pa.Array, needle: bytes = b"\x00") -> bool:
    """Whether any value of a string array holds U+0000 (or ``needle``): one scan over the values' bytes
    (about 30x faster than ``pc.match_substring``, which then runs only when there is something to count)."""
    _, offsets, data = array.buffers()
    if data is None or len(array) == 0:
        return False
    bounds = memoryview(offsets).cast("i")
    start, end = bounds[array.offset], bounds[array.offset + len(array)]
    return memoryview(data)[start:end].tobytes().find(needle) >= 0


def _json_nul(match: re.Match[str]) -> str:
    return "" if match[1] == "u0000" or match[0] == "\x00" else match[0]


def _nul(column: Column, array: pa.Array, rules: ReadRules, counts: Counts) -> pa.Array:
    if column.logical == "json" and has_nul(array, _JSON_NUL):  # rare: per value, only on such a batch
        values = array.to_pylist()
        cleaned = [None if v is None else _JSON_ESCAPE.sub(_json_nul, v) for v in values]
        found = sum(v != c for v, c in zip(values, cleaned, strict=True))
    elif has_nul(array):
        found, cleaned = int(pc.sum(pc.match_substring(array, "\x00")).as_py() or 0), None
    else:
        return array
    if not found:
        return array
    if rules.policy.nul_bytes == "fail":
        raise SourceError(
            f"column {column.name!r} of {rules.ref} holds {found} value(s) with a NUL character (U+0000), "
            "which the target cannot store — set type_policies: {nul_bytes: strip} to remove it, or fix "
            "the data",
            table=rules.ref,
            column=column.name,
            retryable=False,
        )
    counts[NUL_STRIPPED] = found
    return pc.replace_substring(array, "\x00", "") if cleaned is None else pa.array(cleaned, type=_STRING)


def _long(column: Column, array: pa.Array, rules: ReadRules, counts: Counts) -> pa.Array:
    limit = rules.max_text_bytes
    if limit is None or (column.byte_length is not None and column.byte_length <= limit):
        return array
    over = pc.greater(pc.binary_length(array), limit)
    found = int(pc.sum(over).as_py() or 0)
    if not found:
        return array
    if rules.policy.long_text == "fail" or column.logical == "json":
        raise _too_long(column, array, over, rules, limit)
    counts[truncated_kind(limit)] = found
    flags = over.to_pylist()
    cut = [
        _cut(value, limit) if flag else value for value, flag in zip(array.to_pylist(), flags, strict=True)
    ]
    return pa.array(cut, type=_STRING)


def _cut(value: str, limit: int) -> str:
    """The longest prefix of ``value`` that fits ``limit`` UTF-8 bytes (never half a character)."""
    return value.encode()[:limit].decode(errors="ignore")


def _too_long(column: Column, array: pa.Array, over: pa.Array, rules: ReadRules, limit: int) -> SourceError:
    first = pc.binary_length(array.filter(over))[0].as_py()
    if column.logical == "json":
        todo = "JSON cannot be truncated: leave the column out (exclude_columns) or shorten the documents"
    else:
        todo = "set type_policies: {long_text: truncate} to cut such values at a character boundary"
    return SourceError(
        f"column {column.name!r} of {rules.ref} holds a value of {first} bytes, over the target's limit of "
        f"{limit} bytes (type_policies.long_text is {rules.policy.long_text}) — {todo}",
        table=rules.ref,
        column=column.name,
        retryable=False,
    )
