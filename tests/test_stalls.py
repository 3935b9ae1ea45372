"""The stall check: a blocked send ends in TimeoutError, others are left alone."""

from __future__ import annotations

import asyncio

import pytest

from app.stalls import Stalls
from app.watch import Pressure


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_a_send_blocked_past_the_limit_raises_timeout_and_counts() -> None:
    async def main() -> None:
        stalls = Stalls(limit_s=0.05)
        blocked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        before = Pressure.stalled

        async def sender() -> None:
            with stalls.sender() as s:
                await s.send(asyncio.sleep(0))  # a send that does not block
                await s.send(blocked)

        task = asyncio.create_task(sender())
        await asyncio.sleep(0.01)
        assert stalls.check(asyncio.get_running_loop().time()) == 0  # not late yet
        await asyncio.sleep(0.1)
        assert stalls.check(asyncio.get_running_loop().time()) == 1
        with pytest.raises(TimeoutError):
            await task
        assert Pressure.stalled == before + 1
        assert not stalls.senders  # the sender left the check when its block ended

    run(main())


def test_idle_senders_are_never_cancelled() -> None:
    async def main() -> None:
        stalls = Stalls(limit_s=0.0)
        waiting = asyncio.Event()

        async def sender() -> None:
            with stalls.sender() as s:
                await s.send(asyncio.sleep(0))
                await waiting.wait()  # waiting for the next frame is not a send

        task = asyncio.create_task(sender())
        await asyncio.sleep(0.02)
        assert stalls.check(asyncio.get_running_loop().time() + 100) == 0
        waiting.set()
        await task

    run(main())


def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    async def main() -> None:
        stalls = Stalls(limit_s=0.0)
        blocked: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def sender() -> None:
            with stalls.sender() as s:
                await s.send(blocked)

        task = asyncio.create_task(sender())
        await asyncio.sleep(0.01)
        task.cancel()  # the connection closes
        stalls.check(asyncio.get_running_loop().time() + 100)  # and the check fires too
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    run(main())
