"""S3 staging: one aiobotocore client per run; listing, small objects, and streaming multipart uploads.

Every S3 call goes through ``S3Stage._call``, which turns botocore/aiohttp failures into one-line
``StageError``s naming the bucket/key and what to check. Credentials are revealed only when the
client is built and never appear in messages.

An endpoint that cannot be reached is found in seconds, once per process, and then no request goes
out until a probe gets through (``src.stage.breaker``); each request that fails so names the
endpoint and the cause.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiohttp
import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from src.common.errors import S3Error, StageError, first_error
from src.common.log import get_logger
from src.config.models import S3Conn
from src.stage.breaker import CONNECT_TIMEOUT, COOL_DOWN, Breaker, EndpointDown, connect_failure
from src.stage.multipart import CLEANUP_TIMEOUT, MultipartUpload, error_code

MIB: Final = 1024 * 1024
MIN_PART_BYTES: Final = 5 * MIB  # S3's minimum for every part but the last
DOWNLOAD_CHUNK: Final = MIB
DELETE_BATCH: Final = 1000  # keys per DeleteObjects request (S3's limit)
KEEP_WRITTEN_BYTES: Final = 32 * MIB  # small staged files kept in memory for the run's own load
CHECK_TIMEOUT: Final = 60.0  # seconds for the bucket check, its retries included
MIN_SEND_RATE: Final = 256 * 1024  # bytes/s: a request body sent slower than this is taken as stalled
STALL_SLACK: Final = 30.0  # seconds of retry backoff a request may take beyond its attempts
OUTAGE_ROUNDS: Final = 2  # a request cut by an outage goes out once more after a probe gets through

log = get_logger("stage.s3")

_TRANSPORT_ERRORS = (BotoCoreError, aiohttp.ClientError, OSError)
# a listing's next page: (field of the truncated page's answer, argument of the next request)
_RESUME: Final = {
    "list_objects_v2": (("NextContinuationToken", "ContinuationToken"),),
    "list_multipart_uploads": (("NextKeyMarker", "KeyMarker"), ("NextUploadIdMarker", "UploadIdMarker")),
}
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


@dataclass(frozen=True)
class OpenUpload:
    """An unfinished multipart upload (invisible in listings of objects, billed until aborted)."""

    key: str
    upload_id: str
    initiated: datetime


class S3Stage:
    """The run's S3 client for one staging location. Use as ``async with S3Stage(cfg) as s3``."""

    def __init__(
        self,
        cfg: S3Conn,
        part_limiter: anyio.CapacityLimiter | None = None,
        *,
        max_attempts: int | None = None,
        keep_written: bool = False,
        cool_down: float = COOL_DOWN,
    ) -> None:
        self.cfg = cfg
        self._part_limiter = part_limiter
        self._max_attempts = max_attempts or cfg.max_attempts
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._later: list[str] = []  # keys to delete in batches (``delete_later``)
        self._keep_written = keep_written
        self._written: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._breaker = Breaker(max_attempts=self._max_attempts, cool_down=cool_down)
        self.unclean = 0  # cleanups that failed (``left_behind``)

    def __repr__(self) -> str:
        return f"S3Stage(bucket={self.cfg.bucket!r}, endpoint={self._endpoint_label()!r})"

    async def __aenter__(self) -> S3Stage:
        session = self._session()
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(session.create_client("s3", **self._client_args()))
        except (*_TRANSPORT_ERRORS, ValueError, BotoCoreError) as exc:
            raise self._error(exc, "client setup", None) from exc
        self._client.meta.events.register_first("needs-retry.s3", self._breaker.retry_hook)
        if self._part_limiter is None:
            self._part_limiter = anyio.CapacityLimiter(max(1, self.cfg.max_concurrency))
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._later and self._stack is not None:
            with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                try:
                    await self.flush_deletes()
                except StageError as exc:
                    log.warning("could not delete objects queued for deletion: %s", exc.message)
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
        """``<prefix><pipeline>/<db.table>/<execution_id>/``: one run's files of one table."""
        return f"{self.table_prefix(pipeline, table)}{path_segment('execution_id', execution_id)}/"

    def table_prefix(self, pipeline: str, table: str) -> str:
        """``<prefix><pipeline>/<db.table>/``: every run of one table, and its ``_runs/`` markers."""
        return f"{self.pipeline_prefix(pipeline)}{path_segment('table', table)}/"

    def pipeline_prefix(self, pipeline: str) -> str:
        """``<prefix><pipeline>/``: every table of one pipeline."""
        parts = [self.cfg.prefix.strip("/"), path_segment("pipeline", pipeline)]
        return "/".join(p for p in parts if p) + "/"

    def url(self, key: str) -> str:
        return f"s3://{self.cfg.bucket}/{key}"

    async def check(self) -> None:
        """Fail fast with a clear message when the bucket cannot be reached, or when the endpoint takes a
        connection but does not answer (a proxy or firewall that holds it): the run would wait twice the
        ``read_timeout`` (it waited 120 s per attempt, 12 minutes in all) before it printed anything."""
        try:
            with anyio.fail_after(CHECK_TIMEOUT):
                await self._call("head_bucket", None)
        except TimeoutError:
            raise StageError(
                f"no answer from S3 endpoint {self._endpoint_label()} to a HEAD of bucket "
                f"{self.cfg.bucket!r} within {CHECK_TIMEOUT:g} s, retries included (it takes connections "
                "but does not answer, or keeps failing) — check "
                f"connections.s3.{self.cfg.name}.endpoint_url and any proxy between",
                retryable=True,
            ) from None

    async def ensure_reachable(self) -> None:
        """Nothing while the endpoint is not known to be unreachable. Else the ``Breaker``'s verdict, as
        for any request (a wait for a probe, perhaps this call's HEAD of the bucket): StageError when the
        endpoint stays unreachable. A table calls it before it reads anything it would have to stage."""
        if self._breaker.cause is not None:
            await self.check()

    def hurry(self) -> None:
        """The run is being stopped (SIGTERM/SIGINT): its cleanup must end within the grace period, so an
        endpoint that cannot be reached costs one attempt, not retries nor a wait for a probe."""
        self._breaker.hurry()

    def left_behind(self, count: int = 1) -> None:
        """A cleanup failed (an upload not aborted, a partial file not deleted; ``count`` of them). The run
        then keeps its marker (``runs.run_marker``), so that the next run of the pipeline cleans up after
        it as after a killed run, even when S3 is reachable again by the time this run ends."""
        self.unclean += count

    async def abort_stale_uploads(self, prefix: str, older_than_seconds: float = 3600) -> int:
        """Abort unfinished multipart uploads under ``prefix`` started more than the given age ago."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        stale = [u for u in await self.list_uploads(prefix) if u.initiated <= cutoff]
        for upload in stale:
            await self.abort_upload(upload)
        return len(stale)

    async def list_uploads(self, prefix: str) -> list[OpenUpload]:
        """Every unfinished multipart upload under ``prefix`` (never the whole bucket)."""
        _require_prefix(prefix)
        pages = self._paginate("list_multipart_uploads", "Uploads", Prefix=prefix)
        return [OpenUpload(u["Key"], u["UploadId"], u["Initiated"]) async for u in pages]

    async def abort_upload(self, upload: OpenUpload) -> None:
        await self._call("abort_multipart_upload", upload.key, Key=upload.key, UploadId=upload.upload_id)
        log.info("aborted unfinished multipart upload %s", self.url(upload.key))

    async def list_dirs(self, prefix: str) -> list[str]:
        """The "directories" directly under ``prefix`` (each a key prefix ending with "/")."""
        _require_prefix(prefix)
        pages = self._paginate("list_objects_v2", "CommonPrefixes", Prefix=prefix, Delimiter="/")
        return [str(p["Prefix"]) async for p in pages]

    async def list_objects(self, prefix: str) -> list[tuple[str, datetime]]:
        """(key, last modified) of every object under ``prefix``."""
        _require_prefix(prefix)
        pages = self._paginate("list_objects_v2", "Contents", Prefix=prefix)
        return [(str(o["Key"]), o["LastModified"]) async for o in pages]

    def encryption(self) -> dict[str, str]:
        """The server-side encryption every object of ours asks for (``connections.s3.NAME.sse``): a bucket
        policy that refuses uploads without it (``s3:x-amz-server-side-encryption``) is met; none set, the
        bucket's default encryption applies. On the requests that create objects only (a PUT, the start
        of a multipart upload)."""
        if not self.cfg.sse:
            return {}
        kms = {"SSEKMSKeyId": self.cfg.sse_kms_key_id} if self.cfg.sse_kms_key_id else {}
        return {"ServerSideEncryption": self.cfg.sse, **kms}

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        """PUT one object with a CRC32 checksum that S3 checks. True when the response echoes that checksum,
        which proves the object holds exactly ``data`` (no HEAD needed); False when the store echoes none."""
        resp = await self._call(
            "put_object",
            key,
            Key=key,
            Body=data,
            ContentType=content_type,
            ChecksumAlgorithm="CRC32",
            **self.encryption(),
        )
        echoed = resp.get("ChecksumCRC32")
        if echoed is None:
            return False
        if echoed != crc32_b64(data):
            raise S3Error(
                f"S3 stored {self.url(key)} with checksum {echoed}, not the {crc32_b64(data)} sent; re-run",
                key=key,
                retryable=True,
            )
        return True

    def remember(self, key: str, data: bytes) -> None:
        """Keep a small object this run wrote (and S3 confirmed by its checksum) for ``take_written``, so
        the run's own load reads it without a GET. At most ``KEEP_WRITTEN_BYTES`` are kept, oldest dropped
        first; only when the S3Stage was opened with ``keep_written``."""
        if not self._keep_written or len(data) > KEEP_WRITTEN_BYTES:
            return
        self._written[key] = data
        while sum(map(len, self._written.values())) > KEEP_WRITTEN_BYTES:
            self._written.popitem(last=False)

    def take_written(self, key: str) -> bytes | None:
        """The bytes ``remember`` kept for ``key`` (forgotten from then on), or None."""
        return self._written.pop(key, None)

    async def get_bytes(self, key: str) -> bytes:
        resp = await self._call("get_object", key, Key=key)
        try:
            body = resp["Body"]  # read through the wrapper: it checks the content length
            async with body:
                data: bytes = await body.read()
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc, "get_object", key) from exc
        return data

    async def get_optional(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such key."""
        try:
            return await self.get_bytes(key)
        except StageError as exc:
            if error_code(exc.__cause__) in ("NoSuchKey", "404"):
                return None
            raise

    async def exists(self, key: str) -> bool:
        try:
            await self._call("head_object", key, Key=key)
        except StageError as exc:
            if error_code(exc.__cause__) in ("NoSuchKey", "404"):
                return False
            raise
        return True

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
            raise S3Error(
                f"downloaded {total} of {expected} bytes of {self.url(key)}; retry", key=key, retryable=True
            )
        return total

    async def head_size(self, key: str) -> int:
        resp = await self._call("head_object", key, Key=key)
        return int(resp["ContentLength"])

    async def delete_keys(self, keys: Sequence[str]) -> int:
        """Delete the given keys (1000 per request); return how many were requested."""
        for start in range(0, len(keys), DELETE_BATCH):
            chunk = [{"Key": k} for k in keys[start : start + DELETE_BATCH]]
            request = {"Objects": chunk, "Quiet": True}
            resp = await self._call("delete_objects", chunk[0]["Key"], Delete=request)
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise S3Error(
                    f"could not delete {self.url(first['Key'])}: {first.get('Code')} - check the IAM policy",
                    key=first["Key"],
                )
        return len(keys)

    async def delete_later(self, key: str) -> None:
        """Queue ``key`` to be deleted with others, one request per 1,000 keys: when that many are queued,
        on ``flush_deletes``, or at the latest when the client closes (a key that cannot be deleted then
        is logged). Only for objects whose lingering is harmless, such as a finished table's run marker."""
        self._later.append(key)
        if len(self._later) >= DELETE_BATCH:
            await self.flush_deletes()

    async def flush_deletes(self) -> None:
        """Delete every key ``delete_later`` queued."""
        keys, self._later = self._later, []
        await self.delete_keys(keys)

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
            raise first_error(group) from None
        except BaseException:
            await upload._abort()
            raise

    async def _call(self, action: str, key: str | None, **kwargs: Any) -> Any:
        """One request; cut by an outage of an endpoint that answered before, it waits for the breaker's
        probe and goes out once more (``Breaker.rides_out``)."""
        for round_ in range(OUTAGE_ROUNDS):
            probe = await self._admit(action, key)
            try:
                deadline = self._deadline(kwargs.get("Body"))
                with anyio.move_on_after(deadline) as scope:
                    result = await getattr(self.client, action)(Bucket=self.cfg.bucket, **kwargs)
                if scope.cancelled_caught:
                    raise S3Error(
                        f"S3 {action} of {self.url(key) if key else self.cfg.bucket} got no answer within "
                        f"{deadline:.0f} s: the endpoint (or a proxy before it) holds the request — check "
                        f"connections.s3.{self.cfg.name}.endpoint_url, then rerun",
                        key=key,
                        retryable=True,
                    )
            except (*_TRANSPORT_ERRORS, ClientError) as exc:
                error = self._failed(exc, action, key, probe)
                if round_ + 1 < OUTAGE_ROUNDS and self._breaker.rides_out(exc, probe=probe):
                    where = self.url(key) if key else self.cfg.bucket
                    log.info("S3 %s of %s was cut: it goes again once a probe is answered", action, where)
                    continue
                raise error from exc
            else:
                self._answered(probe)
                return result
            finally:
                self._breaker.release(probe)
        raise AssertionError("unreachable: the last round returns or raises")

    def _deadline(self, body: Any) -> float:
        """How long one request may take in all: two attempts of connecting, sending the body at no less
        than ``MIN_SEND_RATE`` and waiting ``read_timeout`` for the answer, plus retry backoff. botocore
        bounds neither the wait for "100 Continue" (a PUT's body waits for it) nor a send blocked on a
        full window: a stalled endpoint held a part upload, and its table, for good."""
        size = len(body) if isinstance(body, bytes | bytearray) else 0
        return 2 * (CONNECT_TIMEOUT + self.cfg.read_timeout + size / MIN_SEND_RATE) + STALL_SLACK

    async def _paginate(self, action: str, field: str, **kwargs: Any) -> AsyncIterator[Any]:
        """The ``field`` items of every page of a listing. Each page is one ``_call`` that resumes after
        the page before (its continuation token), so a listing cut by an outage rides it out like any
        request, and a page that goes out again never repeats the items of the pages already read."""
        prefix = kwargs.get("Prefix")
        while True:
            page = await self._call(action, prefix, **kwargs)
            for item in page.get(field, []):
                yield item
            resume = {arg: page[token] for token, arg in _RESUME[action] if page.get(token)}
            if not page.get("IsTruncated") or not resume:
                return
            kwargs = {**kwargs, **resume}

    async def _admit(self, action: str, key: str | None) -> bool:
        """The ``Breaker``'s leave to send a request (True: as the probe); StageError when it is down."""
        try:
            return await self._breaker.admit()
        except EndpointDown as down:
            raise self._unreachable(down.cause, action, key, sent=False, stopping=down.stopping) from None

    def _failed(self, exc: BaseException, action: str, key: str | None, probe: bool) -> S3Error:
        """The error for a request that failed; the ``Breaker`` learns whether it reached the endpoint."""
        failure = connect_failure(exc)
        if failure is None:
            if not isinstance(exc, NoCredentialsError):  # that one sends nothing
                self._answered(probe)
            return self._error(exc, action, key)
        if self._breaker.failed(failure.cause, probe=probe):
            log.warning(
                "S3 endpoint %s unreachable (%s): S3 requests wait %g s for a probe, then fail at once "
                "until one gets through",
                self._endpoint_url(),
                failure.cause,
                self._breaker.cool_down,
            )
        elif probe:
            log.warning(
                "S3 endpoint %s still unreachable (%s): S3 requests fail at once, one probes it every %g s",
                self._endpoint_url(),
                failure.cause,
                self._breaker.cool_down,
            )
        return self._unreachable(failure.cause, action, key, sent=True)

    def _answered(self, probe: bool) -> None:
        if (down_for := self._breaker.answered(probe=probe)) is not None:
            log.warning("S3 endpoint %s reachable again after %.1f s", self._endpoint_url(), down_for)

    def _session(self) -> AioSession:
        """aiobotocore's session (aioboto3 is a wrapper around it that adds nothing we use, and importing
        boto3 for it cost 0.1 s of every run's start)."""
        cfg = self.cfg
        if bool(cfg.access_key_id) != bool(cfg.secret_access_key):
            raise StageError(
                f"connections.s3.{cfg.name}: set both access_key_id and secret_access_key, or neither "
                "(to use the AWS profile/role chain)",
                retryable=False,
            )
        try:
            if cfg.access_key_id and cfg.secret_access_key:
                session = AioSession()
                session.set_credentials(
                    cfg.access_key_id.reveal(),
                    cfg.secret_access_key.reveal(),
                    cfg.session_token.reveal() if cfg.session_token else None,
                )
                return session
            return AioSession(profile=cfg.profile)
        except BotoCoreError as exc:
            raise self._error(exc, "session setup", None) from exc

    def _client_args(self) -> dict[str, Any]:
        config = AioConfig(
            retries={"mode": "standard", "max_attempts": self._max_attempts},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=self.cfg.read_timeout,
            max_pool_connections=max(10, 2 * self.cfg.max_concurrency),
            s3={"addressing_style": "path"} if self.cfg.endpoint_url else None,
        )
        args: dict[str, Any] = {"region_name": self.cfg.region, "config": config}
        if self.cfg.endpoint_url:
            args["endpoint_url"] = self.cfg.endpoint_url
            if self.cfg.endpoint_url.lower().startswith("http://"):
                # plain HTTP has no certificate to verify; without this the client still loads the CA
                # bundle into a TLS context it never uses (~60 ms of CPU per run)
                args["verify"] = False
        return args

    def _endpoint_label(self) -> str:
        return self.cfg.endpoint_url or f"AWS S3 {self.cfg.region}"

    def _endpoint_url(self) -> str:
        """The URL requests go to (AWS's regional one when no endpoint_url is configured)."""
        return str(self._client.meta.endpoint_url) if self._client is not None else self._endpoint_label()

    def _unreachable(
        self, cause: str, action: str, key: str | None, *, sent: bool, stopping: bool = False
    ) -> S3Error:
        where = self.url(key) if key else f"s3://{self.cfg.bucket}"
        every = f"one request probes it every {self._breaker.cool_down:g} s"
        outcome = "failed" if sent else f"not sent, a probe failed too ({every})"
        if stopping:
            outcome = "not sent: the run is being stopped"
        return S3Error(
            f"S3 endpoint {self._endpoint_url()} unreachable ({cause}): {action} on {where} {outcome} - "
            f"check connections.s3.{self.cfg.name}.endpoint_url/region and the network, then rerun",
            key=key,
            retryable=True,
        )

    def _error(self, exc: BaseException, action: str, key: str | None) -> S3Error:
        where = self.url(key) if key else f"s3://{self.cfg.bucket}"
        conn = f"connections.s3.{self.cfg.name}"
        if isinstance(exc, ClientError):
            return self._client_error(exc, action, where, key)
        if isinstance(exc, NoCredentialsError):
            hint = f"set access_key_id/secret_access_key in {conn}, or an AWS profile, env vars or role"
            return S3Error(f"S3 {action} on {where}: no AWS credentials found - {hint}", key=key)
        text = " ".join(str(exc).split()) or type(exc).__name__
        return S3Error(
            f"S3 {action} on {where} failed at {self._endpoint_label()}: {text} - "
            f"check {conn}.endpoint_url/region and the network",
            key=key,
            retryable=True,
        )

    def _client_error(self, exc: ClientError, action: str, where: str, key: str | None) -> S3Error:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        detail = str(error.get("Message") or "").strip()
        default = "S3 is failing or throttling; retry later" if status >= 500 else "check the bucket and IAM"
        hint = _HINTS.get(code, default).format(region=self.cfg.region)
        message = f"S3 {action} on {where}: {code} (HTTP {status}){' ' + detail if detail else ''} - {hint}"
        return S3Error(message, key=key, retryable=status >= 500 or code in ("SlowDown", "RequestTimeout"))


def crc32_b64(data: bytes) -> str:
    """S3's ``ChecksumCRC32`` of ``data``: the big-endian CRC32, base64."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def path_segment(label: str, value: str) -> str:
    """``value`` as one segment of a key (no "/", not "." or ".."); StageError naming ``label`` if not."""
    value = value.strip("/")
    if not value or value in (".", "..") or "/" in value:
        raise StageError(f"invalid {label} {value!r} for an S3 run prefix", retryable=False)
    return value


def _require_prefix(prefix: str) -> None:
    if not prefix.strip("/"):
        raise StageError("refusing to act on the whole bucket: the prefix is empty", retryable=False)
