"""The outbox: one connection's bounded queue of frames, across the tasks it follows.

The hub's fan-out calls `offer` and never waits on a client. While the connection's
pump is idle, a live frame is handed to `direct` (the connection's outlet sends it at
once, app/live/outlets.py); otherwise it is queued.

Slow-client policy (SPEC section 4), counting live frames only (a follow's history is
read at the client's pace, so it is queued whole and never coalesced):
- below `COALESCE_AFTER` queued frames every event is kept;
- above it, a new `progress` replaces the task's undelivered `progress` (latest wins),
  loses its preview, and the frame the client gets names the seqs it replaced
  (`"replaces": [4, 5]`);
- at `MAX_FRAMES`, a `progress` with nothing to replace is not queued, and the task's
  next queued frame names its seq in `replaces`; any other event overflows the outbox,
  and its connection is closed as too slow (WebSocket 4008, SSE stream ended) so that
  the client reconnects and resumes from its last seq.
No other seq is ever skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .counters import Counts
from .frame import Frame

COALESCE_AFTER = 16
MAX_FRAMES = 256


class Pending(Protocol):
    """A send the outlet began from the fan-out that had to wait: the pump awaits it."""

    frame: Frame

    def __await__(self) -> Generator[Any, None, None]: ...


@dataclass(slots=True, eq=False)
class _Slot:
    """A queued live frame; a progress slot may be coalesced into."""

    frame: Frame
    replaces: list[int] | None = None


@dataclass(slots=True)
class _Follow:
    high: int  # highest seq queued (or sent, coalesced away, dropped) for this task
    held: list[Frame] | None = None  # live frames held while the history is read
    progress_slot: _Slot | None = None  # the undelivered progress, for coalescing
    dropped: list[int] | None = None  # progress seqs not queued: the next frame names them
    ended: bool = False


@dataclass(slots=True, eq=False)
class Outbox:
    """One connection's outbox across the tasks it follows."""

    max_frames: int = MAX_FRAMES
    coalesce_after: int = COALESCE_AFTER
    follows: dict[str, _Follow] = field(default_factory=dict)
    overflowed: bool = False
    coalesced: int = 0
    dropped: int = 0
    # Set by the connection's outlet: sends a live frame at once, from the fan-out,
    # while the pump is idle; returns a `Pending` if the send must wait.
    direct: Callable[[Frame], Pending | None] | None = None
    # Queued: a `_Slot` per live frame or reply, a bare `Frame` per frame of history,
    # a `Pending` per send begun by `direct`. A list, not a deque: an empty deque costs
    # 760 bytes per connection.
    _out: list[_Slot | Frame | Pending] = field(default_factory=list)
    _history: int = 0  # history frames in `_out`
    # A Future only while `get` waits: an asyncio.Event per idle connection would cost
    # a deque (~0.8 KB) each (docs/benchmarks.md, F7).
    _waiter: asyncio.Future[None] | None = None
    # Whether a frame went out (or was handed to the pump) since the keepalive last
    # looked: SSE keepalives skip the streams that are not quiet (app/live/keepalive.py).
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
                follow.high = frame.seq
                follow.ended = frame.terminal
                self._out.append(frame)
        if self._history:
            self._wake()
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
        if frame.droppable and live >= self.coalesce_after:
            frame = frame.lean()
            slot = follow.progress_slot
            if slot is not None:
                slot.replaces = [*(slot.replaces or ()), slot.frame.seq]
                slot.frame = frame
                follow.high = frame.seq
                self.coalesced += 1
                Counts.coalesced += 1
                return
            if live >= self.max_frames:
                follow.dropped = [*(follow.dropped or ()), frame.seq]
                follow.high = frame.seq
                self.dropped += 1
                Counts.dropped += 1
                return
        elif live >= self.max_frames:
            if not self.overflowed:
                Counts.overflowed += 1
            self.overflowed = True
            self._wake()
            return
        replaces, follow.dropped = follow.dropped, None
        if replaces is None and not frame.terminal and self._send_now(frame):
            follow.high = frame.seq
            follow.progress_slot = None
            return
        slot = _Slot(frame, replaces)
        follow.progress_slot = slot if frame.droppable else None
        follow.high = frame.seq
        follow.ended = frame.terminal
        self._out.append(slot)
        self._wake()

    def _send_now(self, frame: Frame) -> bool:
        """Send `frame` through `direct` if the pump is idle; whether it is sent (or its
        send begun, and queued to be finished in order)."""
        waiter = self._waiter
        if self.direct is None or waiter is None or waiter.done() or self._out:
            return False  # the pump is busy: queue behind what it has
        try:
            pending = self.direct(frame)
        except Exception:  # noqa: BLE001 - queued instead: the pump meets the error again, and ends
            return False
        self.sent = True
        if pending is not None:
            self._out.append(pending)
            self._wake()
        return True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Frame | Pending | None:
        """The next frame to send, or a send to finish; None once the outbox overflowed
        (close the connection as too slow)."""
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
        item = self._out.pop(0)
        if type(item) is Frame:
            self._history -= 1
            return item
        if type(item) is _Slot:
            frame = item.frame
            follow = self.follows.get(frame.task_id)
            if follow is not None and follow.progress_slot is item:
                follow.progress_slot = None
            return frame.replacing(item.replaces) if item.replaces else frame
        return item  # type: ignore[return-value]  # a Pending

    def say(self, frame: Frame) -> None:
        """Send a frame that is not a task event (a /ws reply, an SSE keepalive). Like
        live frames, replies count against the outbox; queued history does not."""
        if len(self._out) - self._history >= self.max_frames:
            self.overflowed = True
        elif self._send_now(frame):
            return
        else:
            self._out.append(_Slot(frame))
        self._wake()

    def fail(self) -> None:
        """Close this outbox's connection: its client must resume from its last seq."""
        self.overflowed = True
        self._wake()

    def pending(self) -> int:
        return len(self._out)
