"""Sends begun outside a task: finished in order by the task that awaits the Resume."""

from __future__ import annotations

import asyncio

import pytest

from app.direct import Resume, start
from app.metrics import DELIVERY_LATENCY
from app.watch import Frame, Watch


def frame(seq: int) -> Frame:
    return Frame.parse(f'{{"task_id": "t", "seq": {seq}, "type": "progress", "ts": 1.0}}')


def delivered() -> int:
    return sum(DELIVERY_LATENCY.counts)


def test_a_send_that_does_not_wait_completes_at_once_and_is_recorded() -> None:
    done: list[int] = []
    before = delivered()

    async def send() -> None:
        done.append(1)

    assert start(send(), frame(1)) is None
    assert done == [1] and delivered() == before + 1


def test_a_send_that_waits_is_finished_by_the_task_awaiting_its_resume() -> None:
    async def main() -> None:
        writable = asyncio.Event()
        steps: list[str] = []

        async def send() -> None:
            steps.append("begun")
            await writable.wait()
            await asyncio.sleep(0)  # a later suspension is passed through too
            steps.append("written")

        before = delivered()
        resume = start(send(), frame(1))
        assert isinstance(resume, Resume) and steps == ["begun"]
        task = asyncio.create_task(_await(resume))
        await asyncio.sleep(0.01)
        assert steps == ["begun"] and delivered() == before  # not delivered yet
        writable.set()
        await task
        assert steps == ["begun", "written"] and delivered() == before + 1

    asyncio.run(main())


def test_cancelling_the_awaiting_task_runs_the_send_s_cleanup() -> None:
    async def main() -> None:
        cleaned: list[str] = []

        async def send() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                cleaned.append("cleanup")

        resume = start(send(), frame(1))
        assert resume is not None
        task = asyncio.create_task(_await(resume))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == ["cleanup"]

    asyncio.run(main())


def test_a_watch_sends_live_frames_directly_only_while_its_sender_idles() -> None:
    async def main() -> None:
        watch = Watch()
        direct: list[int] = []
        watch.direct = lambda f: direct.append(f.seq)
        watch.begin("t", 0)
        watch.end_sync("t", [frame(1)])  # history is always queued
        watch.offer(frame(2))  # the sender has not taken the history yet: queued
        assert direct == [] and watch.pending() == 2
        assert [(await watch.get()).seq, (await watch.get()).seq] == [1, 2]  # type: ignore[union-attr]
        getter = asyncio.create_task(watch.get())
        await asyncio.sleep(0)  # the sender now idles
        watch.offer(frame(3))
        assert direct == [3] and watch.pending() == 0
        getter.cancel()

    asyncio.run(main())


async def _await(resume: Resume) -> None:
    await resume
