"""The run's ``manifest.json``: Redshift's COPY manifest, and everything else s3shift keeps with a stage.

One object per stage, written last: its presence marks the run as staged. It has the shape Redshift's
own ``UNLOAD ... MANIFEST VERBOSE`` writes, which AWS documents as loadable by COPY ("a manifest created
by UNLOAD ... might have keys that are not required for the COPY operation"): each entry has ``url``,
``mandatory`` and ``meta.content_length`` (required for Parquet) plus ``meta.record_count`` (the file's
rows); the top-level ``meta`` has the ``content_length`` and ``record_count`` totals. What COPY has no
field for (a format tag, the schema hash and the engine's ``meta``: window, schema, extracted_at, ...)
goes under ONE extra top-level key, ``s3shift``; S3 keys are the entries' URLs within the bucket. This
saves a PUT per table (and a GET per stage read) over the separate ``_s3shift.json`` sidecar of v1.

The one risk: that COPY ignores the ``s3shift`` key (as it ignores UNLOAD's ``schema`` and ``author``)
cannot be checked here: the emulator ignores unknown keys by construction. The real-Redshift smoke
suite (tests/test_redshift_live.py) COPYs from a manifest built by ``build_manifest`` and would catch it.

Stages of format v1 (``s3shift.stage.v1``, written by earlier versions: a manifest without ``s3shift``
and the ``_s3shift.json`` sidecar beside it) still load: for them, and only for them, the sidecar is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from src.common import jsonio
from src.common.errors import StageError
from src.stage.models import StagedFile, StageResult
from src.stage.s3 import S3Stage

MANIFEST_NAME: Final = "manifest.json"
ENGINE_KEY: Final = "s3shift"
STAGE_FORMAT: Final = "s3shift.stage.v2"
LEGACY_SIDECAR_NAME: Final = "_s3shift.json"  # v1 stages only: written beside their manifest
LEGACY_SIDECAR_FORMAT: Final = "s3shift.stage.v1"


def build_manifest(result: StageResult) -> bytes:
    entries = [
        {"url": f.url, "mandatory": True, "meta": {"content_length": f.size_bytes, "record_count": f.rows}}
        for f in result.files
    ]
    engine = {"format": STAGE_FORMAT, "schema_hash": result.schema_hash, "meta": dict(result.meta)}
    totals = {"content_length": result.bytes, "record_count": result.rows}
    return jsonio.dumps_bytes({"entries": entries, "meta": totals, ENGINE_KEY: engine})


def parse_manifest(data: bytes) -> list[tuple[str, int]]:
    """The (url, content_length) of every entry; StageError if it is not a Parquet COPY manifest."""
    return [(url, size) for url, size, _ in _parse(data)[1]]


def _parse(data: bytes) -> tuple[dict[str, Any], list[tuple[str, int, Any]]]:
    """The document and each entry's (url, content_length, record_count or None)."""
    try:
        doc = jsonio.loads(data)
        return doc, [_entry(e) for e in doc["entries"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise StageError(f"not a valid COPY manifest ({type(exc).__name__}: {exc})", retryable=False) from exc


def _entry(entry: dict[str, Any]) -> tuple[str, int, Any]:
    url, size = entry["url"], entry["meta"]["content_length"]
    if not isinstance(url, str) or not url.startswith("s3://") or not isinstance(size, int) or size < 0:
        raise ValueError(f"bad entry {entry!r}")
    return url, size, entry["meta"].get("record_count")


def encode_meta(meta: Mapping[str, Any]) -> bytes:
    """``meta`` as JSON; a StageError (before anything is uploaded) when it is not JSON-able."""
    try:
        return jsonio.dumps_bytes(dict(meta))
    except TypeError as exc:
        raise StageError(
            f"stage meta is not JSON-able: {exc} - this is a bug in the engine", retryable=False
        ) from exc


async def read_stage_result(s3: S3Stage, manifest_url: str) -> StageResult:
    """Rebuild a run's StageResult from its manifest (for --load-only)."""
    key = _manifest_key(s3, manifest_url)
    return await stage_from_manifest(s3, key, await s3.get_bytes(key))


async def stage_from_manifest(s3: S3Stage, key: str, manifest: bytes) -> StageResult:
    """The StageResult of the manifest at ``key`` (whose bytes are given)."""
    doc, entries = _parse(manifest)
    prefix = key[: -len(MANIFEST_NAME)]
    if ENGINE_KEY not in doc:
        return await _legacy_stage(s3, key, [(url, size) for url, size, _ in entries])
    try:
        files = tuple(_staged_file(s3, url, size, rows) for url, size, rows in entries)
        engine = _engine(doc[ENGINE_KEY])
        result = stage_result(s3, prefix, files, engine["schema_hash"], engine["meta"])
        if doc.get("meta") != {"content_length": result.bytes, "record_count": result.rows}:
            raise ValueError(f"its totals {doc.get('meta')!r} disagree with its entries")
    except (ValueError, KeyError, TypeError) as exc:
        raise StageError(f"bad {ENGINE_KEY} manifest {s3.url(key)}: {exc}", key=key, retryable=False) from exc
    return result


def stage_result(
    s3: S3Stage, prefix: str, files: tuple[StagedFile, ...], schema_hash: str | None, meta: dict[str, Any]
) -> StageResult:
    """The run staged under ``prefix``: its files, its manifest there, and their totals."""
    manifest_key = f"{prefix}{MANIFEST_NAME}"
    return StageResult(
        prefix=prefix,
        files=files,
        manifest_key=manifest_key,
        manifest_url=s3.url(manifest_key),
        rows=sum(f.rows for f in files),
        bytes=sum(f.size_bytes for f in files),
        schema_hash=schema_hash,
        meta=meta,
    )


def _staged_file(s3: S3Stage, url: str, size: int, rows: Any) -> StagedFile:
    bucket_prefix = f"s3://{s3.cfg.bucket}/"
    if not url.startswith(bucket_prefix) or not isinstance(rows, int) or rows < 0:
        raise ValueError(f"entry {url} is not in bucket {s3.cfg.bucket!r} or has no record_count")
    return StagedFile(key=url[len(bucket_prefix) :], url=url, size_bytes=size, rows=rows)


def _engine(engine: Any) -> dict[str, Any]:
    if not isinstance(engine, dict) or engine.get("format") != STAGE_FORMAT:
        raise ValueError(f"its {ENGINE_KEY} key is not of the {STAGE_FORMAT} format")
    if not isinstance(engine.get("meta"), dict) or not isinstance(engine.get("schema_hash"), str | None):
        raise ValueError(f"its {ENGINE_KEY} key needs a meta object and a schema_hash string or null")
    return engine


def _manifest_key(s3: S3Stage, manifest_url: str) -> str:
    bucket_prefix = f"s3://{s3.cfg.bucket}/"
    if not manifest_url.startswith(bucket_prefix) or not manifest_url.endswith(f"/{MANIFEST_NAME}"):
        raise StageError(
            f"{manifest_url!r} is not a {MANIFEST_NAME} in bucket {s3.cfg.bucket!r}", retryable=False
        )
    return manifest_url[len(bucket_prefix) :]


# ---- stages written by v1: the manifest lists the files, the sidecar beside it has the rest ----------


async def _legacy_stage(s3: S3Stage, key: str, entries: list[tuple[str, int]]) -> StageResult:
    manifest_url = s3.url(key)
    prefix = key[: -len(MANIFEST_NAME)]
    sidecar = _parse_sidecar(await s3.get_bytes(f"{prefix}{LEGACY_SIDECAR_NAME}"), manifest_url)
    files = tuple(StagedFile(**f) for f in sidecar["files"])
    if [(f.url, f.size_bytes) for f in files] != entries:
        raise StageError(
            f"{manifest_url} and its {LEGACY_SIDECAR_NAME} disagree on the files; re-extract this run",
            key=key,
            retryable=False,
        )
    return stage_result(s3, prefix, files, sidecar.get("schema_hash"), sidecar["meta"])


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
        if doc.get("format") != LEGACY_SIDECAR_FORMAT:
            raise ValueError(f"unknown format {doc.get('format')!r}")
        doc["files"] = [_sidecar_file(f) for f in doc["files"]]
        doc["meta"] = doc.get("meta") or {}
        if not isinstance(doc["meta"], dict):
            raise ValueError(f"meta is a {type(doc['meta']).__name__}, not an object")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StageError(f"bad {LEGACY_SIDECAR_NAME} beside {manifest_url}: {exc}", retryable=False) from exc
    return dict(doc)
