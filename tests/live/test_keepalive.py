"""Keepalives: a stream is pinged once it has been quiet for the period, never while busy."""

from __future__ import annotations

import asyncio

from app.live import Frame, Outbox
from app.live.keepalive import PING, Keepalive
from app.live.slices import SLICE


def tick(keepalive: Keepalive, now: float) -> int:
    return asyncio.run(keepalive.tick(now))


def test_a_stream_is_pinged_once_quiet_for_the_period_and_again_a_period_later() -> None:
    keepalive = Keepalive(every_s=15)
    watch = Outbox()
    keepalive.add(watch, now=100.0)
    assert tick(keepalive, 114) == 0
    assert tick(keepalive, 115) == 1 and watch.pending() == 1
    assert tick(keepalive, 116) == 0  # its ping is still queued
    watch._out.clear()  # the sender took it
    assert tick(keepalive, 129) == 0
    assert tick(keepalive, 130) == 1


def test_a_stream_that_sent_recently_or_has_frames_queued_is_not_pinged_and_a_gone_one_never() -> None:
    keepalive = Keepalive(every_s=1)
    busy, recent, gone = Outbox(), Outbox(), Outbox()
    for watch in (busy, recent, gone):
        keepalive.add(watch, now=100.0)
    busy.say(PING)
    keepalive.discard(gone)
    recent.sent = True  # a frame went out since the last tick
    assert tick(keepalive, 105) == 0
    assert busy.pending() == 1 and recent.pending() == 0 and gone.pending() == 0
    assert tick(keepalive, 105.5) == 0  # quiet only since the tick at 105
    assert tick(keepalive, 106) == 1 and recent.pending() == 1


def test_a_ping_to_an_idle_stream_goes_out_at_once_and_restarts_its_quiet_period() -> None:
    async def main() -> None:
        keepalive = Keepalive(every_s=1)
        watch = Outbox()
        sent: list[Frame] = []

        def direct(frame: Frame) -> None:
            sent.append(frame)

        watch.direct = direct
        keepalive.add(watch, now=100.0)
        waiting = asyncio.create_task(watch.get())
        await asyncio.sleep(0)  # the sender waits for a frame
        assert await keepalive.tick(102) == 1
        assert sent == [PING] and watch.pending() == 0 and not waiting.done()
        assert await keepalive.tick(102.5) == 0
        assert await keepalive.tick(103) == 1 and sent == [PING, PING]
        waiting.cancel()

    asyncio.run(main())


def test_a_frame_sent_straight_from_the_fan_out_counts_as_not_quiet() -> None:
    async def main() -> None:
        keepalive = Keepalive(every_s=1)
        watch = Outbox()
        watch.direct = lambda frame: None
        watch.begin("t", 0)
        watch.end_sync("t", [])
        keepalive.add(watch, now=100.0)
        waiting = asyncio.create_task(watch.get())
        await asyncio.sleep(0)
        watch.offer(Frame.parse('{"task_id": "t", "seq": 1, "type": "progress", "ts": 1.0}'))
        assert await keepalive.tick(101) == 0  # it sent since the last tick
        assert await keepalive.tick(102) == 1
        waiting.cancel()

    asyncio.run(main())


def test_streams_that_fell_quiet_together_are_pinged_in_slices_and_a_stream_gone_meanwhile_is_not() -> None:
    async def main() -> None:
        keepalive = Keepalive(every_s=1)
        watches = [Outbox() for _ in range(2 * SLICE + 1)]
        for watch in watches:
            keepalive.add(watch, now=100.0)
        pinging = asyncio.create_task(keepalive.tick(105))
        await asyncio.sleep(0)  # the first slice
        pinged_first = sum(w.pending() for w in watches)
        late = next(w for w in watches if not w.pending())
        keepalive.discard(late)  # its stream ends meanwhile
        assert await pinging == len(watches) - 1
        assert pinged_first == SLICE and late.pending() == 0

    asyncio.run(main())
