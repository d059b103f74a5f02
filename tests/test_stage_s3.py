"""S3Stage against a real S3 API (moto server over HTTP): multipart, aborts, faults, credentials."""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

from src.common.errors import StageError, describe
from src.common.secret import Secret
from src.config.models import S3Conn
from src.stage import s3 as s3_module
from src.stage.s3 import MIB, S3Stage
from tests.conftest import _free_port, s3_client
from tests.test_stage_support import FailTimes, error_response, get_object, list_keys, open_uploads

pytestmark = pytest.mark.anyio

ACCESS = "AKIASTAGETESTKEY0001"
SECRET = "stage/Test+Secret+Value+0123456789abcdef"
TOKEN = "StageTestSessionToken//0123456789"


async def _stream(s3: S3Stage, key: str, data: bytes, chunk: int = 1_000_003) -> None:
    async with s3.multipart(key) as upload:
        for start in range(0, len(data), chunk):
            await upload.write(data[start : start + chunk])
    assert upload.bytes_written == len(data)


def test_run_prefix_is_normalised(s3_conn: S3Conn) -> None:
    for prefix in ("staging/", "/staging", "staging//"):
        s3 = S3Stage(dataclasses.replace(s3_conn, prefix=prefix))
        assert s3.run_prefix("nightly", "shop.orders", "sync_1") == "staging/nightly/shop.orders/sync_1/"
    bare = S3Stage(dataclasses.replace(s3_conn, prefix=""))
    assert bare.run_prefix("/p/", "db.t", "run") == "p/db.t/run/"
    assert bare.url("a/b") == f"s3://{s3_conn.bucket}/a/b"
    for bad in ("", "..", "a/b"):
        with pytest.raises(StageError):
            bare.run_prefix("p", bad, "run")


async def test_multipart_several_parts_round_trip(s3_conn: S3Conn) -> None:
    data = os.urandom(17 * MIB + 12345)  # incompressible: 5 MiB parts -> 4 parts
    async with S3Stage(s3_conn) as s3:
        await s3.check()
        await _stream(s3, "staging/big.bin", data)
        assert await s3.head_size("staging/big.bin") == len(data)
    head = s3_client(str(s3_conn.endpoint_url)).head_object(Bucket=s3_conn.bucket, Key="staging/big.bin")
    assert head["ETag"].strip('"').endswith("-4")  # really four parts
    assert get_object(s3_conn, "staging/big.bin") == data
    assert open_uploads(s3_conn) == []


async def test_multipart_parts_are_cut_exactly_from_pieces_of_any_size(s3_conn: S3Conn) -> None:
    """The upload keeps what is written as views and joins each part once: pieces that straddle a part
    boundary, empty pieces, bytearray and memoryview pieces all land byte for byte, in parts of exactly
    the part size (S3 needs every part but the last to be at least 5 MiB)."""
    data = os.urandom(11 * MIB + 777)
    pieces: list[bytes | bytearray | memoryview] = []
    start = 0
    for size in [1, 0, 5 * MIB - 1, 3, MIB, 0, 2 * MIB + 5, 7]:
        pieces.append(data[start : start + size])
        start += size
    pieces += [bytearray(data[start : start + MIB]), memoryview(data)[start + MIB :]]
    sizes: list[int] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        sizes.append(params["body"].getbuffer().nbytes)

    async with S3Stage(s3_conn) as s3:
        s3.client.meta.events.register("before-call.s3.UploadPart", record)
        async with s3.multipart("staging/pieces.bin") as upload:
            for piece in pieces:
                await upload.write(piece)
        assert upload.bytes_written == len(data)
    assert sizes == [5 * MIB, 5 * MIB, MIB + 777]
    assert get_object(s3_conn, "staging/pieces.bin") == data
    assert open_uploads(s3_conn) == []


