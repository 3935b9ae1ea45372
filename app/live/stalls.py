"""Stalled sends: one check per second for every stream, instead of a timer per send.

A send to a client that stopped reading blocks once its transport's buffer is full.
`Stalls.send` notes when each send began; `Stalls.run` cancels a send that has been
blocked for longer than the limit, and the sender gets a `TimeoutError`, as it would
from `asyncio.timeout`. Arming a timer (or an anyio cancel scope) for every message
cost a fifth of the per-delivery CPU (docs/benchmarks.md, F1), and the common send
never blocks at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from .counters import Counts

SEND_TIMEOUT_S = 10.0
CHECK_EVERY_S = 1.0


class Stalls:
    """The sends under way in this api process, and the loop that ends stalled ones."""

    def __init__(self, limit_s: float = SEND_TIMEOUT_S) -> None:
        self.limit_s = limit_s
        self._sending: dict[asyncio.Task[object], float] = {}  # task -> when its send began
        self._stalled: set[asyncio.Task[object]] = set()

    async def send(self, awaitable: Awaitable[None]) -> None:
        """Await one send; `TimeoutError` if it stays blocked past the limit."""
        task = asyncio.current_task()
        assert task is not None
        self._sending[task] = time.monotonic()
        try:
            await awaitable
        except asyncio.CancelledError:
            if task in self._stalled and task.uncancel() == 0:
                Counts.stalled += 1
                raise TimeoutError("send stalled") from None
            raise  # cancelled for another reason (the connection closes)
        finally:
            del self._sending[task]
            if self._stalled:
                self._stalled.discard(task)

    def under_way(self) -> int:
        return len(self._sending)

    def check(self, now: float) -> int:
        """Cancel the sends blocked for longer than the limit; how many were."""
        late = [t for t, since in self._sending.items() if now - since > self.limit_s and t not in self._stalled]
        for task in late:
            self._stalled.add(task)
            task.cancel()
        return len(late)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            self.check(time.monotonic())
