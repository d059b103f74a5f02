"""Statements whose answer may never come: every wait for one is watched.

A server that accepts and never answers (stalled, or a connection whose answers are lost on the way)
made a load wait for ever: asyncpg has no read timeout by default, and a fixed one would fail a COPY or
a MERGE that legitimately runs for an hour. So the wait is not limited; it is *checked*: after
``read_timeout`` seconds without an answer, and again every ``read_timeout``, a new connection asks the
server (``Probe``) whether it is still working on the statement. PostgreSQL says whether the session is
still running one (``pg_stat_activity``: a long COPY is 'active', a statement whose answer was lost is
not); Redshift, only that it answers. When the check fails, the connection is given up (terminated: its
open transaction dies with it, so nothing it did commits) and the statement fails with ``AnswerLost``,
retryable, naming the server and the setting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from src.warehouse.errors import AnswerLost

# None: the server is working on the statement (keep waiting); else why it is not, in words.
Probe = Callable[[], Awaitable[str | None]]


class Watched:
    """An ``Executor`` (and whatever else its connection offers) whose statements are watched."""

    def __init__(
        self,
        ex: Any,
        *,
        every: float,
        probe: Probe,
        explain: Callable[[str], str],
    ) -> None:
        self._ex = ex
        self._every = every
        self._probe = probe
        self._explain = explain
        self._why: str | None = None  # why the session was given up

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ex, name)

    async def execute(self, query: str, *args: Any) -> str:
        result: str = await self._watch(self._ex.execute, query, *args)
        return result

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        result: list[Any] = await self._watch(self._ex.fetch, query, *args)
        return result

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._watch(self._ex.fetchval, query, *args)

    async def copy_to_table(self, table_name: str, **kw: Any) -> Any:
        return await self._watch(self._ex.copy_to_table, table_name, **kw)

    async def _watch(self, call: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
        """``call``, with a check started if it has not answered after ``every`` seconds. A timer, not a
        task per statement (a task group costs ~0.3 ms, more than many statements); the check, when one
        started, has ended before this returns."""
        loop = asyncio.get_running_loop()  # asyncpg runs on asyncio only
        checks: list[asyncio.Task[None]] = []
        timer = loop.call_later(self._every, lambda: checks.append(loop.create_task(self._check())))
        try:
            return await call(*args, **kw)
        except Exception as exc:
            if self._why is not None:
                short = f"no answer for {self._every:g} s, {self._why}"
                raise AnswerLost(self._explain(self._why), why=short) from exc
            raise
        finally:
            timer.cancel()
            for check in checks:
                check.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.gather(check, return_exceptions=True)

    async def _check(self) -> None:
        """Ask the server, every ``every`` seconds while the statement waits; give the session up when the
        answer says it will not answer."""
        while True:
            found = await self._probe()
            if found is not None:
                self._why = found
                self._ex.terminate()  # the statement's wait ends at once; its transaction dies
                return
            await anyio.sleep(self._every)
