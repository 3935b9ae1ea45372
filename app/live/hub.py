"""The hub: the api process's pub/sub, fanned out to every outbox.

On one Redis: ONE pub/sub connection per api process. On a Redis Cluster: one per
shard node that owns a watched task's channel, on sharded pub/sub (app/live/links.py).
A channel is subscribed when its first local outbox follows the task and unsubscribed
when the last one leaves. A link's listener decodes each message once and offers the
frame to each outbox, which never waits on its client; a big channel's fan-out lets
the event loop run between slices, and the listener reads the next message only after
it. Pub/sub is at-most-once, so after every reconnect (or move of a channel to another
node) the hub re-reads each affected task's log from the lowest seq its outboxes have
and replays it (outboxes drop what they already have): a Redis blip, or a failover,
leaves no silent gap.

A connection follows tasks inside `async with hub.watching(outbox) as subscriptions`:
whatever way the block ends, every task it followed is unfollowed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

from redis.exceptions import RedisError

from livepix.wire import channel

from .frame import Frame
from .links import Link
from .outbox import Outbox
from .slices import SLICE, in_slices

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_S = 3.0
REHOME_EVERY_S = 0.5  # at most one topology refresh per this, while links fail

ReadLog = Callable[[str, int], Awaitable[list[str]]]  # (task id, since) -> events as clients get them
CompleteResult = Callable[[str, str], Awaitable[str]]  # (task id, a succeeded event) -> with its images


class Topology(Protocol):
    """Which node serves a channel (livepix/storage.py: `OneNode`, `ClusterNodes`)."""

    sharded: bool

    def node_of(self, name: str) -> tuple[str, str]:
        """(node name, the URL a pub/sub link connects to) of the channel `name`."""

    async def refresh(self) -> None:
        """Learn the cluster's slot map again (after a failover)."""


@dataclass(eq=False)
class _Channel:
    task_id: str
    outboxes: set[Outbox] = field(default_factory=set)
    ready: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    held: list[Frame] | None = None  # live frames held while a replay reads the log
    node: str = ""  # the node whose link carries the channel
    last: int = 0  # the highest seq fanned out (0: none yet, the followers' history covers it)


