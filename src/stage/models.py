"""Values the stage layer hands to the engine and the warehouse loaders."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StagedFile:
    """One Parquet file of a run, complete in S3 and verified (echoed CRC32 of a single PUT, or HEAD)."""

    key: str  # S3 key
    url: str  # "s3://bucket/key"
    size_bytes: int  # verified after upload (echoed CRC32 or HEAD)
    rows: int


@dataclass(frozen=True)
class StageResult:
    """Everything one table's run staged: its files, its manifest and the totals."""

    prefix: str  # the run prefix key, ending with "/"
    files: tuple[StagedFile, ...]
    manifest_key: str
    manifest_url: str  # "s3://bucket/<prefix>manifest.json"
    rows: int
    bytes: int
    schema_hash: str | None = None
    # JSON-able facts the engine keeps with the stage (window, TableSchema, extracted_at, strategy, ...),
    # stored in the manifest (its ``s3shift`` key) and restored by read_stage_result / list_stages
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def execution_id(self) -> str:
        """The run that staged this: the last segment of ``prefix``."""
        return self.prefix.rstrip("/").rsplit("/", 1)[-1]

    @property
    def files_created(self) -> int:
        return len(self.files)
