"""Values the stage layer hands to the engine and the warehouse loaders."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StagedFile:
    """One Parquet file of a run, complete in S3 and verified by HEAD."""

    key: str  # S3 key
    url: str  # "s3://bucket/key"
    size_bytes: int  # verified with HEAD after upload
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

    @property
    def files_created(self) -> int:
        return len(self.files)
