"""Receive streams between a producer and its consumers: one that only reports a clean end when its
producer finished cleanly, and a tap that hands the items to a second consumer as well."""

from __future__ import annotations

from typing import Generic, TypeVar

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from src.common.errors import StageError

T = TypeVar("T")


class ProducerFailed(StageError):
    """The consumer's view of a failed producer; the producer's own error is the one to report."""

    echo = True


class Completion:
    """Set by the producer's wrapper: ``ok`` once it returned normally, ``failed`` otherwise."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.ok = False

    def succeed(self) -> None:
        self.ok = True
        self.done.set()

    def fail(self) -> None:
        self.done.set()


class CheckedReceive(ObjectReceiveStream[T], Generic[T]):
    """Wraps a memory receive stream. A producer that fails still closes its send side; without this
    check the consumer would take that for the end of the data and publish a partial result."""

    def __init__(self, inner: ObjectReceiveStream[T], completion: Completion, what: str) -> None:
        self._inner = inner
        self._completion = completion
        self._what = what

    async def receive(self) -> T:
        try:
            return await self._inner.receive()
        except anyio.EndOfStream:
            await self._completion.done.wait()
            if not self._completion.ok:
                raise ProducerFailed(f"{self._what} did not finish; nothing was published") from None
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


class Tap(ObjectReceiveStream[T], Generic[T]):
    """Wraps a receive stream and hands every item it yields to ``branch`` as well, for as long as the
    branch takes them (a branch whose consumer has gone is dropped; the main consumer goes on). Only a
    clean end closes the branch, so its consumer sees the end of the data only when the producer
    finished; on a failure the branch stays open, and the task group's cancellation ends its consumer."""

    def __init__(self, inner: ObjectReceiveStream[T], branch: ObjectSendStream[T]) -> None:
        self._inner = inner
        self._branch: ObjectSendStream[T] | None = branch

    async def receive(self) -> T:
        try:
            item = await self._inner.receive()
        except anyio.EndOfStream:
            if self._branch is not None:
                await self._branch.aclose()
            raise
        if self._branch is not None:
            try:
                await self._branch.send(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._branch = None
        return item

    async def aclose(self) -> None:
        await self._inner.aclose()
