"""Stalled sends: one check per second for every WebSocket, instead of a timer per send.

A send to a client that stopped reading blocks once its transport's buffer is full. Each
sender marks when its current send began; `Stalls.run` cancels a send that has been
blocked for longer than the limit, and the sender sees a `TimeoutError`, as it would
with `asyncio.timeout`. Arming `asyncio.timeout` for every message cost a quarter of the
per-delivery CPU (docs/benchmarks.md, F1); the common send never blocks at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Self

from .watch import Pressure

SEND_TIMEOUT_S = 10.0
CHECK_EVERY_S = 1.0


class Sender:
    """One connection's sending task, as the stall check sees it. Use it as a context
    manager, in the task that sends."""

    __slots__ = ("_clock", "_stalled", "_stalls", "_task", "since")

    def __init__(self, stalls: Stalls) -> None:
        self._clock = asyncio.get_running_loop().time
        self._stalls = stalls
        self._task: asyncio.Task[object] | None = None
        self._stalled = False
        self.since = 0.0  # loop time the current send began; 0 while none is under way

    def __enter__(self) -> Self:
        self._task = asyncio.current_task()
        self._stalls.senders.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stalls.senders.discard(self)
        self._task = None

    async def send(self, awaitable: Awaitable[None]) -> None:
        """Await one send; `TimeoutError` if it stays blocked past the limit."""
        self.since = self._clock()
        try:
            await awaitable
        except asyncio.CancelledError:
            if self._stalled and self._task is not None and self._task.uncancel() == 0:
                Pressure.stalled += 1
                raise TimeoutError("send stalled") from None
            raise
        finally:
            self.since = 0.0

    def stall(self) -> None:
        if self._task is not None and not self._stalled:
            self._stalled = True
            self._task.cancel()


class Stalls:
    """The senders of this api process, and the loop that lets go of stalled ones."""

    def __init__(self, limit_s: float = SEND_TIMEOUT_S) -> None:
        self.limit_s = limit_s
        self.senders: set[Sender] = set()

    def sender(self) -> Sender:
        return Sender(self)

    def check(self, now: float) -> int:
        """Cancel the sends blocked for longer than the limit; how many were."""
        late = [s for s in self.senders if s.since and now - s.since > self.limit_s]
        for sender in late:
            sender.stall()
        return len(late)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            self.check(loop.time())
