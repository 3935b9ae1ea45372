"""Outlets: how one connection's frames reach its client, the same way for every kind
of connection (SSE, per-task WebSocket, multiplexed /ws).

An outlet has two ways out:
- `now`, called by the hub's fan-out (through `Outbox.direct`) while the connection's
  pump is idle: the frame's prepared bytes go straight to the transport when it takes
  them at once (`Transport`, app/server.py); otherwise the ASGI send runs up to its
  first suspension, right where the frame is offered. Waking the connection's task
  just to send costs about as much as the send itself (docs/benchmarks.md, F8, F13).
  A send that does suspend (the transport is paused) is queued as a `Resume`, ahead
  of any later frame, and the pump finishes it in order.
- `pump`, the connection's one send loop: it sends what the outbox queued (history,
  a backlog, replies), each send bounded by the stall check, until the stream is done
  or the client too slow.
Every delivery is recorded in one place, `Outlet._delivered`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Protocol

from starlette.types import Message

from . import counters
from .frame import Frame
from .hub import Subscriptions
from .outbox import Pending
from .stalls import Stalls

Send = Callable[[Message], Awaitable[None]]
Shape = Callable[[Frame], Frame]  # the frame as this client asked for it (`inline=0`)


class Transport(Protocol):
    """A connection's transport, for bytes prepared once per event."""

    def write(self, data: bytes) -> bool:
        """Write `data` now and return True, or return False (nothing written)."""


class Ending(enum.Enum):
    DONE = "done"  # the task's terminal event went out
    TOO_SLOW = "too slow"  # outbox overflowed, a send stalled, or the api is stopping


class Resume:
    """The rest of a send that `Outlet.now` began: the pump awaits it to finish it; the
    delivery is recorded once it completes."""

    __slots__ = ("_coro", "_done", "_waiting_on", "frame")

    def __init__(
        self,
        coro: Generator[Any, None, None],
        waiting_on: Any,
        frame: Frame,
        done: Callable[[Frame], None],
    ) -> None:
        self._coro = coro
        self._waiting_on = waiting_on
        self._done = done
        self.frame = frame

    def __await__(self) -> Generator[Any, None, None]:
        # What `yield from coro` does, for a coroutine whose first step already ran:
        # hand each future it waits on to the awaiting task, and pass the task's
        # answer (a result, or a cancellation) back in.
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                yield waiting_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to the coroutine as is
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting_on = coro.send(None)
                except StopIteration:
                    self._done(self.frame)
                    return


class Outlet:
    """One connection's way out. Subclasses say how a frame is framed for their kind."""

    __slots__ = ("_send", "_shape", "_stalls", "_subscriptions", "_transport", "outbox")

    def __init__(
        self,
        subscriptions: Subscriptions,
        stalls: Stalls,
        send: Send,
        transport: Transport | None,
        shape: Shape,
    ) -> None:
        self.outbox = outbox = subscriptions.outbox
        self._subscriptions = subscriptions
        self._stalls = stalls
        self._send = send
        self._transport = transport
        self._shape = shape
        outbox.direct = self.now

    def _prepared(self, frame: Frame) -> bytes:
        raise NotImplementedError

    def _message(self, frame: Frame) -> Message:
        raise NotImplementedError

    def _delivered(self, frame: Frame, prepared: bool = False) -> None:
        counters.delivered(frame, prepared)

    def _ends(self, frame: Frame) -> bool:
        """Whether the stream is done once `frame` went out: a per-task stream ends
        with its task's terminal event."""
        return frame.terminal

    def now(self, frame: Frame) -> Pending | None:
        """Send a live frame from the fan-out: None once written (or sent), else the
        `Resume` that finishes it. Errors propagate (the outbox queues the frame)."""
        shaped = self._shape(frame)
        transport = self._transport
        if transport is not None and transport.write(self._prepared(shaped)):
            self._delivered(frame, prepared=True)
            return None
        steps = self._send(self._message(shaped)).__await__()
        try:
            waiting_on = steps.send(None)
        except StopIteration:
            self._delivered(frame)
            return None
        return Resume(steps, waiting_on, frame, self._delivered)

    async def pump(self) -> Ending:
        """Send what the outbox queues until the stream is done or the client too slow."""
        while True:
            item = await self.outbox.get()
            if item is None:
                return Ending.TOO_SLOW
            try:
                if isinstance(item, Frame):
                    frame = item
                    await self._stalls.send(self._send(self._message(self._shape(frame))))
                    self._delivered(frame)
                else:
                    frame = item.frame
                    await self._stalls.send(item)  # a send `now` began; it records itself
            except TimeoutError:
                return Ending.TOO_SLOW
            if self._ends(frame):
                return Ending.DONE
            del frame, item  # an idle connection keeps no event alive


class SseOutlet(Outlet):
    """An SSE stream: frames as `id/event/data` blocks of a chunked response."""

    __slots__ = ()

    def _prepared(self, frame: Frame) -> bytes:
        return frame.sse_chunk()

    def _message(self, frame: Frame) -> Message:
        return {"type": "http.response.body", "body": frame.sse(), "more_body": True}


class WsOutlet(Outlet):
    """A per-task WebSocket: one text frame per event."""

    __slots__ = ()

    def _prepared(self, frame: Frame) -> bytes:
        return frame.ws_frame()

    def _message(self, frame: Frame) -> Message:
        return {"type": "websocket.send", "text": frame.text}


class MuxOutlet(WsOutlet):
    """The multiplexed /ws: it goes on after a task ends (and stops following it), and
    remembers the last seq it delivered per task, so that a repeated subscribe never
    re-sends what the socket already has."""

    __slots__ = ("last_seq",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_seq: dict[str, int] = {}

    def _delivered(self, frame: Frame, prepared: bool = False) -> None:
        super()._delivered(frame, prepared)
        if frame.seq:
            self.last_seq[frame.task_id] = frame.seq

    def _ends(self, frame: Frame) -> bool:
        if frame.terminal:
            self._subscriptions.unfollow(frame.task_id)
        return False
