"""SSE keepalives: one task for every stream of the api process.

A comment line keeps proxies and load balancers from closing a quiet stream: each
stream that has sent nothing for `every_s` seconds gets one, so a busy stream gets
none and a quiet one one every `every_s` seconds (give or take the one-second tick).
sse-starlette would run a ping task per connection (about 2 KB each, and a wake-up
per stream, busy or not); here one check a second looks at every stream, and the
pings of many streams spread out as their last sends do. A ping goes out like a live
event: straight from here while the stream's sender waits (app/watch.py).
"""

from __future__ import annotations

import asyncio
import time

from .slices import in_slices
from .watch import Frame, Watch

PING = Frame(task_id="", seq=0, type="ping", text="", event={}, _sse=b": ping\n\n")
TICK_S = 1.0


class Keepalive:
    def __init__(self, every_s: int) -> None:
        self.every_s = max(1, every_s)
        self._watches: set[Watch] = set()

    def add(self, watch: Watch) -> None:
        self._watches.add(watch)

    def discard(self, watch: Watch) -> None:
        self._watches.discard(watch)

    async def tick(self, now: float) -> int:
        """Ping the streams quiet for `every_s` at `now` (time.monotonic); how many.
        Streams that one event reached together fall quiet together: their pings go
        out in slices, with the event loop running in between (as the hub's fan-out)."""
        quiet_since = now - self.every_s
        due = [w for w in self._watches if w.sent_at <= quiet_since]
        pinged = 0
        async for some in in_slices(due):
            for watch in some:
                if watch in self._watches and not watch.pending():  # still open and quiet
                    watch.say(PING)
                    pinged += 1
        return pinged

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            await self.tick(time.monotonic())
