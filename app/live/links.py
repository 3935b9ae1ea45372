"""A pub/sub link: one connection to one Redis node, carrying the hub's channels that
live there.

On one Redis the hub has one link (SUBSCRIBE, PUBLISH). On a Redis Cluster it has one
per shard node that owns a watched channel's slot, with sharded pub/sub (SSUBSCRIBE,
SPUBLISH, Redis >= 7): a channel's messages stay on its shard, so no node forwards
every message to every other. redis-py's own cluster pub/sub reader polls the nodes one
after the other and does not move channels when a node fails over; a link per node,
each read by its own task, and the hub's topology refresh do both.

A link reconnects by itself (with backoff) and tells the hub when it is up (the hub
subscribes its channels and replays their logs) and down (the hub holds their live
frames and, on a cluster, moves channels whose slot changed node).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0  # silence after which a link pings its node; no pong in as long = dead
RECONNECT_MAX_DELAY_S = 1.0


class Listener(Protocol):
    """What a link tells the hub."""

    async def link_up(self, link: Link) -> None: ...

    def link_down(self, link: Link, exc: BaseException | None) -> None: ...

    async def published(self, link: Link, name: str, data: Any) -> None: ...

    def confirmed(self, link: Link, name: str, future: asyncio.Future[None] | None) -> None: ...

    def dropped(self, link: Link, name: str) -> None: ...


class Link:
    """One pub/sub connection to the node at `url`."""

    def __init__(self, listener: Listener, node: str, url: str, sharded: bool) -> None:
        self.node = node
        self.url = url
        self.sharded = sharded
        self._listener = listener
        self._pubsub: Any = None
        # Per channel, the futures of the subscribe (or None: unsubscribe) commands sent
        # and not yet confirmed, in order: a confirmation answers the oldest.
        self._acks: dict[str, deque[asyncio.Future[None] | None]] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.failures = 0  # consecutive failed connects

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"livepix-hub-{self.node}")

    async def stop(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def subscribe(self, name: str, ready: asyncio.Future[None], still: Callable[[], bool]) -> None:
        """Subscribe to `name`; `ready` resolves once the node confirms. `still` tells,
        once the command's turn comes, whether it is still wanted."""
        await self._command(name, ready, still)

    async def unsubscribe(self, name: str, still: Callable[[], bool]) -> None:
        await self._command(name, None, still)

    async def _command(self, name: str, ready: asyncio.Future[None] | None, still: Callable[[], bool]) -> None:
        # The lock keeps commands, and so their confirmations, in the order of `_acks`.
        async with self._lock:
            pubsub = self._pubsub
            if pubsub is None or not still():
                return  # not connected (the reconnect subscribes), or superseded
            self._acks.setdefault(name, deque()).append(ready)
            try:
                if ready is not None:
                    await (pubsub.ssubscribe(name) if self.sharded else pubsub.subscribe(name))
                else:
                    await (pubsub.sunsubscribe(name) if self.sharded else pubsub.unsubscribe(name))
            except (RedisError, OSError) as exc:
                log.warning("%s of %s on %s failed: %s", "subscribe" if ready else "unsubscribe", name, self.node, exc)

    async def _supervise(self) -> None:
        delay = 0.05
        while not self._closing:
            failure: BaseException | None = None
            try:
                await self._listen()
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("hub lost %s (%s); reconnecting", self.node, exc)
                failure = exc
            except Exception as exc:
                log.exception("hub listener of %s crashed; restarting it", self.node)
                failure = exc
            self.reconnects += 1
            self._listener.link_down(self, failure)
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX_DELAY_S, delay * 2)

    async def _listen(self) -> None:
        client = aioredis.Redis.from_url(
            self.url,
            socket_keepalive=True,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 0),  # the link reconnects itself, and the hub replays
        )
        pubsub = client.pubsub()
        try:
            try:
                await pubsub.connect()  # type: ignore[no-untyped-call]
            except (RedisError, OSError):
                self.failures += 1
                raise
            self.failures = 0
            self._acks.clear()
            self._pubsub = pubsub
            await self._listener.link_up(self)
            self.connected.set()
            pinged = False
            while True:
                message = await pubsub.get_message(timeout=HEARTBEAT_S)
                if message is None:
                    if pinged:
                        raise ConnectionError(f"{self.node} did not answer the hub's ping")
                    await pubsub.ping()
                    pinged = True
                    continue
                pinged = False
                await self._handle(message)
        finally:
            self.connected.clear()
            self._pubsub = None
            for acks in self._acks.values():
                for future in acks:
                    if future is not None and not future.done():
                        future.set_result(None)  # followers go on; the replay covers them
            self._acks.clear()
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await client.aclose()
            except (RedisError, OSError):
                pass

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        raw = message.get("channel")
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        if kind in ("message", "smessage"):
            await self._listener.published(self, name, message["data"])
        elif kind in ("subscribe", "ssubscribe", "unsubscribe", "sunsubscribe"):
            acks = self._acks.get(name)
            if acks:
                future = acks.popleft()
                if not acks:
                    del self._acks[name]
                if kind in ("subscribe", "ssubscribe"):
                    self._listener.confirmed(self, name, future)
            elif kind == "sunsubscribe":
                # Not asked for: the node let the channel go (its slot moved, or the node
                # is a replica now). The hub finds the channel's new node.
                self._listener.dropped(self, name)


