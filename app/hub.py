"""The hub: ONE Redis pub/sub connection per api process, fanned out to every watch.

A channel is subscribed when its first local watch arrives and unsubscribed when the
last one leaves. The listener decodes each message once and offers the frame to each
watch, which never waits on its client; a big channel's fan-out lets the event loop
run between slices, and the listener reads the next message only after it. Pub/sub is
at-most-once, so after every reconnect the hub re-reads each watched task's log from
the lowest seq its watches have and replays it (watches drop what they already have):
a Redis blip leaves no silent gap.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from livepix.wire import channel

from .slices import SLICE, in_slices
from .watch import Frame, Watch

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0  # silence after which the hub pings Redis; no pong in as long = dead
SUBSCRIBE_TIMEOUT_S = 3.0
RECONNECT_MAX_DELAY_S = 1.0

ReadLog = Callable[[str, int], Awaitable[list[str]]]


@dataclass(eq=False)
class _Channel:
    task_id: str
    watches: set[Watch] = field(default_factory=set)
    ready: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    held: list[Frame] | None = None  # live frames held while a reconnect replay reads the log


class Hub:
    """Fans task events out from Redis to local watches."""

    def __init__(self, redis_url: str, read_log: ReadLog) -> None:
        self._url = redis_url
        self._read_log = read_log
        self._channels: dict[str, _Channel] = {}
        self._acks: dict[str, deque[asyncio.Future[None] | None]] = {}
        self._pubsub: aioredis.client.PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._lock = asyncio.Lock()
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.messages = 0
        self.deliveries = 0

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="livepix-hub")

    async def stop(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    @property
    def watched_tasks(self) -> int:
        return len(self._channels)

    @property
    def watch_count(self) -> int:
        return sum(len(c.watches) for c in self._channels.values())

    # --- following tasks ---------------------------------------------------------

    async def follow(self, watch: Watch, task_id: str, since: int) -> None:
        """Make `watch` receive `task_id`'s events after `since`: history, then live.

        Raises RedisError if the history cannot be read (the caller ends the stream,
        and the client resumes from its last seq).
        """
        name = channel(task_id)
        ch = self._channels.get(name)
        new = ch is None
        if ch is None:
            ch = self._channels[name] = _Channel(task_id)
        # Registered before any await: a follower cancelled (client gone) or failing
        # half-way is unfollowed below, and leaves no watch or channel behind.
        ch.watches.add(watch)
        watch.begin(task_id, since)
        try:
            if new:
                await self._send("subscribe", name, ch)
            try:
                async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                    await asyncio.shield(ch.ready)
            except TimeoutError:
                log.warning("subscribe to %s not confirmed yet; the reconnect replay will cover it", task_id)
            history = [Frame.parse(text) for text in await self._read_log(task_id, since)]
        except BaseException:
            self.unfollow(watch, task_id)
            raise
        watch.end_sync(task_id, history)

    def unfollow(self, watch: Watch, task_id: str) -> None:
        watch.stop(task_id)
        name = channel(task_id)
        ch = self._channels.get(name)
        if ch is None:
            return
        ch.watches.discard(watch)
        if not ch.watches:
            del self._channels[name]
            asyncio.get_running_loop().create_task(self._send("unsubscribe", name, None))

    def unfollow_all(self, watch: Watch) -> None:
        for task_id in list(watch.follows):
            self.unfollow(watch, task_id)

    async def _send(self, command: str, name: str, ch: _Channel | None) -> None:
        # The lock keeps commands, and so their confirmations, in the order of `_acks`.
        async with self._lock:
            pubsub = self._pubsub
            if pubsub is None:
                return  # not connected: the reconnect subscribes every live channel
            current = self._channels.get(name)
            if (command == "subscribe" and current is not ch) or (
                command == "unsubscribe" and current is not None
            ):
                return  # superseded while waiting for the lock
            self._acks.setdefault(name, deque()).append(ch.ready if ch else None)
            try:
                if command == "subscribe":
                    await pubsub.subscribe(name)
                else:
                    await pubsub.unsubscribe(name)
            except (RedisError, OSError) as exc:
                log.warning("%s %s failed: %s", command, name, exc)

    # --- the listener ------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = 0.05
        while not self._closing:
            try:
                await self._listen()
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("hub lost Redis (%s); reconnecting", exc)
            except Exception:
                log.exception("hub listener crashed; restarting it")
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX_DELAY_S, delay * 2)

    async def _listen(self) -> None:
        client = aioredis.Redis.from_url(
            self._url,
            socket_keepalive=True,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 0),  # we reconnect ourselves, and then replay
        )
        pubsub = client.pubsub()
        try:
            await pubsub.connect()  # type: ignore[no-untyped-call]
            self._acks.clear()
            self._pubsub = pubsub
            for name, ch in self._channels.items():
                if ch.ready.done():
                    ch.ready = asyncio.get_running_loop().create_future()
                ch.held = []
                await self._send("subscribe", name, ch)
            self.connected.set()
            log.info("hub connected, %d channel(s)", len(self._channels))
            pinged = False
            while True:
                message = await pubsub.get_message(timeout=HEARTBEAT_S)
                if message is None:
                    if pinged:
                        raise ConnectionError("Redis did not answer the hub's ping")
                    await pubsub.ping()
                    pinged = True
                    continue
                pinged = False
                await self._handle(message)
        finally:
            self.connected.clear()
            self._pubsub = None
            for ch in self._channels.values():
                if not ch.ready.done():
                    ch.ready.set_result(None)  # followers go on; the replay covers them
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await client.aclose()
            except (RedisError, OSError):
                pass

    async def _handle(self, message: dict[str, object]) -> None:
        kind = message["type"]
        raw_name = message.get("channel")
        name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
        if kind == "message":
            ch = self._channels.get(name)
            if ch is None:
                return
            data = message["data"]
            frame = Frame.parse(data.decode() if isinstance(data, bytes) else str(data))
            self.messages += 1
            if ch.held is not None:
                ch.held.append(frame)
            else:
                await self._fan_out(ch, frame)
        elif kind in ("subscribe", "unsubscribe"):
            acks = self._acks.get(name)
            future = acks.popleft() if acks else None
            if kind == "subscribe" and future is not None and not future.done():
                future.set_result(None)
                ch = self._channels.get(name)
                if ch is not None and ch.held is not None:
                    asyncio.get_running_loop().create_task(self._replay(name, ch))

    async def _fan_out(self, ch: _Channel, frame: Frame) -> None:
        """Offer `frame` to every watch of `ch`. A big channel's fan-out lets the event
        loop run between slices, so that one event to thousands of watchers does not
        hold up every other request for the whole of it. The listener awaits the fan-out
        before it reads the next message: frames still reach each watch in order. A watch
        that leaves meanwhile ignores the frame; one that joins reads it from the log."""
        watches = ch.watches
        self.deliveries += len(watches)
        if len(watches) <= SLICE:
            for watch in watches:
                watch.offer(frame)
            return
        async for some in in_slices(list(watches)):
            for watch in some:
                watch.offer(frame)

    async def _replay(self, name: str, ch: _Channel) -> None:
        """After a reconnect: re-read the log from the lowest seq any watch has."""
        held = ch.held  # this replay's: another reconnect meanwhile holds in a new list
        since = min((w.high(ch.task_id) for w in ch.watches), default=0)
        try:
            texts = await self._read_log(ch.task_id, since)
        except RedisError as exc:
            # Without the log the held frames would leave a gap: close these watches
            # instead, and their clients resume from their last seq.
            log.warning("replay of %s failed (%s); closing its watches", ch.task_id, exc)
            if ch.held is held:
                ch.held = None
            for watch in list(ch.watches):
                watch.fail()
            return
        if held is None or ch.held is not held or self._channels.get(name) is not ch:
            return  # superseded by a later replay, or nobody watches any more
        for frame in [Frame.parse(t) for t in texts]:
            await self._fan_out(ch, frame)
        # Frames arriving while the fan-outs above yield are held too, in order; live
        # fan-out resumes only once none is left.
        while held:
            await self._fan_out(ch, held.pop(0))
        if ch.held is held:
            ch.held = None
