"""The stall check: a blocked send ends in TimeoutError, others are left alone."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.live.counters import Counts
from app.live.stalls import Stalls


def test_a_send_blocked_past_the_limit_raises_timeout_and_counts() -> None:
    async def main() -> None:
        stalls = Stalls(limit_s=0.05)
        blocked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        before = Counts.stalled

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
        assert Counts.stalled == before + 1
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