class Hub:
    """Fans task events out from Redis to local outboxes."""

    def __init__(self, topology: Topology, read_log: ReadLog, complete_result: CompleteResult) -> None:
        self._topology = topology
        self._read_log = read_log
        self._complete_result = complete_result
        self._channels: dict[str, _Channel] = {}
        self._links: dict[str, Link] = {}
        self._rehoming: asyncio.Task[None] | None = None
        self._rehomed_at = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.messages = 0
        self.offered = 0
        self.rehomes = 0
        self.gaps = 0  # runs of events that pub/sub lost, read from the log instead

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        if not self._topology.sharded:
            self._link(*self._topology.node_of(""))  # one Redis: one link, always up

    async def stop(self) -> None:
        for task in [*self._tasks, *([self._rehoming] if self._rehoming else [])]:
            task.cancel()
        for link in list(self._links.values()):
            await link.stop()

    @property
    def connected(self) -> bool:
        """Whether every link the hub needs is up (on a cluster with nothing watched: yes)."""
        return all(link.connected.is_set() for link in self._links.values())

    @property
    def reconnects(self) -> int:
        return sum(link.reconnects for link in self._links.values()) + self.rehomes

    @property
    def watched_tasks(self) -> int:
        return len(self._channels)

    @property
    def follow_count(self) -> int:
        return sum(len(c.outboxes) for c in self._channels.values())

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _link(self, node: str, url: str) -> Link:
        link = self._links.get(node)
        if link is None:
            link = self._links[node] = Link(self, node, url, self._topology.sharded)
            link.start()
        return link

    # --- following tasks ---------------------------------------------------------

    def watching(self, outbox: Outbox) -> Subscriptions:
        """The subscriptions of one connection, as an async context manager: every task
        followed inside the block is unfollowed when it ends, however it ends. (A class,
        not a generator: a generator's frame would stay alive, ~1 KB, for every open
        connection.)"""
        return Subscriptions(self, outbox)

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
                await self._subscribe(name, ch)
            try:
                async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                    await asyncio.shield(ch.ready)
            except TimeoutError:
                log.warning("subscribe to %s not confirmed yet; the reconnect replay will cover it", task_id)
            history = [Frame.parse(text) for text in await self._read_log(task_id, since)]
        except BaseException:
            self._unfollow(outbox, task_id)
            raise
        if history:
            ch.last = max(ch.last, history[-1].seq)
        outbox.end_sync(task_id, history)

    async def _subscribe(self, name: str, ch: _Channel) -> None:
        node, url = self._topology.node_of(name)
        ch.node = node
        await self._link(node, url).subscribe(name, ch.ready, lambda: self._carries(node, name, ch))

    def _carries(self, node: str, name: str, ch: _Channel) -> bool:
        """Whether `ch` is still the channel `name`, carried by `node`'s link."""
        return self._channels.get(name) is ch and ch.node == node

    def _unfollow(self, outbox: Outbox, task_id: str) -> None:
        outbox.stop(task_id)
        name = channel(task_id)
        ch = self._channels.get(name)
        if ch is None:
            return
        ch.outboxes.discard(outbox)
        if not ch.outboxes:
            del self._channels[name]
            link = self._links.get(ch.node)
            if link is not None:
                self._spawn(link.unsubscribe(name, lambda: name not in self._channels))
                self._retire(link)

    def _retire(self, link: Link) -> None:
        """On a cluster, a link that carries no channel any more closes."""
        idle = not any(ch.node == link.node for ch in self._channels.values())
        if self._topology.sharded and idle and self._links.get(link.node) is link:
            del self._links[link.node]
            self._spawn(link.stop())

    # --- what the links tell -------------------------------------------------------

    async def link_up(self, link: Link) -> None:
        """(Re)subscribe the link's channels; each replays its log once confirmed."""
        for name, ch in list(self._channels.items()):
            if ch.node != link.node:
                continue
            if ch.ready.done():
                ch.ready = asyncio.get_running_loop().create_future()
            ch.held = []
            await link.subscribe(name, ch.ready, lambda name=name, ch=ch: self._carries(link.node, name, ch))  # type: ignore[misc]
        log.info("hub connected to %s", link.node)

    def link_down(self, link: Link, exc: BaseException | None) -> None:
        if self._topology.sharded:
            self._rehome()

    def dropped(self, link: Link, name: str) -> None:
        """The node let a channel go (a slot that moved, a master turned replica)."""
        ch = self._channels.get(name)
        if ch is not None and ch.node == link.node:
            self._rehome()

    def confirmed(self, link: Link, name: str, future: asyncio.Future[None] | None) -> None:
        if future is None or future.done():
            return
        future.set_result(None)
        ch = self._channels.get(name)
        if ch is not None and ch.node == link.node and ch.held is not None and ch.ready is future:
            self._spawn(self._replay(name, ch))

    async def published(self, link: Link, name: str, data: Any) -> None:
        ch = self._channels.get(name)
        if ch is None or ch.node != link.node:
            return  # no longer watched here, or moved to another node's link
        text = data.decode() if isinstance(data, bytes) else str(data)
        frame = Frame.parse(text)
        if frame.terminal and frame.event is not None and "result" in frame.event:
            # The store publishes a success without its images (it keeps the PNG
            # bytes once): they are read once here, for every watcher of the task.
            frame = Frame.parse(await self._complete_result(frame.task_id, text))
        self.messages += 1
        if ch.held is not None:
            ch.held.append(frame)
            return
        if ch.last and frame.seq > ch.last + 1:
            await self._fill(ch, frame.seq)
        await self._fan_out(ch, frame)

    async def _fill(self, ch: _Channel, before: int) -> None:
        """Events between the last one fanned out and seq `before` never came (pub/sub is
        at-most-once; on a cluster, a writer may die between its write and its
        publish): read them from the log, so that no watcher sees a gap."""
        self.gaps += 1
        try:
            texts = await self._read_log(ch.task_id, ch.last)
        except RedisError as exc:
            log.warning("gap in %s before seq %d not filled (%s); closing its streams", ch.task_id, before, exc)
            for outbox in list(ch.outboxes):
                outbox.fail()
            return
        for frame in [Frame.parse(t) for t in texts]:
            if frame.seq < before:
                await self._fan_out(ch, frame)

    # --- moving channels after a failover ----------------------------------------------

    def _rehome(self) -> None:
        if self._rehoming is None or self._rehoming.done():
            self._rehoming = asyncio.ensure_future(self._move_channels())

    async def _move_channels(self) -> None:
        """Refresh the cluster's slot map and move every channel whose slot is served by
        another node now: subscribe it there, and replay its log. Runs again while
        some link stays down (the failover may not have happened yet)."""
        while True:
            wait = self._rehomed_at + REHOME_EVERY_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._rehomed_at = time.monotonic()
            try:
                await self._topology.refresh()
            except (RedisError, OSError) as exc:
                log.warning("hub could not refresh the cluster's slots: %s", exc)
                continue
            moved = 0
            for name, ch in list(self._channels.items()):
                try:
                    node, url = self._topology.node_of(name)
                except RedisError:  # its slot has no master yet: the next round
                    continue
                if node == ch.node:
                    continue
                old = self._links.get(ch.node)
                ch.node = node
                if ch.ready.done():
                    ch.ready = asyncio.get_running_loop().create_future()
                ch.held = []
                if old is not None:
                    self._spawn(old.unsubscribe(name, lambda: True))
                await self._link(node, url).subscribe(name, ch.ready, lambda n=name, c=ch, d=node: self._carries(d, n, c))  # type: ignore[misc]
                moved += 1
            if moved:
                self.rehomes += 1
                log.warning("hub moved %d channel(s) to their slots' new nodes", moved)
            for link in list(self._links.values()):
                self._retire(link)
            if self.connected:
                return

    # --- fan-out and replay -----------------------------------------------------------

    async def _fan_out(self, ch: _Channel, frame: Frame) -> None:
        """Offer `frame` to every outbox of `ch`. A big channel's fan-out lets the event
        loop run between slices, so that one event to thousands of watchers does not
        hold up every other request for the whole of it. The listener awaits the fan-out
        before it reads the next message: frames still reach each outbox in order. An
        outbox that leaves meanwhile ignores the frame; one that joins reads it from the
        log."""
        ch.last = max(ch.last, frame.seq)
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
        """After a (re)subscribe: re-read the log from the lowest seq any outbox has."""
        held = ch.held  # this replay's: another reconnect meanwhile holds in a new list
        since = min((o.high(ch.task_id) for o in ch.outboxes), default=0)
        try:
            texts = await self._read_log(ch.task_id, since)
        except RedisError as exc:
            # Without the log the held frames would leave a gap: close these outboxes'
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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task_id in list(self.outbox.follows):
            self._hub._unfollow(self.outbox, task_id)
