"""The run's manifest (Redshift COPY format) and its sidecar with what COPY has no field for.

``manifest.json`` holds only keys Redshift documents for COPY manifests: ``entries`` of ``url``,
``mandatory`` and ``meta.content_length`` (required for Parquet). Rows per file, the schema hash and
the engine's ``meta`` (window, schema, extracted_at, ...) go into ``_s3shift.json`` beside it,
written first: the manifest is the marker that a run is staged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from src.common import jsonio
from src.common.errors import StageError
from src.stage.models import StagedFile, StageResult
from src.stage.s3 import S3Stage

MANIFEST_NAME: Final = "manifest.json"
SIDECAR_NAME: Final = "_s3shift.json"
SIDECAR_FORMAT: Final = "s3shift.stage.v1"


def build_manifest(files: Sequence[StagedFile]) -> bytes:
    entries = [{"url": f.url, "mandatory": True, "meta": {"content_length": f.size_bytes}} for f in files]
    return jsonio.dumps_bytes({"entries": entries})


def parse_manifest(data: bytes) -> list[tuple[str, int]]:
    """The (url, content_length) of every entry; StageError if it is not a Parquet COPY manifest."""
    try:
        doc = jsonio.loads(data)
        return [_entry(e) for e in doc["entries"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise StageError(f"not a valid COPY manifest ({type(exc).__name__}: {exc})", retryable=False) from exc


def _entry(entry: dict[str, Any]) -> tuple[str, int]:
    url, size = entry["url"], entry["meta"]["content_length"]
    if not isinstance(url, str) or not url.startswith("s3://") or not isinstance(size, int) or size < 0:
        raise ValueError(f"bad entry {entry!r}")
    return url, size


def encode_meta(meta: Mapping[str, Any]) -> bytes:
    """``meta`` as JSON; a StageError (before anything is uploaded) when it is not JSON-able."""
    try:
        return jsonio.dumps_bytes(dict(meta))
    except TypeError as exc:
        raise StageError(
            f"stage meta is not JSON-able: {exc} - this is a bug in the engine", retryable=False
        ) from exc


def build_sidecar(result: StageResult) -> bytes:
    files = [{"key": f.key, "url": f.url, "size_bytes": f.size_bytes, "rows": f.rows} for f in result.files]
    doc = {
        "format": SIDECAR_FORMAT,
        "prefix": result.prefix,
        "schema_hash": result.schema_hash,
        "rows": result.rows,
        "bytes": result.bytes,
        "files": files,
        "meta": jsonio.loads(encode_meta(result.meta)),
    }
    return jsonio.dumps_bytes(doc)


async def read_stage_result(s3: S3Stage, manifest_url: str) -> StageResult:
    """Rebuild a run's StageResult from its manifest and sidecar (for --load-only)."""
    key = _manifest_key(s3, manifest_url)
    return await stage_from_manifest(s3, key, await s3.get_bytes(key))


async def stage_from_manifest(s3: S3Stage, key: str, manifest: bytes) -> StageResult:
    """The StageResult of the manifest at ``key`` (whose bytes are given), checked against its sidecar."""
    manifest_url = s3.url(key)
    entries = parse_manifest(manifest)
    prefix = key[: -len(MANIFEST_NAME)]
    sidecar = _parse_sidecar(await s3.get_bytes(f"{prefix}{SIDECAR_NAME}"), manifest_url)
    files = tuple(StagedFile(**f) for f in sidecar["files"])
    if [(f.url, f.size_bytes) for f in files] != entries:
        raise StageError(
            f"{manifest_url} and its {SIDECAR_NAME} disagree on the files; re-extract this run",
            key=key,
            retryable=False,
        )
    return StageResult(
        prefix=prefix,
        files=files,
        manifest_key=key,
        manifest_url=manifest_url,
        rows=sum(f.rows for f in files),
        bytes=sum(f.size_bytes for f in files),
        schema_hash=sidecar.get("schema_hash"),
        meta=sidecar["meta"],
    )


def _manifest_key(s3: S3Stage, manifest_url: str) -> str:
    bucket_prefix = f"s3://{s3.cfg.bucket}/"
    if not manifest_url.startswith(bucket_prefix) or not manifest_url.endswith(f"/{MANIFEST_NAME}"):
        raise StageError(
            f"{manifest_url!r} is not a {MANIFEST_NAME} in bucket {s3.cfg.bucket!r}", retryable=False
        )
    return manifest_url[len(bucket_prefix) :]


def _sidecar_file(f: dict[str, Any]) -> dict[str, Any]:
    return {
        "key": str(f["key"]),
        "url": str(f["url"]),
        "size_bytes": int(f["size_bytes"]),
        "rows": int(f["rows"]),
    }


def _parse_sidecar(data: bytes, manifest_url: str) -> dict[str, Any]:
    try:
        doc = jsonio.loads(data)
        if doc.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"unknown format {doc.get('format')!r}")
        doc["files"] = [_sidecar_file(f) for f in doc["files"]]
        doc["meta"] = doc.get("meta") or {}
        if not isinstance(doc["meta"], dict):
            raise ValueError(f"meta is a {type(doc['meta']).__name__}, not an object")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StageError(f"bad {SIDECAR_NAME} beside {manifest_url}: {exc}", retryable=False) from exc
    return dict(doc)
