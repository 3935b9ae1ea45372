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
        # Each stream, and since when it has been quiet as far as the ticks saw: a
        # stream only flags that it sent (`Watch.sent`), the clock is read here, once a
        # tick, not once per frame.
        self._quiet_since: dict[Watch, float] = {}

    def add(self, watch: Watch, now: float | None = None) -> None:
        self._quiet_since[watch] = time.monotonic() if now is None else now

    def discard(self, watch: Watch) -> None:
        self._quiet_since.pop(watch, None)

    async def tick(self, now: float) -> int:
        """Ping the streams quiet for `every_s` at `now` (time.monotonic); how many.
        A stream that sent since the last tick counts as quiet from `now`. Streams that
        one event reached together fall quiet together: their pings go out in slices,
        with the event loop running in between (as the hub's fan-out)."""
        quiet = self._quiet_since
        due = []
        for watch, since in quiet.items():
            if watch.sent:
                watch.sent = False
                quiet[watch] = now  # a new value, not a new key: the loop goes on
            elif now - since >= self.every_s:
                due.append(watch)
        pinged = 0
        async for some in in_slices(due):
            for watch in some:
                if watch in quiet and not watch.pending():  # still open and quiet
                    watch.say(PING)
                    watch.sent = False
                    quiet[watch] = now
                    pinged += 1
        return pinged

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            await self.tick(time.monotonic())
