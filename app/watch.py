"""Frames and watches: what the hub hands to each client connection.

A `Frame` is one event, decoded once and serialized once per api process (SSE bytes,
WebSocket text, and both as prepared writes), whatever the number of watchers. A
`Watch` is one connection's bounded outbox. The hub's listener calls `offer` and never
waits on a client.

Slow-client policy (SPEC section 4), counting live frames only (a follow's history is
read at the client's pace, so it is queued whole and never coalesced):
- below `COALESCE_AFTER` queued frames every event is kept;
- above it, a new `progress` replaces the task's undelivered `progress` (latest wins)
  and loses its preview;
- at `MAX_FRAMES`, `progress` is dropped; any other event overflows the watch, and its
  connection is closed as too slow (WebSocket 4008, SSE stream ended) so that the
  client reconnects and resumes from its last seq.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from livepix.wire import TERMINAL_EVENTS, EventType, dumps

from .prepared import http_chunk, ws_text_frame

if TYPE_CHECKING:
    from .direct import Resume

COALESCE_AFTER = 16
MAX_FRAMES = 256


class Pressure:
    """Process-wide counts of what the slow-client policy did (for /metrics)."""

    coalesced = 0
    dropped = 0
    overflowed = 0  # outbox full: closed as too slow
    stalled = 0  # one send blocked past the send timeout: closed as too slow


@dataclass(slots=True, eq=False)
class Frame:
    """One event as it travels: decoded once, serialized at most once per variant."""

    task_id: str
    seq: int
    type: str
    text: str
    event: dict[str, Any]
    _sse: bytes | None = None
    _ws_frame: bytes | None = None
    _sse_chunk: bytes | None = None
    _lean: Frame | None = None
    _by_ref: Frame | None = None
    # Derived once here: the fan-out reads them for every watcher.
    terminal: bool = field(init=False)
    droppable: bool = field(init=False)  # a progress event: coalesced or dropped for a slow client
    ts: float | None = field(init=False)  # when the worker published it (delivery latency)

    def __post_init__(self) -> None:
        self.terminal = self.type in TERMINAL_EVENTS
        self.droppable = self.type == EventType.PROGRESS
        ts = self.event.get("ts")
        self.ts = ts if isinstance(ts, float) else None

    @classmethod
    def parse(cls, text: str) -> Frame:
        event = json.loads(text)
        return cls(event["task_id"], int(event["seq"]), event["type"], text, event)

    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = f"id: {self.seq}\nevent: {self.type}\ndata: {self.text}\n\n".encode()
        return self._sse

    def ws_frame(self) -> bytes:
        """The WebSocket text frame of `text`, header included (app/prepared.py)."""
        if self._ws_frame is None:
            self._ws_frame = ws_text_frame(self.text.encode())
        return self._ws_frame

    def sse_chunk(self) -> bytes:
        """`sse()` as a chunk of a chunked HTTP response (app/prepared.py)."""
        if self._sse_chunk is None:
            self._sse_chunk = http_chunk(self.sse())
        return self._sse_chunk

    def lean(self) -> Frame:
        """This frame without its preview: what a client under pressure gets."""
        if "preview" not in self.event:
            return self
        if self._lean is None:
            event = {k: v for k, v in self.event.items() if k != "preview"}
            self._lean = Frame(self.task_id, self.seq, self.type, dumps(event), event)
        return self._lean

    def by_reference(self, result_url: str) -> Frame:
        """This frame with the result image replaced by its URL (clients asking `inline=0`)."""
        result = self.event.get("result")
        if not isinstance(result, dict) or "image_data" not in result:
            return self
        if self._by_ref is None:
            slim = {k: v for k, v in result.items() if k != "image_data"}
            slim["image_url"] = result_url
            event = {**self.event, "result": slim}
            self._by_ref = Frame(self.task_id, self.seq, self.type, dumps(event), event)
        return self._by_ref


@dataclass(slots=True)
class _Follow:
    high: int  # highest seq queued for this task
    held: list[Frame] | None = None  # live frames held while the history is read
    progress_slot: list[Frame] | None = None  # the undelivered progress, for coalescing
    ended: bool = False


@dataclass(slots=True, eq=False)
class Watch:
    """One connection's outbox across the tasks it follows."""

    max_frames: int = MAX_FRAMES
    coalesce_after: int = COALESCE_AFTER
    follows: dict[str, _Follow] = field(default_factory=dict)
    overflowed: bool = False
    coalesced: int = 0
    dropped: int = 0
    # Set by the connection: sends a live frame at once, from the hub's fan-out, while
    # the sender task is idle (app/direct.py); returns a `Resume` if the send must wait.
    direct: Callable[[Frame], Resume | None] | None = None
    # Queued slots: a list for a live frame (coalescing replaces its frame), a tuple for
    # a frame of history, a Resume for a send begun by `direct`. A list, not a deque:
    # an empty deque costs 760 bytes per watch.
    _out: list[list[Frame] | tuple[Frame] | Resume] = field(default_factory=list)
    _history: int = 0  # history slots in `_out`
    # A Future only while `get` waits: an asyncio.Event per idle connection would cost
    # a deque (~0.8 KB) each (docs/benchmarks.md, F7).
    _waiter: asyncio.Future[None] | None = None
    # Whether a frame went out (or was handed to the sender) since the keepalive last
    # looked: SSE keepalives skip the streams that are not quiet (app/keepalive.py).
    sent: bool = False

    def begin(self, task_id: str, since: int) -> None:
        """Start following `task_id` after `since`; live frames wait for `end_sync`."""
        self.follows[task_id] = _Follow(high=since, held=[])

    def end_sync(self, task_id: str, history: list[Frame]) -> None:
        """Queue the history, then whatever arrived live meanwhile, without duplicates."""
        follow = self.follows.get(task_id)
        if follow is None or follow.held is None:
            return
        held, follow.held = follow.held, None
        for frame in history:
            if frame.seq > follow.high and not follow.ended:
                self._history += 1
                self._queue(follow, frame, (frame,))
        for frame in held:
            self._put(follow, frame)

    def stop(self, task_id: str) -> None:
        self.follows.pop(task_id, None)

    def high(self, task_id: str) -> int:
        follow = self.follows.get(task_id)
        return follow.high if follow else 0

    def offer(self, frame: Frame) -> None:
        """Called by the hub for every live frame of a followed task. Never blocks."""
        follow = self.follows.get(frame.task_id)
        if follow is None:
            return
        if follow.held is not None:
            follow.held.append(frame)
            return
        self._put(follow, frame)

    def _put(self, follow: _Follow, frame: Frame) -> None:
        if frame.seq <= follow.high or follow.ended:
            return
        live = len(self._out) - self._history
        pressed = live >= self.coalesce_after
        if frame.droppable and pressed:
            frame = frame.lean()
            if follow.progress_slot is not None:
                follow.progress_slot[0] = frame
                follow.high = frame.seq
                self.coalesced += 1
                Pressure.coalesced += 1
                return
            if live >= self.max_frames:
                self.dropped += 1
                Pressure.dropped += 1
                return
        elif live >= self.max_frames:
            if not self.overflowed:
                Pressure.overflowed += 1
            self.overflowed = True
            self._wake()
            return
        if not frame.terminal and self._send_now(frame):
            follow.high = frame.seq
            follow.progress_slot = None
            return
        self._queue(follow, frame, [frame])

    def _send_now(self, frame: Frame) -> bool:
        """Send `frame` from here through `direct` if the sender task is idle; whether
        it is sent (or its send is begun, and queued to be finished in order)."""
        waiter = self._waiter
        if self.direct is None or waiter is None or waiter.done() or self._out:
            return False  # the sender task is busy: queue behind what it has
        try:
            resume = self.direct(frame)
        except Exception:  # noqa: BLE001 - queued instead: the sender task meets it again, and ends
            return False
        self.sent = True
        if resume is not None:
            self._out.append(resume)
            self._wake()
        return True

    def _queue(self, follow: _Follow, frame: Frame, slot: list[Frame] | tuple[Frame]) -> None:
        follow.progress_slot = slot if frame.droppable and isinstance(slot, list) else None
        follow.high = frame.seq
        follow.ended = frame.terminal
        self._out.append(slot)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Frame | Resume | None:
        """The next frame to send, or a send to finish; None once the watch overflowed
        (close it as too slow)."""
        while not self._out:
            if self.overflowed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.overflowed:
            return None
        self.sent = True
        slot = self._out.pop(0)
        if isinstance(slot, tuple):
            self._history -= 1
        elif not isinstance(slot, list):
            return slot  # a send that `direct` began
        frame = slot[0]
        follow = self.follows.get(frame.task_id)
        if follow is not None and follow.progress_slot is slot:
            follow.progress_slot = None
        return frame

    def say(self, frame: Frame) -> None:
        """Send a frame that is not a task event (a WebSocket reply, an SSE keepalive).
        Like live frames, replies count against the outbox; queued history does not."""
        if len(self._out) - self._history >= self.max_frames:
            self.overflowed = True
        elif self._send_now(frame):
            return
        else:
            self._out.append([frame])
        self._wake()

    def fail(self) -> None:
        """Close this watch's connection: its client must resume from its last seq."""
        self.overflowed = True
        self._wake()

    def pending(self) -> int:
        return len(self._out)
