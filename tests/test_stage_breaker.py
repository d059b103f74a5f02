"""The S3 endpoint's circuit breaker (src/stage/breaker.py) through S3Stage: a port nothing listens on,
and the moto server behind a proxy the tests cut and restore (a network fault; moto keeps its data)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import anyio
import pytest
from botocore.exceptions import ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError

from src.common.errors import StageError, describe
from src.common.secret import Secret
from src.config.models import S3Conn
from src.stage.breaker import REFUSED_ATTEMPTS, connect_failure
from src.stage.s3 import S3Stage
from tests.conftest import CutProxy, _free_port
from tests.test_stage_support import FailTimes

pytestmark = pytest.mark.anyio

COOL = 0.5  # the tests' cool-down between probes (5 s in a run)
SECRET = "breaker/Test+Secret+Value+0123456789"


class Attempts:
    """A before-send hook counting the requests that go out (each retry is one)."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, **kwargs: Any) -> None:
        self.count += 1


def counted(s3: S3Stage) -> Attempts:
    attempts = Attempts()
    s3.client.meta.events.register("before-send.s3", attempts)
    return attempts


def through(s3_conn: S3Conn, proxy: CutProxy) -> S3Conn:
    return dataclasses.replace(s3_conn, endpoint_url=proxy.url)


async def test_a_refused_endpoint_is_found_in_seconds_then_requests_stop() -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"
    cfg = S3Conn(
        name="lost",
        bucket="stage-bucket",
        endpoint_url=endpoint,
        access_key_id=Secret("AKIABREAKERTEST0001"),
        secret_access_key=Secret(SECRET),
    )
    async with S3Stage(cfg, cool_down=COOL) as s3:
        attempts = counted(s3)
        start = time.monotonic()
        with pytest.raises(StageError) as first:
            await s3.check()
        assert time.monotonic() - start < 5  # 1.75 s of backoff at most (botocore's: up to 15 s)
        assert attempts.count == REFUSED_ATTEMPTS
        with pytest.raises(StageError) as probed:  # waits for the cool-down, then goes as the probe
            await s3.put_bytes("staging/a", b"a")
        assert attempts.count == REFUSED_ATTEMPTS + 1  # a probe is one attempt
        start = time.monotonic()
        with pytest.raises(StageError) as stopped:
            await s3.get_bytes("staging/a")
        assert time.monotonic() - start < COOL and attempts.count == REFUSED_ATTEMPTS + 1
    prefix = f"S3 endpoint {endpoint} unreachable (connection refused): "
    assert str(first.value) == (
        f"{prefix}head_bucket on s3://stage-bucket failed - check connections.s3.lost.endpoint_url/region "
        "and the network, then rerun"
    )
    assert str(probed.value).startswith(f"{prefix}put_object on s3://stage-bucket/staging/a failed - ")
    assert str(stopped.value).startswith(
        f"{prefix}get_object on s3://stage-bucket/staging/a not sent, a probe failed too "
        f"(one request probes it every {COOL:g} s) - check connections.s3.lost"
    )
    for error in (first.value, probed.value, stopped.value):
        assert error.retryable and SECRET not in describe(error) and "\n" not in str(error)


async def test_a_blip_costs_a_wait_not_a_failure(
    s3_conn: S3Conn, s3_proxy: CutProxy, stage_log: pytest.LogCaptureFixture
) -> None:
    async with S3Stage(through(s3_conn, s3_proxy), cool_down=COOL) as s3:
        await s3.put_bytes("staging/a", b"a")  # the endpoint answered: a later failure is an outage
        s3_proxy.cut()
        async with anyio.create_task_group() as tg:
            tg.start_soon(s3.put_bytes, "staging/b", b"b")  # cut: it trips the breaker, then waits
            with anyio.fail_after(10):
                while s3._breaker.cause is None:  # noqa: ASYNC110 - polled from outside the breaker
                    await anyio.sleep(0.01)
            s3_proxy.restore()  # before the probe
            attempts = counted(s3)
            for _ in range(5):  # they wait for the probe too, which gets through
                tg.start_soon(s3.get_bytes, "staging/a")
        assert attempts.count == 6  # the cut request once more (the probe), and the five
        assert await s3.get_bytes("staging/b") == b"b"
        await s3.ensure_reachable()  # known reachable again: no request
        assert attempts.count == 7
    messages = [r.getMessage() for r in stage_log.records]
    assert any("reachable again after" in m for m in messages)
    assert any("staging/b was cut: it goes again once a probe is answered" in m for m in messages)


async def test_a_request_cut_by_an_outage_that_lasts_fails_after_the_probe(
    s3_conn: S3Conn, s3_proxy: CutProxy
) -> None:
    async with S3Stage(through(s3_conn, s3_proxy), cool_down=COOL) as s3:
        await s3.put_bytes("staging/a", b"a")
        s3_proxy.cut()
        attempts = counted(s3)
        with pytest.raises(StageError, match=r"unreachable \(connection refused\): put_object .* failed"):
            await s3.put_bytes("staging/b", b"b")  # its retries, then the probe: one attempt
        assert attempts.count == 4 + 1


