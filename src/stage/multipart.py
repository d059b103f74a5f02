"""One object streamed into S3 as a multipart upload: parts go up concurrently while more is written.

``S3Stage.multipart`` opens it; it completes on a clean exit and aborts on any failure or cancellation.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

import anyio
from anyio.abc import TaskGroup
from botocore.exceptions import ClientError

from src.common.errors import StageError
from src.common.log import get_logger

if TYPE_CHECKING:
    from src.stage.s3 import S3Stage

MAX_PARTS: Final = 10_000
CLEANUP_TIMEOUT: Final = 30.0  # seconds a shielded abort/delete may take

log = get_logger("stage.s3")


class MultipartUpload:
    """One object being streamed to S3: ``write()`` buffers and uploads full parts concurrently."""

    def __init__(self, stage: S3Stage, key: str, limiter: anyio.CapacityLimiter) -> None:
        self.key = key
        self.bytes_written = 0
        self.verified = False  # True once S3 confirmed holding exactly what was written (a single PUT)
        self._stage = stage
        self._limiter = limiter
        self._part_bytes = stage.part_bytes
        self._pending: deque[memoryview] = deque()  # written, not yet in a part: views, no copies
        self._buffered = 0
        self._upload_id: str | None = None
        self._parts: dict[int, dict[str, str]] = {}
        self._next_part = 1
        self._completing = False
        self._tg: TaskGroup | None = None

    async def write(self, data: bytes | memoryview) -> None:
        """Buffer ``data`` (kept by reference: the caller must not change it); start an upload for each full
        part (waits while too many are in flight). A part is joined from the pieces once: its bytes are
        copied once between the Parquet writer and the HTTP body (W1's 25 MB were copied five times, a
        fresh buffer each: a sixth of the run's page faults)."""
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        self._pending.append(view)
        self._buffered += view.nbytes
        self.bytes_written += view.nbytes
        while self._buffered >= self._part_bytes:
            await self._start_part(self._take(self._part_bytes))

    def _take(self, size: int) -> bytes:
        """The first ``size`` buffered bytes, as one object."""
        pieces: list[memoryview] = []
        need = size
        while need:
            view = self._pending[0]
            if view.nbytes <= need:
                pieces.append(self._pending.popleft())
                need -= view.nbytes
            else:
                pieces.append(view[:need])
                self._pending[0] = view[need:]
                need = 0
        self._buffered -= size
        whole = pieces[0].obj if len(pieces) == 1 else None
        if isinstance(whole, bytes) and len(whole) == size:
            return whole
        return b"".join(pieces)

    async def _start_part(self, body: bytes) -> None:
        assert self._tg is not None
        number = await self._claim_part_number()
        token = object()
        await self._limiter.acquire_on_behalf_of(token)
        self._tg.start_soon(self._upload_part, number, body, token)

    async def _claim_part_number(self) -> int:
        if self._upload_id is None:
            resp = await self._stage._call(
                "create_multipart_upload",
                self.key,
                Key=self.key,
                ChecksumAlgorithm="CRC32",
                **self._stage.encryption(),
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
            data = self._take(self._buffered)
            self.verified = await self._stage.put_bytes(self.key, data)
            if self.verified:  # S3 holds exactly these bytes: the run's own load may read them from here
                self._stage.remember(self.key, data)
        else:
            if self._buffered or not self._parts:
                number = await self._claim_part_number()
                token = object()
                await self._limiter.acquire_on_behalf_of(token)
                await self._upload_part(number, self._take(self._buffered), token)
            await self._complete()

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
            if error_code(exc.__cause__) != "NoSuchUpload" or not await self._landed():
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
                self._stage.left_behind()
                log.warning("could not abort the multipart upload of %s: %s", self.key, exc.message)
            if self._completing:
                await _delete_quietly(self._stage, self.key)
        if scope.cancelled_caught:
            self._stage.left_behind()
            log.warning("timed out aborting the upload of %s; the next run will abort it", self.key)


async def _delete_quietly(stage: S3Stage, key: str) -> None:
    try:
        await stage._call("delete_object", key, Key=key)
    except StageError as exc:
        stage.left_behind()
        log.warning("could not delete %s: %s", key, exc.message)


def error_code(exc: BaseException | None) -> str | None:
    return str(exc.response.get("Error", {}).get("Code")) if isinstance(exc, ClientError) else None
