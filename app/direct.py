"""Sending from the hub's fan-out, without waking the connection's task.

uvicorn's WebSocket send completes without suspending whenever the transport is
writable, which is nearly always; waking a connection's sender task to make it costs
about as much as the send itself (docs/benchmarks.md, F8). `start` runs a send
coroutine up to its first suspension, right where the frame is offered. If it does
suspend (the transport is paused), the `Resume` it returns is queued ahead of any
later frame, and the connection's sender task finishes the send in order.

Cheaper still, when the connection's transport can take the event's prepared bytes at
once (app/prepared.py), `written` puts them there and no ASGI send runs at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from typing import Any

from .metrics import Deliveries, sent
from .prepared import Transport
from .watch import Frame


class Resume:
    """The rest of a send that `start` began: await it (in the sender task) to finish.
    The delivery is recorded (`metrics.sent`) once it completes."""

    __slots__ = ("_coro", "_waiting_on", "frame")

    def __init__(self, coro: Generator[Any, None, None], waiting_on: Any, frame: Frame) -> None:
        self._coro = coro
        self._waiting_on = waiting_on
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
                    sent(self.frame)
                    return


def start(send: Awaitable[None], frame: Frame) -> Resume | None:
    """Run `send` until it completes (None; the delivery is recorded) or waits (its
    `Resume`); errors propagate."""
    steps = send.__await__()
    try:
        waiting_on = steps.send(None)
    except StopIteration:
        sent(frame)
        return None
    return Resume(steps, waiting_on, frame)


def written(transport: Transport | None, data: bytes, frame: Frame) -> bool:
    """Whether `transport` took `data`, `frame`'s prepared bytes, at once (the delivery
    is recorded); if not, nothing was written and the caller sends through ASGI."""
    if transport is not None and transport.write(data):
        sent(frame)
        if frame.seq:  # a task event, not a keepalive
            Deliveries.prepared += 1
        return True
    return False
