"""Keepalive buckets: each stream is pinged once per period, only while it is quiet."""

from __future__ import annotations

from app.keepalive import PING, Keepalive
from app.watch import Watch


def test_each_stream_is_pinged_once_per_period_spread_over_the_buckets() -> None:
    keepalive = Keepalive(every_s=3)
    watches = [Watch() for _ in range(9)]
    for watch in watches:
        keepalive.add(watch)
    assert [keepalive.tick(n) for n in range(3)] == [3, 3, 3]
    assert all(watch.pending() == 1 for watch in watches)


def test_a_stream_with_frames_queued_is_not_pinged_and_a_gone_one_never() -> None:
    keepalive = Keepalive(every_s=1)
    busy, gone = Watch(), Watch()
    keepalive.add(busy)
    keepalive.add(gone)
    busy.say(PING)
    keepalive.discard(gone)
    assert keepalive.tick(0) == 0
    assert busy.pending() == 1 and gone.pending() == 0
