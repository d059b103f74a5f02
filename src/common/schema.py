"""The planned schema of a table: one logical type per column, from which every layer derives its own.

The source layer builds it from ``information_schema`` (never from values); the stage layer writes
Parquet with exactly ``arrow_schema()``; each warehouse derives its DDL from the logical types.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Literal

import pyarrow as pa

Logical = Literal[
    "bool",  # BOOLEAN
    "int16",  # TINYINT (signed/unsigned), SMALLINT, YEAR
    "int32",  # SMALLINT UNSIGNED, MEDIUMINT, INT
    "int64",  # INT UNSIGNED, BIGINT
    "decimal",  # DECIMAL(p<=38, s); BIGINT UNSIGNED as decimal(20, 0)
    "float32",  # FLOAT
    "float64",  # DOUBLE
    "string",  # CHAR, VARCHAR, *TEXT, ENUM, SET  (byte_length = max UTF-8 bytes, None = unbounded)
    "json",  # JSON (text on the wire; jsonb / SUPER in the warehouse)
    "binary",  # BINARY, VARBINARY, *BLOB
    "date",  # DATE
    "timestamp",  # DATETIME(n): naive, microseconds
    "timestamptz",  # TIMESTAMP(n): UTC, microseconds
    "time",  # TIME: signed microseconds in int64 (never wrapped at 24 h)
]

MAX_DECIMAL128_PRECISION = 38


@dataclass(frozen=True)
class Column:
    name: str
    logical: Logical
    nullable: bool
    source_type: str  # information_schema.COLUMNS.COLUMN_TYPE, e.g. "decimal(10,2) unsigned"
    precision: int | None = None  # decimal only
    scale: int | None = None  # decimal only
    byte_length: int | None = None  # string/json/binary: max bytes a value can take; None = unbounded

    def arrow_type(self) -> pa.DataType:
        return arrow_type_for(self)

    def arrow_field(self) -> pa.Field:
        return pa.field(self.name, self.arrow_type(), nullable=self.nullable)


@dataclass(frozen=True)
class TableSchema:
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([c.arrow_field() for c in self.columns])

    def to_dict(self) -> dict[str, Any]:
        return {"columns": [asdict(c) for c in self.columns], "primary_key": list(self.primary_key)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableSchema:
        columns = tuple(Column(**c) for c in data["columns"])
        return cls(columns=columns, primary_key=tuple(data.get("primary_key") or ()))

    def schema_hash(self) -> str:
        """A stable fingerprint of names, order, logical types and sizes (not of nullability)."""
        parts = [
            f"{c.name}\x1f{c.logical}\x1f{c.precision}\x1f{c.scale}\x1f{c.byte_length}" for c in self.columns
        ]
        return hashlib.sha256("\x1e".join(parts).encode()).hexdigest()[:16]


_SIMPLE: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "json": pa.string(),
    "binary": pa.binary(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "time": pa.int64(),
}


def arrow_type_for(col: Column) -> pa.DataType:
    if col.logical == "decimal":
        if col.precision is None or col.scale is None:
            raise ValueError(f"decimal column {col.name!r} needs precision and scale")
        if col.precision > MAX_DECIMAL128_PRECISION:
            return pa.decimal256(col.precision, col.scale)
        return pa.decimal128(col.precision, col.scale)
    return _SIMPLE[col.logical]
