"""The slow-client policy of a watch (pure logic, no I/O)."""

from __future__ import annotations

import asyncio

from app.watch import Frame, Watch
from livepix.wire import dumps

TASK = "0b0e6f3a-1111-4c4c-8888-123456789abc"


def frame(seq: int, type: str = "progress", **extra: object) -> Frame:
    event = {"task_id": TASK, "seq": seq, "type": type, **extra}
    return Frame.parse(dumps(event))


def drain(watch: Watch) -> list[Frame]:
    async def run() -> list[Frame]:
        out = []
        while watch.pending():
            got = await watch.get()
            assert got is not None
            out.append(got)
        return out

    return asyncio.run(run())


def following(since: int = 0, **limits: int) -> Watch:
    watch = Watch(**limits)
    watch.begin(TASK, since)
    watch.end_sync(TASK, [])
    return watch


def test_a_fast_client_gets_every_event_in_order() -> None:
    watch = following()
    for seq in range(1, 11):
        watch.offer(frame(seq))
    assert [f.seq for f in drain(watch)] == list(range(1, 11))


def test_progress_is_coalesced_latest_wins_once_the_client_falls_behind() -> None:
    watch = following(coalesce_after=4, max_frames=100)
    watch.offer(frame(1, "queued"))
    watch.offer(frame(2, "started"))
    for seq in range(3, 50):
        watch.offer(frame(seq, preview="abc"))
    watch.offer(frame(50, "succeeded"))
    got = drain(watch)
    seqs = [f.seq for f in got]
    assert seqs == sorted(seqs) and seqs[:2] == [1, 2] and seqs[-1] == 50
    assert len(got) <= 8 and watch.coalesced > 0
    assert got[-2].seq == 49  # the latest progress survived
    assert "preview" not in got[-2].event  # previews go first under pressure


def test_non_droppable_events_overflow_the_watch_instead_of_being_lost() -> None:
    watch = following(coalesce_after=2, max_frames=3)
    for seq, kind in enumerate(["queued", "started", "queued", "queued"], start=1):
        watch.offer(frame(seq, kind))
    assert watch.overflowed
    assert asyncio.run(watch.get()) is None  # the connection is closed as too slow


def test_history_then_held_live_frames_without_duplicates() -> None:
    watch = Watch()
    watch.begin(TASK, 2)
    watch.offer(frame(5))  # live, while the history is being read
    watch.offer(frame(6))
    watch.end_sync(TASK, [frame(3), frame(4), frame(5)])
    watch.offer(frame(6))  # a replay after a reconnect
    watch.offer(frame(7, "succeeded"))
    watch.offer(frame(8))  # nothing after the terminal event
    assert [f.seq for f in drain(watch)] == [3, 4, 5, 6, 7]


def test_a_result_frame_by_reference_drops_the_image() -> None:
    f = frame(9, "succeeded", result={"status": "SUCCESS", "image_data": "AAAA", "metadata": {}})
    slim = f.by_reference("/r.png")
    assert slim.event["result"] == {"status": "SUCCESS", "metadata": {}, "image_url": "/r.png"}
    assert f.by_reference("/r.png") is slim  # serialized once
    assert f.sse().startswith(b"id: 9\nevent: succeeded\ndata: {")


def test_history_is_queued_whole_however_long_and_never_coalesced() -> None:
    watch = Watch(coalesce_after=4, max_frames=8)
    watch.begin(TASK, 0)
    history = [frame(1, "queued"), frame(2, "started")] + [frame(s) for s in range(3, 40)]
    watch.end_sync(TASK, history)
    assert not watch.overflowed
    assert [f.seq for f in drain(watch)] == list(range(1, 40))
