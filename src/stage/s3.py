"""S3 staging: one aioboto3 client per run; streaming multipart uploads that abort on every failure path.

Every S3 call goes through ``S3Stage._call``, which turns botocore/aiohttp failures into one-line
``StageError``s naming the bucket/key and what to check. Credentials are revealed only when the
client is built and never appear in messages.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aioboto3
import aiohttp
import anyio
from aiobotocore.config import AioConfig
from anyio.abc import TaskGroup
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from src.common.errors import S3ShiftError, StageError
from src.common.log import get_logger
from src.config.models import S3Conn

MIB: Final = 1024 * 1024
MIN_PART_BYTES: Final = 5 * MIB  # S3's minimum for every part but the last
MAX_PARTS: Final = 10_000
CLEANUP_TIMEOUT: Final = 30.0  # seconds a shielded abort/delete may take
DOWNLOAD_CHUNK: Final = MIB
DEFAULT_ATTEMPTS: Final = 5

log = get_logger("stage.s3")

_TRANSPORT_ERRORS = (BotoCoreError, aiohttp.ClientError, OSError)
_HINTS: Final = {
    "NoSuchBucket": "check that the bucket exists in region {region}",
    "NoSuchKey": "the object is gone; re-run the extract",
    "NoSuchUpload": "the multipart upload was aborted or completed elsewhere; re-run",
    "AccessDenied": "check the credentials and the IAM policy for this bucket and prefix",
    "InvalidAccessKeyId": "check access_key_id / the AWS profile",
    "SignatureDoesNotMatch": "check secret_access_key / the AWS profile",
    "ExpiredToken": "the session token expired; refresh the credentials",
    "403": "access denied: check the credentials and the IAM policy for this bucket",
    "404": "not found: check the bucket name, prefix and region {region}",
}


class S3Stage:
    """The run's S3 client for one staging location. Use as ``async with S3Stage(cfg) as s3``."""

    def __init__(
        self,
        cfg: S3Conn,
        part_limiter: anyio.CapacityLimiter | None = None,
        *,
        max_attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self.cfg = cfg
        self._part_limiter = part_limiter
        self._max_attempts = max_attempts
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None

    def __repr__(self) -> str:
        return f"S3Stage(bucket={self.cfg.bucket!r}, endpoint={self._endpoint_label()!r})"

    async def __aenter__(self) -> S3Stage:
        session = self._session()
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(session.client("s3", **self._client_args()))
        except (*_TRANSPORT_ERRORS, ValueError) as exc:
            raise self._error(exc, "client setup", None) from exc
        if self._part_limiter is None:
            self._part_limiter = anyio.CapacityLimiter(max(1, self.cfg.max_concurrency))
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                await stack.aclose()

    @property
    def client(self) -> Any:
        """The aiobotocore client (for event hooks); only inside ``async with``."""
        if self._client is None:
            raise StageError("S3Stage used outside 'async with'", retryable=False)
        return self._client

    @property
    def part_bytes(self) -> int:
        return max(self.cfg.part_size_mb * MIB, MIN_PART_BYTES)

    def run_prefix(self, pipeline: str, table: str, execution_id: str) -> str:
        parts = [p.strip("/") for p in (self.cfg.prefix, pipeline, table, execution_id)]
        for label, value in zip(("pipeline", "table", "execution_id"), parts[1:], strict=True):
            if not value or value in (".", "..") or "/" in value:
                raise StageError(f"invalid {label} {value!r} for an S3 run prefix", retryable=False)
        return "/".join(p for p in parts if p) + "/"

    def url(self, key: str) -> str:
        return f"s3://{self.cfg.bucket}/{key}"

    async def check(self) -> None:
        """Fail fast with a clear message when the bucket cannot be reached."""
        await self._call("head_bucket", None)

    async def abort_stale_uploads(self, prefix: str, older_than_seconds: float = 3600) -> int:
        """Abort unfinished multipart uploads under ``prefix`` started more than the given age ago."""
        _require_prefix(prefix)
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        stale = [
            (u["Key"], u["UploadId"])
            async for u in self._paginate("list_multipart_uploads", "Uploads", Prefix=prefix)
            if u["Initiated"] <= cutoff
        ]
        for key, upload_id in stale:
            await self._call("abort_multipart_upload", key, Key=key, UploadId=upload_id)
            log.info("aborted stale multipart upload %s", self.url(key))
        return len(stale)

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        await self._call("put_object", key, Key=key, Body=data, ContentType=content_type)

    async def get_bytes(self, key: str) -> bytes:
        resp = await self._call("get_object", key, Key=key)
        try:
            body = resp["Body"]  # read through the wrapper: it checks the content length
            async with body:
                data: bytes = await body.read()
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc, "get_object", key) from exc
        return data

    async def download_to(self, key: str, path: Path) -> int:
        """Stream an object into ``path`` chunk by chunk; return its size."""
        resp = await self._call("get_object", key, Key=key)
        total = 0
        try:
            body = resp["Body"]
            async with body, await anyio.open_file(path, "wb") as out:
                while chunk := await body.read(DOWNLOAD_CHUNK):
                    await out.write(chunk)
                    total += len(chunk)
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc, "get_object", key) from exc
        expected = int(resp["ContentLength"])
        if total != expected:
            raise StageError(
                f"downloaded {total} of {expected} bytes of {self.url(key)}; retry", key=key, retryable=True
            )
        return total

    async def head_size(self, key: str) -> int:
        resp = await self._call("head_object", key, Key=key)
        return int(resp["ContentLength"])

    async def delete_keys(self, keys: Sequence[str]) -> int:
        """Delete the given keys (1000 per request); return how many were requested."""
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            request = {"Objects": chunk, "Quiet": True}
            resp = await self._call("delete_objects", chunk[0]["Key"], Delete=request)
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise StageError(
                    f"could not delete {self.url(first['Key'])}: {first.get('Code')} - check the IAM policy",
                    key=first["Key"],
                )
        return len(keys)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (never the empty prefix); return how many."""
        _require_prefix(prefix)
        keys = [o["Key"] async for o in self._paginate("list_objects_v2", "Contents", Prefix=prefix)]
        return await self.delete_keys(keys)

    def multipart(self, key: str) -> contextlib.AbstractAsyncContextManager[MultipartUpload]:
        """Stream one object: completes on clean exit, aborts on any exception or cancellation."""
        return self._multipart(key)

    @contextlib.asynccontextmanager
    async def _multipart(self, key: str) -> AsyncIterator[MultipartUpload]:
        assert self._part_limiter is not None, "S3Stage used outside 'async with'"
        upload = MultipartUpload(self, key, self._part_limiter)
        try:
            async with anyio.create_task_group() as tg:
                upload._tg = tg
                yield upload
            await upload._finish()
        except BaseExceptionGroup as group:
            await upload._abort()
            raise _sole(group) from None
        except BaseException:
            await upload._abort()
            raise

    async def _call(self, action: str, key: str | None, **kwargs: Any) -> Any:
        try:
            return await getattr(self.client, action)(Bucket=self.cfg.bucket, **kwargs)
        except (*_TRANSPORT_ERRORS, ClientError) as exc:
            raise self._error(exc, action, key) from exc

    async def _paginate(self, action: str, field: str, **kwargs: Any) -> AsyncIterator[Any]:
        try:
            async for page in self.client.get_paginator(action).paginate(Bucket=self.cfg.bucket, **kwargs):
                for item in page.get(field, []):
                    yield item
        except (*_TRANSPORT_ERRORS, ClientError) as exc:
            raise self._error(exc, action, kwargs.get("Prefix")) from exc

    def _session(self) -> aioboto3.Session:
        cfg = self.cfg
        if bool(cfg.access_key_id) != bool(cfg.secret_access_key):
            raise StageError(
                f"connections.s3.{cfg.name}: set both access_key_id and secret_access_key, or neither "
                "(to use the AWS profile/role chain)",
                retryable=False,
            )
        try:
            if cfg.access_key_id and cfg.secret_access_key:
                return aioboto3.Session(
                    aws_access_key_id=cfg.access_key_id.reveal(),
                    aws_secret_access_key=cfg.secret_access_key.reveal(),
                    aws_session_token=cfg.session_token.reveal() if cfg.session_token else None,
                    region_name=cfg.region,
                )
            return aioboto3.Session(profile_name=cfg.profile, region_name=cfg.region)
        except BotoCoreError as exc:
            raise self._error(exc, "session setup", None) from exc

    def _client_args(self) -> dict[str, Any]:
        config = AioConfig(
            retries={"mode": "standard", "max_attempts": self._max_attempts},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=max(10, 2 * self.cfg.max_concurrency),
            s3={"addressing_style": "path"} if self.cfg.endpoint_url else None,
        )
        args: dict[str, Any] = {"region_name": self.cfg.region, "config": config}
        if self.cfg.endpoint_url:
            args["endpoint_url"] = self.cfg.endpoint_url
        return args

    def _endpoint_label(self) -> str:
        return self.cfg.endpoint_url or f"AWS S3 {self.cfg.region}"

    def _error(self, exc: BaseException, action: str, key: str | None) -> StageError:
        where = self.url(key) if key else f"s3://{self.cfg.bucket}"
        conn = f"connections.s3.{self.cfg.name}"
        if isinstance(exc, ClientError):
            return self._client_error(exc, action, where, key)
        if isinstance(exc, NoCredentialsError):
            hint = f"set access_key_id/secret_access_key in {conn}, or an AWS profile, env vars or role"
            return StageError(f"S3 {action} on {where}: no AWS credentials found - {hint}", key=key)
        text = " ".join(str(exc).split()) or type(exc).__name__
        return StageError(
            f"S3 {action} on {where} failed at {self._endpoint_label()}: {text} - "
            f"check {conn}.endpoint_url/region and the network",
            key=key,
            retryable=True,
        )

    def _client_error(self, exc: ClientError, action: str, where: str, key: str | None) -> StageError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        detail = str(error.get("Message") or "").strip()
        default = "S3 is failing or throttling; retry later" if status >= 500 else "check the bucket and IAM"
        hint = _HINTS.get(code, default).format(region=self.cfg.region)
        message = f"S3 {action} on {where}: {code} (HTTP {status}){' ' + detail if detail else ''} - {hint}"
        return StageError(message, key=key, retryable=status >= 500 or code in ("SlowDown", "RequestTimeout"))


class MultipartUpload:
    """One object being streamed to S3: ``write()`` buffers and uploads full parts concurrently."""

    def __init__(self, stage: S3Stage, key: str, limiter: anyio.CapacityLimiter) -> None:
        self.key = key
        self.bytes_written = 0
        self._stage = stage
        self._limiter = limiter
        self._part_bytes = stage.part_bytes
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: dict[int, dict[str, str]] = {}
        self._next_part = 1
        self._completing = False
        self._tg: TaskGroup | None = None

    async def write(self, data: bytes) -> None:
        """Buffer ``data``; start an upload for each full part (waits while too many are in flight)."""
        self._buffer += data
        self.bytes_written += len(data)
        while len(self._buffer) >= self._part_bytes:
            body = bytes(self._buffer[: self._part_bytes])
            del self._buffer[: self._part_bytes]
            await self._start_part(body)

    async def _start_part(self, body: bytes) -> None:
        assert self._tg is not None
        number = await self._claim_part_number()
        token = object()
        await self._limiter.acquire_on_behalf_of(token)
        self._tg.start_soon(self._upload_part, number, body, token)

    async def _claim_part_number(self) -> int:
        if self._upload_id is None:
            resp = await self._stage._call(
                "create_multipart_upload", self.key, Key=self.key, ChecksumAlgorithm="CRC32"
            )
            self._upload_id = str(resp["UploadId"])
        number = self._next_part
        if number > MAX_PARTS:
            raise StageError(f"{self._stage.url(self.key)} needs over {MAX_PARTS} parts; raise part_size_mb")
        self._next_part += 1
        return number

    async def _upload_part(self, number: int, body: bytes, token: object) -> None:
        try:
            resp = await self._stage._call(
                "upload_part",
                self.key,
                Key=self.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
                ChecksumAlgorithm="CRC32",
            )
            self._parts[number] = {"ETag": resp["ETag"], "ChecksumCRC32": resp["ChecksumCRC32"]}
        finally:
            self._limiter.release_on_behalf_of(token)

    async def _finish(self) -> None:
        """After every started part is done: upload the rest and complete (or one PUT if small)."""
        if self._upload_id is None:
            self._completing = True
            await self._stage.put_bytes(self.key, bytes(self._buffer))
        else:
            if self._buffer or not self._parts:
                number = await self._claim_part_number()
                token = object()
                await self._limiter.acquire_on_behalf_of(token)
                await self._upload_part(number, bytes(self._buffer), token)
            await self._complete()
        self._buffer.clear()

    async def _complete(self) -> None:
        parts = [{"PartNumber": n, **self._parts[n]} for n in sorted(self._parts)]
        self._completing = True
        try:
            await self._stage._call(
                "complete_multipart_upload",
                self.key,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
        except StageError as exc:
            if _code(exc.__cause__) != "NoSuchUpload" or not await self._landed():
                raise
            log.info("complete of %s was retried after success; size verified", self._stage.url(self.key))

    async def _landed(self) -> bool:
        """A Complete retried after it succeeded says NoSuchUpload: HEAD tells whether it landed."""
        try:
            return await self._stage.head_size(self.key) == self.bytes_written
        except StageError:
            return False

    async def _abort(self) -> None:
        """Shielded, time-boxed: abort the upload; remove the object if it may have been completed."""
        with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True) as scope:
            try:
                if self._upload_id is not None:
                    await self._stage._call(
                        "abort_multipart_upload", self.key, Key=self.key, UploadId=self._upload_id
                    )
            except StageError as exc:
                log.warning("could not abort the multipart upload of %s: %s", self.key, exc.message)
            if self._completing:
                await _delete_quietly(self._stage, self.key)
        if scope.cancelled_caught:
            log.warning("timed out aborting the upload of %s; a lifecycle rule will clean it", self.key)


async def _delete_quietly(stage: S3Stage, key: str) -> None:
    try:
        await stage._call("delete_object", key, Key=key)
    except StageError as exc:
        log.warning("could not delete %s: %s", key, exc.message)


def _code(exc: BaseException | None) -> str | None:
    return str(exc.response.get("Error", {}).get("Code")) if isinstance(exc, ClientError) else None


def _require_prefix(prefix: str) -> None:
    if not prefix.strip("/"):
        raise StageError("refusing to act on the whole bucket: the prefix is empty", retryable=False)


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception worth raising from a task group: ours first, then the first other one."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves[1:]:
        log.debug("also failed: %r", exc)
    ours = [e for e in leaves if isinstance(e, S3ShiftError)]
    return (ours or leaves)[0]
