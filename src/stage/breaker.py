"""The S3 endpoint's circuit breaker: once the endpoint cannot be reached, requests stop going out.

Each ``S3Stage`` owns one, so each process of a run has its own. A request whose connection could not
be opened (``connect_failure``: refused, DNS lookup failed, connect timeout; not an HTTP error status,
not a read timeout, not a connection dropped mid-request: those reached S3) trips it once that
request's own retries are spent (``Breaker.retry_hook``), which are few: a connection refused (or
another immediate refusal: no route to the host, network unreachable) is retried 3 times within
1.75 s, not botocore's 4 times with backoff of up to 15 s in all, since what refuses a connection now
(nothing listens on that port) seldom listens a second later, and a blip that long is the probe's to
ride out; a connect timeout is retried once, since within its 10 s the kernel already resent the SYN 3
times. A DNS failure keeps botocore's standard retries: a resolver's blip (a busy cluster DNS) passes
in seconds, while a name that does not resolve at all is a configuration error found at the run's
start, once. Error statuses (throttling, 5xx) keep botocore's retries untouched. A request sent and not
answered within the connection's ``read_timeout`` is tried once more, not ``max_attempts`` times: an
endpoint that holds connections without answering would hold each table that long again and again
(it does not trip the breaker: that endpoint can be reached).

From the trip on, no request goes out unless it is the probe, one attempt without retries:

- for ``COOL_DOWN`` seconds after the trip, requests wait; then the first goes out alone as the probe
  and the others wait for its outcome. If it gets an answer they all go on: a blip of a few seconds
  costs a wait, not a failed table. If it does not, they fail;
- once a probe has failed, the endpoint is down: requests fail at once, and one every ``COOL_DOWN``
  seconds goes out as the probe, so a long run recovers when the endpoint comes back.

A request cut by the outage itself (its connection dropped, then refused on retry) rides it out the same
way (``rides_out``): it waits for the probe and, if the probe is answered, goes out once more, so a blip
costs the tables uploading through it a wait too. Only where the endpoint has answered this process
before: one that never did fails the run's start in seconds, as before. Safe for every request: botocore
already resends them after a dropped connection (a Complete that had landed then says NoSuchUpload,
which the multipart upload checks with a HEAD).

Only a probe closes the breaker, on any answer (an error status too): a request sent before the trip
proves nothing about the endpoint now. A run being stopped (SIGTERM) has its cleanup to end within the
grace period (``hurry``): then a connection that cannot be opened is not retried and no request waits
for a probe.
"""

from __future__ import annotations

import math
import os
import random
import socket
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp
import anyio
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

COOL_DOWN: Final = 5.0  # seconds from a failure to the next probe
CONNECT_TIMEOUT: Final = 10  # seconds; within them the kernel resends an unanswered SYN 3 times
REFUSED_ATTEMPTS: Final = 4  # a connection refused at once: 3 retries, 0.25, 0.5, 1 s apart at most
REFUSED_BACKOFF: Final = 0.25
TIMEOUT_ATTEMPTS: Final = 2
UNANSWERED_ATTEMPTS: Final = 2  # a request sent and not answered within read_timeout: tried once more


