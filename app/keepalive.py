"""SSE keepalives: one task for every stream of the api process.

A comment line every `every_s` seconds keeps proxies and load balancers from closing a
quiet stream. sse-starlette would run a ping task per connection (about 2 KB each, and
a wake-up per stream); here the streams are spread over one-second buckets, so that the
pings of 10,000 streams go out as 1/N of them each second rather than all at once.
"""

from __future__ import annotations

import asyncio
import itertools

from .watch import Frame, Watch

PING = Frame(task_id="", seq=0, type="ping", text="", event={}, _sse=b": ping\n\n")


class Keepalive:
    def __init__(self, every_s: int) -> None:
        self.every_s = max(1, every_s)
        self._buckets: list[set[Watch]] = [set() for _ in range(self.every_s)]
        self._next = itertools.count()
        self._bucket_of: dict[Watch, set[Watch]] = {}

    def add(self, watch: Watch) -> None:
        bucket = self._buckets[next(self._next) % self.every_s]
        bucket.add(watch)
        self._bucket_of[watch] = bucket

    def discard(self, watch: Watch) -> None:
        bucket = self._bucket_of.pop(watch, None)
        if bucket is not None:
            bucket.discard(watch)

    def tick(self, n: int) -> int:
        """Ping the idle streams of bucket `n`; how many got a ping."""
        pinged = 0
        for watch in self._buckets[n % self.every_s]:
            if not watch.pending():  # a stream with frames to send is not quiet
                watch.say(PING)
                pinged += 1
        return pinged

    async def run(self) -> None:
        for n in itertools.count():
            await asyncio.sleep(1.0)
            self.tick(n)
