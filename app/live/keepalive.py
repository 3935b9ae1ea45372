"""SSE keepalives: one task for every stream of the api process.

A comment line keeps proxies and load balancers from closing a quiet stream: each
stream that has sent nothing for `every_s` seconds gets one, so a busy stream gets
none and a quiet one one every `every_s` seconds (give or take the one-second tick).
sse-starlette would run a ping task per connection (about 2 KB each, and a wake-up
per stream, busy or not); here one check a second looks at every stream, and the
pings of many streams spread out as their last sends do. A ping goes out like a live
event: straight from here while the stream's pump waits (app/live/outbox.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .frame import Frame
from .outbox import Outbox
from .slices import in_slices

PING = Frame(task_id="", seq=0, type="ping", text="", event=None, _sse=b": ping\n\n")
TICK_S = 1.0


class Keepalive:
    def __init__(self, every_s: int) -> None:
        self.every_s = max(1, every_s)
        # Each stream, and since when it has been quiet as far as the ticks saw: a
        # stream only flags that it sent (`Outbox.sent`), the clock is read here, once a
        # tick, not once per frame.
        self._quiet_since: dict[Outbox, float] = {}

    def add(self, outbox: Outbox, now: float | None = None) -> None:
        self._quiet_since[outbox] = time.monotonic() if now is None else now

    def discard(self, outbox: Outbox) -> None:
        self._quiet_since.pop(outbox, None)

    @contextmanager
    def covering(self, outbox: Outbox) -> Iterator[None]:
        """Keep `outbox`'s stream alive for as long as the block runs."""
        self.add(outbox)
        try:
            yield
        finally:
            self.discard(outbox)

    async def tick(self, now: float) -> int:
        """Ping the streams quiet for `every_s` at `now` (time.monotonic); how many.
        A stream that sent since the last tick counts as quiet from `now`. Streams that
        one event reached together fall quiet together: their pings go out in slices,
        with the event loop running in between (as the hub's fan-out)."""
        quiet = self._quiet_since
        due = []
        for outbox, since in quiet.items():
            if outbox.sent:
                outbox.sent = False
                quiet[outbox] = now  # a new value, not a new key: the loop goes on
            elif now - since >= self.every_s:
                due.append(outbox)
        pinged = 0
        async for some in in_slices(due):
            for outbox in some:
                if outbox in quiet and not outbox.pending():  # still open and quiet
                    outbox.say(PING)
                    outbox.sent = False
                    quiet[outbox] = now
                    pinged += 1
        return pinged

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            await self.tick(time.monotonic())