async def test_a_listing_cut_by_a_short_outage_goes_on_where_it_was(
    s3_conn: S3Conn, s3_proxy: CutProxy, stage_log: pytest.LogCaptureFixture
) -> None:
    """A listing rides out a blip like any request (it failed at once: the run's scan of the pipeline
    and the clean-up of dead runs list), and its second page, cut, goes out again from where the first
    page ended: every key once."""
    keys = [f"staging/p/{i:05d}" for i in range(1001)]  # two pages of S3's 1000 keys
    async with S3Stage(s3_conn) as direct, anyio.create_task_group() as tg:
        limiter = anyio.CapacityLimiter(16)

        async def put(key: str) -> None:
            async with limiter:
                await direct.put_bytes(key, b"x")

        for key in keys:
            tg.start_soon(put, key)
    async with S3Stage(through(s3_conn, s3_proxy)) as s3:  # the run's cool-down: the probe after 5 s
        await s3.check()  # the endpoint answered in this process: a later failure is an outage
        s3_proxy.hold_answer_to(b"continuation-token=")
        async with anyio.create_task_group() as tg:
            listed: list[tuple[str, Any]] = []

            async def listing() -> None:
                listed.extend(await s3.list_objects("staging/p/"))

            tg.start_soon(listing)
            with anyio.fail_after(30):
                while not s3_proxy.triggered.is_set():  # noqa: ASYNC110 - set by the proxy's thread
                    await anyio.sleep(0.01)
            s3_proxy.cut()  # a 2 s outage, longer than the 1.75 s of a refused connection's retries
            await anyio.sleep(2)
            s3_proxy.restore()
    assert [key for key, _ in listed] == keys
    messages = [r.getMessage() for r in stage_log.records]
    assert any("list_objects_v2 of s3://" in m and "was cut: it goes again" in m for m in messages)


async def test_a_listing_of_an_endpoint_never_reached_fails_fast(s3_conn: S3Conn, s3_proxy: CutProxy) -> None:
    """Nothing to ride out where the endpoint never answered in this process: a wrong endpoint_url."""
    s3_proxy.cut()
    async with S3Stage(through(s3_conn, s3_proxy)) as s3:
        start = time.monotonic()
        refused = r"unreachable \(connection refused\): list_objects_v2 .* failed"
        with pytest.raises(StageError, match=refused):
            await s3.list_objects("staging/p/")
        assert time.monotonic() - start < 3


async def test_a_dead_endpoint_is_probed_until_it_answers(s3_conn: S3Conn, s3_proxy: CutProxy) -> None:
    async with S3Stage(through(s3_conn, s3_proxy), cool_down=COOL) as s3:
        await s3.check()
        s3_proxy.cut()
        with pytest.raises(StageError, match="unreachable"):
            await s3.check()
        with pytest.raises(StageError, match=r"unreachable \(connection refused\): head_bucket .* failed"):
            await s3.ensure_reachable()  # the probe, after the cool-down
        with pytest.raises(StageError, match="not sent"):
            await s3.ensure_reachable()  # at once
        s3_proxy.restore()
        with pytest.raises(StageError, match="not sent"):
            await s3.put_bytes("staging/a", b"a")  # the endpoint is back, but no probe has seen it yet
        await anyio.sleep(COOL)
        await s3.put_bytes("staging/a", b"a")  # the probe
        assert await s3.get_bytes("staging/a") == b"a"


async def test_an_answer_never_trips_it(s3_conn: S3Conn) -> None:
    """An error status reached S3: a missing bucket, throttling."""
    async with S3Stage(dataclasses.replace(s3_conn, bucket="no-such-bucket-s3shift"), max_attempts=1) as s3:
        with pytest.raises(StageError, match="404"):
            await s3.check()
        s3.client.meta.events.register("before-send.s3.PutObject", FailTimes(503, "SlowDown", None))
        with pytest.raises(StageError, match="SlowDown"):
            await s3.put_bytes("staging/a", b"a")
        attempts = counted(s3)
        await s3.ensure_reachable()
        assert attempts.count == 0


async def test_a_dns_failure_keeps_botocores_retries() -> None:
    """A resolver's blip passes in seconds: a name that does not resolve gets every attempt."""
    cfg = S3Conn(name="dns", bucket="b", endpoint_url="http://s3shift-test.invalid:9000")
    async with S3Stage(cfg, max_attempts=2, cool_down=COOL) as s3:
        attempts = counted(s3)
        with pytest.raises(StageError, match=r"unreachable \(DNS lookup of s3shift-test.invalid failed: "):
            await s3.check()
    assert attempts.count == 2


async def test_a_run_being_stopped_neither_retries_nor_waits_for_a_probe() -> None:
    """SIGTERM: the run's cleanup must end within the grace period (``S3Stage.hurry``)."""
    cfg = S3Conn(name="lost", bucket="b", endpoint_url=f"http://127.0.0.1:{_free_port()}")
    async with S3Stage(cfg, cool_down=60) as s3:
        attempts = counted(s3)
        with pytest.raises(StageError):
            await s3.check()  # trips: the others wait a minute for the probe

        async def waiting() -> None:  # no probe went out: it says why it was not sent
            with pytest.raises(StageError, match="not sent: the run is being stopped - check "):
                await s3.put_bytes("staging/a", b"a")

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiting)
            await anyio.sleep(0.1)
            hurried = time.monotonic()
            s3.hurry()
        assert time.monotonic() - hurried < 1 and attempts.count == REFUSED_ATTEMPTS
    async with S3Stage(cfg) as s3:
        attempts = counted(s3)
        s3.hurry()
        with pytest.raises(StageError, match="connection refused"):
            await s3.check()
        assert attempts.count == 1


def test_only_a_connection_never_opened_counts() -> None:
    url = "http://127.0.0.1:9"
    failure = connect_failure(ConnectTimeoutError(endpoint_url=url))
    assert failure is not None and failure.kind == "timeout" and failure.attempts == 2
    assert connect_failure(ReadTimeoutError(endpoint_url=url)) is None  # a slow answer reached S3
    assert connect_failure(ConnectionClosedError(endpoint_url=url)) is None  # dropped mid-request
    assert connect_failure(RuntimeError("other")) is None
