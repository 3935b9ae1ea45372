"""Keepalives: a stream is pinged once it has been quiet for the period, never while busy."""

from __future__ import annotations

import asyncio

from app.keepalive import PING, Keepalive
from app.slices import SLICE
from app.watch import Frame, Watch


def tick(keepalive: Keepalive, now: float) -> int:
    return asyncio.run(keepalive.tick(now))


def test_a_stream_is_pinged_once_quiet_for_the_period_and_again_a_period_later() -> None:
    keepalive = Keepalive(every_s=15)
    watch = Watch()
    keepalive.add(watch)
    start = watch.sent_at
    assert tick(keepalive, start + 14) == 0
    assert tick(keepalive, start + 15) == 1 and watch.pending() == 1
    assert tick(keepalive, start + 16) == 0  # its ping is still queued


def test_a_stream_that_sent_recently_or_has_frames_queued_is_not_pinged_and_a_gone_one_never() -> None:
    keepalive = Keepalive(every_s=1)
    busy, recent, gone = Watch(), Watch(), Watch()
    for watch in (busy, recent, gone):
        keepalive.add(watch)
    busy.say(PING)
    keepalive.discard(gone)
    recent.sent_at = gone.sent_at + 10
    assert tick(keepalive, gone.sent_at + 5) == 0
    assert busy.pending() == 1 and recent.pending() == 0 and gone.pending() == 0


def test_a_ping_to_an_idle_stream_goes_out_at_once_and_restarts_its_quiet_period() -> None:
    async def main() -> None:
        keepalive = Keepalive(every_s=1)
        watch = Watch()
        sent: list[Frame] = []

        def direct(frame: Frame) -> None:
            sent.append(frame)

        watch.direct = direct
        keepalive.add(watch)
        waiting = asyncio.create_task(watch.get())
        await asyncio.sleep(0)  # the sender waits for a frame
        now = watch.sent_at + 2
        assert await keepalive.tick(now) == 1
        assert sent == [PING] and watch.pending() == 0 and not waiting.done()
        assert watch.sent_at > now - 2
        assert await keepalive.tick(watch.sent_at + 0.5) == 0
        waiting.cancel()

    asyncio.run(main())


def test_streams_that_fell_quiet_together_are_pinged_in_slices_and_a_stream_gone_meanwhile_is_not() -> None:
    async def main() -> None:
        keepalive = Keepalive(every_s=1)
        watches = [Watch() for _ in range(2 * SLICE + 1)]
        for watch in watches:
            keepalive.add(watch)
        now = max(w.sent_at for w in watches) + 5
        pinging = asyncio.create_task(keepalive.tick(now))
        await asyncio.sleep(0)  # the first slice
        pinged_first = sum(w.pending() for w in watches)
        late = next(w for w in watches if not w.pending())
        keepalive.discard(late)  # its stream ends meanwhile
        assert await pinging == len(watches) - 1
        assert pinged_first == SLICE and late.pending() == 0

    asyncio.run(main())