class EndpointDown(Exception):
    """The endpoint failed a probe, or the run is being stopped while it is unreachable (``stopping``):
    the request was not sent."""

    def __init__(self, cause: str, *, stopping: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.stopping = stopping


@dataclass
class _Down:
    cause: str
    since: float  # anyio.current_time() of the trip or of the last failed probe
    tripped: float  # anyio.current_time() of the trip
    probed: bool = False  # a probe has failed since the trip: requests fail at once


class Breaker:
    """Admits requests (``admit``) and learns from their outcome (``failed``, ``answered``, ``release``);
    ``retry_hook`` decides the retries of a connection that could not be opened. ``max_attempts``: the
    client's (botocore's) attempts per request, which no retry here exceeds."""

    def __init__(self, *, max_attempts: int, cool_down: float = COOL_DOWN) -> None:
        self.cool_down = cool_down
        self._max_attempts = max_attempts
        self._down: _Down | None = None
        self._probing = False
        self._hurry = False
        self._reached = False  # some request got an answer: the endpoint worked in this process
        self._changed = anyio.Event()  # set, and replaced, when a probe ends or the run hurries

    @property
    def cause(self) -> str | None:
        """Why the endpoint is unreachable; None while it is not known to be."""
        return self._down.cause if self._down else None

    async def admit(self) -> bool:
        """Wait for the request's turn. True: it goes out as the probe (``release`` it after its outcome);
        False: the endpoint is not known to be down. ``EndpointDown`` when it failed a probe."""
        while (down := self._down) is not None:
            wait = down.since + self.cool_down - anyio.current_time()
            if not self._probing and wait <= 0:
                self._probing = True
                return True
            if down.probed or self._hurry:
                raise EndpointDown(down.cause, stopping=not down.probed)
            with anyio.move_on_after(math.inf if self._probing else wait):
                await self._changed.wait()
        return False

    def hurry(self) -> None:
        """From now on: no retry of a connection that could not be opened, no wait for a probe (those
        waiting fail now)."""
        self._hurry = True
        self._notify()

    def failed(self, cause: str, *, probe: bool) -> bool:
        """A request could not connect (after its retries). True when this trips the breaker."""
        now = anyio.current_time()
        if self._down is None:
            self._down = _Down(cause, now, now)
            return True
        if probe:
            self._down = _Down(cause, now, self._down.tripped, probed=True)
        return False

    def rides_out(self, exc: BaseException, *, probe: bool) -> bool:
        """Whether a request that failed with ``exc`` waits for the probe and goes out again: it could
        not connect, it was not the probe (a failed probe means down), the endpoint has answered in this
        process, and the run is not being stopped."""
        return not probe and self._reached and not self._hurry and connect_failure(exc) is not None

    def answered(self, *, probe: bool) -> float | None:
        """A request got an answer (any status). The probe's closes the breaker: it returns how long
        the endpoint was unreachable; otherwise None."""
        self._reached = True
        if not probe or self._down is None:
            return None
        tripped, self._down = self._down.tripped, None
        return anyio.current_time() - tripped

    def release(self, probe: bool) -> None:
        """After the outcome (or cancellation) of a request that ``admit`` made the probe."""
        if probe:
            self._probing = False
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def retry_hook(
        self, attempts: int, caught_exception: BaseException | None = None, **_: Any
    ) -> float | None:
        """botocore's ``needs-retry`` event, ahead of its standard retries (whose answer counts when this
        returns None): the retries of a connection that could not be opened, none once the endpoint is
        known unreachable (a probe is one attempt; requests in flight stop retrying). Raising the
        failure ends the request's retries."""
        if isinstance(caught_exception, ReadTimeoutError):  # S3 took it and did not answer: a stalled
            # endpoint (a proxy holding it, say) would hold the table max_attempts x read_timeout
            if attempts >= UNANSWERED_ATTEMPTS or self._hurry:
                raise caught_exception
            return None
        failure = connect_failure(caught_exception)
        if failure is None or caught_exception is None:
            return None
        limit = 1 if self._hurry else min(failure.attempts, self._max_attempts)
        if self._down is not None or attempts >= limit:
            raise caught_exception
        if failure.kind != "refused":
            return None
        return float(REFUSED_BACKOFF * 2 ** (attempts - 1) * random.uniform(0.5, 1.0))


@dataclass(frozen=True)
class ConnectFailure:
    """A request's connection could not be opened: S3 never saw the request."""

    kind: Literal["refused", "dns", "timeout"]
    cause: str

    @property
    def attempts(self) -> int:
        """Attempts a request gets when its connections fail this way (a DNS failure: botocore's)."""
        return {"refused": REFUSED_ATTEMPTS, "timeout": TIMEOUT_ATTEMPTS}.get(self.kind, 1_000)


def connect_failure(exc: BaseException | None) -> ConnectFailure | None:
    """How ``exc`` failed to open a connection to the endpoint; None when it is anything else (an HTTP
    error status, a read timeout, a connection dropped mid-request: those reached S3)."""
    if isinstance(exc, ConnectTimeoutError):
        return ConnectFailure("timeout", f"no connection within {CONNECT_TIMEOUT} s")
    if not isinstance(exc, EndpointConnectionError):
        return None
    inner = exc.kwargs.get("error")
    if isinstance(inner, aiohttp.ClientConnectorDNSError | socket.gaierror):
        lookup = inner.os_error if isinstance(inner, aiohttp.ClientConnectorDNSError) else inner
        host = f" of {inner.host}" if isinstance(inner, aiohttp.ClientConnectorError) else ""
        return ConnectFailure("dns", f"DNS lookup{host} failed: {_os_text(lookup)}")
    if isinstance(inner, aiohttp.ClientConnectorError):
        return ConnectFailure("refused", _os_text(inner.os_error))
    return None


def _os_text(exc: OSError) -> str:
    """``connection refused``, not ``[Errno 111] Connect call failed ('127.0.0.1', 9000)``."""
    if isinstance(exc.errno, int) and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    return exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
