"""The hub: ONE Redis pub/sub connection per api process, fanned out to every outbox.

A channel is subscribed when its first local outbox follows the task and unsubscribed
when the last one leaves. The listener decodes each message once and offers the frame
to each outbox, which never waits on its client; a big channel's fan-out lets the event
loop run between slices, and the listener reads the next message only after it.
Pub/sub is at-most-once, so after every reconnect the hub re-reads each watched task's
log from the lowest seq its outboxes have and replays it (outboxes drop what they
already have): a Redis blip leaves no silent gap.

A connection follows tasks inside `async with hub.watching(outbox) as subscriptions`:
whatever way the block ends, every task it followed is unfollowed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from livepix.wire import channel

from .frame import Frame
from .outbox import Outbox
from .slices import SLICE, in_slices

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0  # silence after which the hub pings Redis; no pong in as long = dead
SUBSCRIBE_TIMEOUT_S = 3.0
RECONNECT_MAX_DELAY_S = 1.0

ReadLog = Callable[[str, int], Awaitable[list[str]]]  # (task id, since) -> events as clients get them
CompleteResult = Callable[[str, str], Awaitable[str]]  # (task id, a succeeded event) -> with its images


@dataclass(eq=False)
class _Channel:
    task_id: str
    outboxes: set[Outbox] = field(default_factory=set)
    ready: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    held: list[Frame] | None = None  # live frames held while a reconnect replay reads the log


class Hub:
    """Fans task events out from Redis to local outboxes."""

    def __init__(self, redis_url: str, read_log: ReadLog, complete_result: CompleteResult) -> None:
        self._url = redis_url
        self._read_log = read_log
        self._complete_result = complete_result
        self._channels: dict[str, _Channel] = {}
        self._acks: dict[str, deque[asyncio.Future[None] | None]] = {}
        self._pubsub: aioredis.client.PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._lock = asyncio.Lock()
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.messages = 0
        self.offered = 0

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
    def follow_count(self) -> int:
        return sum(len(c.outboxes) for c in self._channels.values())

    # --- following tasks ---------------------------------------------------------

    @asynccontextmanager
    async def watching(self, outbox: Outbox) -> AsyncIterator[Subscriptions]:
        """The subscriptions of one connection: every task followed inside the block is
        unfollowed when it ends, however it ends."""
        try:
            yield Subscriptions(self, outbox)
        finally:
            for task_id in list(outbox.follows):
                self._unfollow(outbox, task_id)

    async def _follow(self, outbox: Outbox, task_id: str, since: int) -> None:
        name = channel(task_id)
        ch = self._channels.get(name)
        new = ch is None
        if ch is None:
            ch = self._channels[name] = _Channel(task_id)
        # Registered before any await: a follower cancelled (client gone) or failing
        # half-way is unfollowed below, and leaves no outbox or channel behind.
        ch.outboxes.add(outbox)
        outbox.begin(task_id, since)
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
            self._unfollow(outbox, task_id)
            raise
        outbox.end_sync(task_id, history)

    def _unfollow(self, outbox: Outbox, task_id: str) -> None:
        outbox.stop(task_id)
        name = channel(task_id)
        ch = self._channels.get(name)
        if ch is None:
            return
        ch.outboxes.discard(outbox)
        if not ch.outboxes:
            del self._channels[name]
            asyncio.get_running_loop().create_task(self._send("unsubscribe", name, None))

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
            text = data.decode() if isinstance(data, bytes) else str(data)
            frame = Frame.parse(text)
            if frame.terminal and frame.event is not None and "result" in frame.event:
                # The store publishes a success without its images (it keeps the PNG
                # bytes once): they are read once here, for every watcher of the task.
                frame = Frame.parse(await self._complete_result(frame.task_id, text))
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
        """Offer `frame` to every outbox of `ch`. A big channel's fan-out lets the event
        loop run between slices, so that one event to thousands of watchers does not
        hold up every other request for the whole of it. The listener awaits the fan-out
        before it reads the next message: frames still reach each outbox in order. An
        outbox that leaves meanwhile ignores the frame; one that joins reads it from the
        log."""
        outboxes = ch.outboxes
        self.offered += len(outboxes)
        if len(outboxes) <= SLICE:
            for outbox in outboxes:
                outbox.offer(frame)
            return
        async for some in in_slices(list(outboxes)):
            for outbox in some:
                outbox.offer(frame)

    async def _replay(self, name: str, ch: _Channel) -> None:
        """After a reconnect: re-read the log from the lowest seq any outbox has."""
        held = ch.held  # this replay's: another reconnect meanwhile holds in a new list
        since = min((o.high(ch.task_id) for o in ch.outboxes), default=0)
        try:
            texts = await self._read_log(ch.task_id, since)
        except RedisError as exc:
            # Without the log the held frames would leave a gap: close these outboxes
            # connections instead, and their clients resume from their last seq.
            log.warning("replay of %s failed (%s); closing its streams", ch.task_id, exc)
            if ch.held is held:
                ch.held = None
            for outbox in list(ch.outboxes):
                outbox.fail()
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


class Subscriptions:
    """The tasks one connection follows (see `Hub.watching`)."""

    __slots__ = ("_hub", "outbox")

    def __init__(self, hub: Hub, outbox: Outbox) -> None:
        self._hub = hub
        self.outbox = outbox

    async def follow(self, task_id: str, since: int) -> None:
        """Deliver `task_id`'s events after `since` to the outbox: history, then live.

        Raises RedisError if the history cannot be read (the caller ends the stream, or
        tells the client, who resumes from its last seq).
        """
        await self._hub._follow(self.outbox, task_id, since)

    def unfollow(self, task_id: str) -> None:
        self._hub._unfollow(self.outbox, task_id)