async def test_an_endpoint_that_takes_connections_but_never_answers_fails_the_check(
    s3_conn: S3Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket that listens and never answers (the kernel completes the handshake): the bucket check
    waited READ_TIMEOUT per attempt, about 12 minutes in all, before the run printed its report."""
    monkeypatch.setattr(s3_module, "CHECK_TIMEOUT", 1.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        cfg = dataclasses.replace(s3_conn, endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}")
        async with S3Stage(cfg) as s3:
            start = time.monotonic()
            with pytest.raises(StageError, match="no answer from S3 endpoint") as caught:
                await s3.check()
    assert time.monotonic() - start < 5 and caught.value.retryable
    assert f"connections.s3.{cfg.name}.endpoint_url" in caught.value.message


async def test_a_request_the_endpoint_holds_fails_within_its_deadline(
    s3_conn: S3Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 (a proxy in front of it) takes the connection and never answers: a PUT waited for good (botocore
    bounds neither the wait for "100 Continue" nor a send blocked on a full window), and its table with
    it. Each request now has a deadline: two attempts of connect + send + ``read_timeout``, plus backoff."""
    monkeypatch.setattr(s3_module, "CONNECT_TIMEOUT", 0.2)
    monkeypatch.setattr(s3_module, "STALL_SLACK", 0.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        cfg = dataclasses.replace(s3_conn, endpoint_url=endpoint, read_timeout=0.5)
        async with S3Stage(cfg) as s3:
            start = time.monotonic()
            with pytest.raises(StageError, match="got no answer within 1 s") as caught:
                await s3.put_bytes("staging/x.bin", b"x")
            took = time.monotonic() - start
    assert took < 5 and caught.value.retryable, (took, caught.value)
    assert f"connections.s3.{cfg.name}.endpoint_url" in caught.value.message


async def test_small_object_is_one_put_and_empty_object_allowed(s3_conn: S3Conn) -> None:
    async with S3Stage(s3_conn) as s3:
        creates = FailTimes(500, "InternalError", times=0)
        s3.client.meta.events.register("before-send.s3.CreateMultipartUpload", creates)
        await _stream(s3, "staging/small.bin", b"hello")
        await _stream(s3, "staging/empty.bin", b"")
        assert creates.calls == 0
    assert get_object(s3_conn, "staging/small.bin") == b"hello"
    assert get_object(s3_conn, "staging/empty.bin") == b""


async def test_parts_upload_concurrently_within_the_limit(s3_conn: S3Conn) -> None:
    in_flight = peak = 0

    async def slow_part(request: Any, **kwargs: Any) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.3)
        in_flight -= 1

    data = os.urandom(26 * MIB)  # 6 parts
    async with S3Stage(s3_conn, anyio.CapacityLimiter(2)) as s3:
        s3.client.meta.events.register("before-send.s3.UploadPart", slow_part)
        await _stream(s3, "staging/c.bin", data)
    assert peak == 2
    assert get_object(s3_conn, "staging/c.bin") == data


async def test_failure_mid_upload_aborts(s3_conn: S3Conn) -> None:
    async with S3Stage(s3_conn) as s3:
        with pytest.raises(RuntimeError, match="boom"):
            async with s3.multipart("staging/x.bin") as upload:
                await upload.write(os.urandom(11 * MIB))  # two parts started
                await anyio.sleep(0.2)
                assert open_uploads(s3_conn) == ["staging/x.bin"]
                raise RuntimeError("boom")
    assert open_uploads(s3_conn) == []
    assert list_keys(s3_conn) == []


async def test_cancellation_mid_upload_aborts(s3_conn: S3Conn) -> None:
    async def stuck(request: Any, **kwargs: Any) -> None:
        await anyio.sleep(30)

    async with S3Stage(s3_conn) as s3:
        s3.client.meta.events.register("before-send.s3.UploadPart", stuck)
        with anyio.move_on_after(1) as scope:
            await _stream(s3, "staging/x.bin", os.urandom(12 * MIB))
        assert scope.cancelled_caught
    assert open_uploads(s3_conn) == []
    assert list_keys(s3_conn) == []


async def test_transient_5xx_on_upload_part_is_retried(s3_conn: S3Conn) -> None:
    data = os.urandom(11 * MIB)
    async with S3Stage(s3_conn) as s3:
        hook = FailTimes(503, "SlowDown", times=1)
        s3.client.meta.events.register("before-send.s3.UploadPart", hook)
        await _stream(s3, "staging/r.bin", data)
    assert hook.calls == 4  # 3 parts + 1 retry
    assert get_object(s3_conn, "staging/r.bin") == data


async def test_persistent_5xx_fails_naming_the_key_and_aborts(s3_conn: S3Conn) -> None:
    async with S3Stage(s3_conn, max_attempts=2) as s3:
        hook = FailTimes(500, "InternalError", times=None)
        s3.client.meta.events.register("before-send.s3.UploadPart", hook)
        with pytest.raises(StageError) as info:
            await _stream(s3, "staging/p.bin", os.urandom(6 * MIB))
    assert "staging/p.bin" in str(info.value) and "InternalError" in str(info.value)
    assert info.value.key == "staging/p.bin" and info.value.retryable
    assert hook.calls >= 2
    assert open_uploads(s3_conn) == [] and list_keys(s3_conn) == []


async def test_access_denied_on_complete_is_terminal_and_aborts(s3_conn: S3Conn) -> None:
    async with S3Stage(s3_conn) as s3:
        hook = FailTimes(403, "AccessDenied", times=None)
        s3.client.meta.events.register("before-send.s3.CompleteMultipartUpload", hook)
        with pytest.raises(StageError, match=r"AccessDenied.*IAM") as info:
            await _stream(s3, "staging/d.bin", os.urandom(6 * MIB))
    assert not info.value.retryable and hook.calls == 1
    assert open_uploads(s3_conn) == [] and list_keys(s3_conn) == []


async def test_complete_retried_after_success_is_accepted(s3_conn: S3Conn) -> None:
    """The reply to a successful Complete is lost; the retry says NoSuchUpload; HEAD proves it landed."""
    calls = 0

    async def complete_then_fail(request: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            return None
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        headers["Content-Type"] = "application/xml"  # else urllib sends a form type and the body is eaten
        req = urllib.request.Request(request.url, data=request.body, headers=headers, method="POST")
        await anyio.to_thread.run_sync(lambda: urllib.request.urlopen(req).read())
        return error_response(request.url, 500, "InternalError")

    data = os.urandom(6 * MIB)
    async with S3Stage(s3_conn) as s3:
        s3.client.meta.events.register("before-send.s3.CompleteMultipartUpload", complete_then_fail)
        await _stream(s3, "staging/n.bin", data)
    assert calls == 2
    assert get_object(s3_conn, "staging/n.bin") == data


async def test_abort_stale_uploads_only_old_ones_under_prefix(s3_conn: S3Conn) -> None:
    client = s3_client(str(s3_conn.endpoint_url))
    client.create_multipart_upload(Bucket=s3_conn.bucket, Key="staging/p/t/run/part-00000.parquet")
    client.create_multipart_upload(Bucket=s3_conn.bucket, Key="other/part-00000.parquet")
    async with S3Stage(s3_conn) as s3:
        # moto reports every upload as initiated in 2010: younger than a century, older than an hour
        century = 100 * 365 * 86400
        assert await s3.abort_stale_uploads("staging/p/", older_than_seconds=century) == 0
        assert open_uploads(s3_conn, "staging/") == ["staging/p/t/run/part-00000.parquet"]
        assert await s3.abort_stale_uploads("staging/p/") == 1
        with pytest.raises(StageError, match="whole bucket"):
            await s3.abort_stale_uploads("", older_than_seconds=0)
    assert open_uploads(s3_conn) == ["other/part-00000.parquet"]


async def test_bytes_download_and_delete_prefix(s3_conn: S3Conn, tmp_path: Path) -> None:
    data = os.urandom(3 * MIB + 7)
    async with S3Stage(s3_conn) as s3:
        await s3.put_bytes("staging/run/a.bin", data)
        await s3.put_bytes("staging/run/b.json", b"{}", "application/json")
        await s3.put_bytes("staging/run2/c.bin", b"keep")
        assert await s3.get_bytes("staging/run/b.json") == b"{}"
        assert await s3.download_to("staging/run/a.bin", tmp_path / "a.bin") == len(data)
        assert (tmp_path / "a.bin").read_bytes() == data
        assert await s3.delete_prefix("staging/run/") == 2
        with pytest.raises(StageError, match="whole bucket"):
            await s3.delete_prefix("/")
        with pytest.raises(StageError, match="NoSuchKey") as info:
            await s3.get_bytes("staging/run/a.bin")
        assert info.value.key == "staging/run/a.bin"
    assert list_keys(s3_conn) == ["staging/run2/c.bin"]


async def test_missing_bucket_is_a_clear_error(s3_conn: S3Conn) -> None:
    cfg = dataclasses.replace(s3_conn, bucket="no-such-bucket-s3shift")
    async with S3Stage(cfg) as s3:
        with pytest.raises(StageError, match=r"no-such-bucket-s3shift.*404.*bucket name") as info:
            await s3.check()
    assert not info.value.retryable


async def test_unreachable_endpoint_names_it_and_leaks_no_secret() -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"
    cfg = S3Conn(
        name="lost",
        bucket="stage-bucket",
        endpoint_url=endpoint,
        access_key_id=Secret(ACCESS),
        secret_access_key=Secret(SECRET),
        session_token=Secret(TOKEN),
    )
    async with S3Stage(cfg, max_attempts=1) as s3:
        with pytest.raises(StageError) as info:
            await s3.check()
        texts = [str(info.value), repr(info.value), describe(info.value), repr(s3), repr(cfg), str(cfg)]
    assert "stage-bucket" in str(info.value) and endpoint in str(info.value)
    assert "connections.s3.lost" in str(info.value) and info.value.retryable
    for text in texts:
        for secret in (ACCESS, SECRET, TOKEN):
            assert secret not in text


async def test_explicit_credentials_win_over_the_default_chain(s3_conn: S3Conn) -> None:
    seen: list[str] = []

    async def capture(request: Any, **kwargs: Any) -> None:
        seen.append(str(request.headers.get("Authorization", b""), "latin-1") + "|")
        seen[-1] += str(request.headers.get("X-Amz-Security-Token", b""), "latin-1")

    explicit = dataclasses.replace(
        s3_conn, access_key_id=Secret(ACCESS), secret_access_key=Secret(SECRET), session_token=Secret(TOKEN)
    )
    chain = dataclasses.replace(s3_conn, access_key_id=None, secret_access_key=None)
    for cfg in (explicit, chain):
        async with S3Stage(cfg) as s3:
            s3.client.meta.events.register("before-send.s3.HeadBucket", capture)
            await s3.check()
    assert f"Credential={ACCESS}/" in seen[0] and seen[0].endswith(TOKEN)
    assert "Credential=testing/" in seen[1]  # from the environment (conftest)
    assert SECRET not in "".join(seen)


async def test_half_configured_credentials_are_rejected(s3_conn: S3Conn) -> None:
    cfg = dataclasses.replace(s3_conn, secret_access_key=None)
    with pytest.raises(StageError, match="both access_key_id and secret_access_key"):
        async with S3Stage(cfg):
            pass


def test_aiohttp_default_contexts_are_skipped_and_ssl_restored() -> None:
    """src.stage imports aiohttp without loading the CA store into its two unused default contexts (a
    start-up cost), and leaves ssl as it found it."""
    import ssl

    import aiohttp.connector

    unused = (aiohttp.connector._SSL_CONTEXT_VERIFIED, aiohttp.connector._SSL_CONTEXT_UNVERIFIED)
    assert [c.cert_store_stats()["x509_ca"] for c in unused] == [0, 0]
    assert ssl.create_default_context().cert_store_stats()["x509_ca"] > 0


async def test_https_endpoint_still_verifies_its_certificate(s3_conn: S3Conn, tmp_path: Path) -> None:
    """An HTTPS endpoint with a certificate no CA vouches for is refused: skipping aiohttp's default
    contexts never skips verification."""
    import socket
    import ssl
    import threading

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    await anyio.run_process(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert), "-days", "1"],
    )  # fmt: skip
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    handshakes: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with server_ctx.wrap_socket(conn, server_side=True):
                    handshakes.append("completed")
            except (ssl.SSLError, OSError) as exc:
                handshakes.append(type(exc).__name__)

    threading.Thread(target=serve, daemon=True).start()
    cfg = dataclasses.replace(s3_conn, endpoint_url=f"https://127.0.0.1:{port}")
    try:
        with pytest.raises(StageError) as err:
            async with S3Stage(cfg, max_attempts=1) as s3:
                await s3.put_bytes("k", b"x")
    finally:
        listener.close()
    assert "certificate" in describe(err.value).lower()
    assert "completed" not in handshakes
