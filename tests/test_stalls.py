"""The stall check: a blocked send ends in TimeoutError, others are left alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from starlette.types import Message, Scope

from app.stalls import Stalls
from app.streams import EventStream
from app.watch import Pressure


def test_a_send_blocked_past_the_limit_raises_timeout_and_counts() -> None:
    async def main() -> None:
        stalls = Stalls(limit_s=0.05)
        blocked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        before = Pressure.stalled

        async def sender() -> None:
            await stalls.send(asyncio.sleep(0))  # a send that does not block
            await stalls.send(blocked)

        task = asyncio.create_task(sender())
        await asyncio.sleep(0.01)
        assert stalls.check(time.monotonic()) == 0  # not late yet
        await asyncio.sleep(0.1)
        assert stalls.check(time.monotonic()) == 1
        with pytest.raises(TimeoutError):
            await task
        assert Pressure.stalled == before + 1
        assert stalls.under_way() == 0

    asyncio.run(main())


def test_waiting_for_the_next_frame_is_not_a_send() -> None:
    async def main() -> None:
        stalls = Stalls(limit_s=0.0)
        waiting = asyncio.Event()

        async def sender() -> None:
            await stalls.send(asyncio.sleep(0))
            await waiting.wait()

        task = asyncio.create_task(sender())
        await asyncio.sleep(0.02)
        assert stalls.check(time.monotonic() + 100) == 0
        waiting.set()
        await task

    asyncio.run(main())


def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    async def main() -> None:
        stalls = Stalls(limit_s=0.0)
        blocked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(stalls.send(blocked))
        await asyncio.sleep(0.01)
        task.cancel()  # the connection closes ...
        assert stalls.check(time.monotonic() + 100) == 1  # ... as the check fires
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled() and stalls.under_way() == 0

    asyncio.run(main())


def test_an_sse_stream_sends_through_the_stall_check() -> None:
    """`EventStream` routes sse-starlette's per-message send (a private hook, 3.7) through
    the stall check: a send blocked past the limit ends the stream quietly, counted. Were
    the hook renamed upstream, sse-starlette's own 10 s timeout would apply instead and
    this would time out."""

    async def main() -> None:
        stalls = Stalls(limit_s=0.05)
        before = Pressure.stalled
        blocked: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def body() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"

        async def send(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                await blocked  # the client stopped reading

        async def receive() -> Message:
            await asyncio.Event().wait()  # the client never leaves
            raise AssertionError

        scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        serving = asyncio.create_task(EventStream(body(), stalls=stalls)(scope, receive, send))
        await asyncio.sleep(0.2)
        assert stalls.check(time.monotonic()) == 1
        await asyncio.wait_for(serving, 5)
        assert Pressure.stalled == before + 1

    asyncio.run(main())
