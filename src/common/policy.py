"""Per-table type policies: every value that cannot be carried exactly is handled by a documented,
configurable rule and counted in the table result (``coercions: {column: {kind: count}}``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ZeroDate = Literal["null", "fail"]  # zero / invalid dates ('0000-00-00', '2024-02-30')
DecimalOverflow = Literal["fail", "text"]  # DECIMAL(p>38): fail naming the column, or exact text
Tinyint1 = Literal["smallint", "boolean"]  # TINYINT(1): keep 2 and -1, or BOOLEAN (checked: only 0/1)
InvalidUtf8 = Literal["fail", "replace"]  # bytes that are not UTF-8 in a text column
NulBytes = Literal["strip", "fail"]  # U+0000 in text (PostgreSQL cannot store it)
LongText = Literal["fail", "truncate"]  # text over the warehouse's VARCHAR limit (Redshift 65,535 bytes)
SchemaChange = Literal["fail", "rebuild"]  # an incompatible source type change between runs

POLICY_CHOICES: dict[str, tuple[str, ...]] = {
    "zero_date": ("null", "fail"),
    "decimal_overflow": ("fail", "text"),
    "tinyint1": ("smallint", "boolean"),
    "invalid_utf8": ("fail", "replace"),
    "nul_bytes": ("strip", "fail"),
    "long_text": ("fail", "truncate"),
    "schema_change": ("fail", "rebuild"),
}


@dataclass(frozen=True)
class TypePolicy:
    zero_date: ZeroDate = "null"
    decimal_overflow: DecimalOverflow = "fail"
    tinyint1: Tinyint1 = "smallint"
    invalid_utf8: InvalidUtf8 = "fail"
    nul_bytes: NulBytes = "strip"
    long_text: LongText = "fail"
    schema_change: SchemaChange = "fail"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in POLICY_CHOICES}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TypePolicy:
        return cls(**{k: v for k, v in (data or {}).items() if k in POLICY_CHOICES})


@dataclass(frozen=True)
class ColumnSelection:
    """Which source columns a table syncs and what they are called in the target."""

    include: tuple[str, ...] = ()  # empty: all columns
    exclude: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()  # (source name, target name)

    def target_name(self, source: str) -> str:
        return dict(self.rename).get(source, source)
