"""Receive streams between a producer and its consumers: one that only reports a clean end when its
producer finished cleanly, a tap that hands the items to a second consumer as well, and a check of each
record batch's row sizes against the warehouse's limit."""

from __future__ import annotations

from typing import Generic, TypeVar

import anyio
import pyarrow as pa
import pyarrow.compute as pc
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from src.common.errors import StageError, WarehouseError

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


class RowBytesLimit(ObjectReceiveStream[pa.RecordBatch]):
    """Wraps the stream of a table's record batches: a row whose values hold more than ``limit`` bytes
    (Redshift's COPY refuses an input row over 4 MB, saying neither row nor column) fails the table as it
    is read, naming the columns that hold its bytes, before anything is staged. Counted as the bytes of
    its text and binary values, a lower bound of the row's size: a row found over the limit is over it."""

    def __init__(self, inner: ObjectReceiveStream[pa.RecordBatch], limit: int, table: str) -> None:
        self._inner = inner
        self._limit = limit
        self._table = table

    async def receive(self) -> pa.RecordBatch:
        batch = await self._inner.receive()
        check_row_bytes(batch, self._limit, self._table)
        return batch

    async def aclose(self) -> None:
        await self._inner.aclose()


def check_row_bytes(batch: pa.RecordBatch, limit: int, table: str) -> None:
    """Raise ``WarehouseError`` when a row's text and binary values hold more than ``limit`` bytes."""
    sized = [
        (f.name, pc.fill_null(pc.binary_length(batch.column(i)), 0))
        for i, f in enumerate(batch.schema)
        if pa.types.is_string(f.type) or pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
    ]
    if not sized or batch.num_rows == 0:
        return
    total = sized[0][1]
    for _, lengths in sized[1:]:
        total = pc.add(total, lengths)
    if (pc.max(total).as_py() or 0) <= limit:
        return
    row = pc.index(total, pc.max(total)).as_py()
    held = sorted(((name, lengths[row].as_py()) for name, lengths in sized), key=lambda held: -held[1])
    shown = ", ".join(f"{name!r} {size:,} bytes" for name, size in held[:3] if size)  # biggest, in order
    raise WarehouseError(
        f"a row of {table} holds {total[row].as_py():,} bytes, over the target's limit of {limit:,} bytes "
        f"per row (Redshift COPY): {shown} — leave such columns out with exclude_columns in the table's "
        "config, or shorten the values at the source",
        table=table,
        column=held[0][0],
        retryable=False,
    )
