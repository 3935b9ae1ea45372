"""The slow-client policy of an outbox (pure logic, no I/O)."""

from __future__ import annotations

import asyncio

from app.live import Frame, Outbox
from livepix.wire import dumps

TASK = "0b0e6f3a-1111-4c4c-8888-123456789abc"


def frame(seq: int, type: str = "progress", **extra: object) -> Frame:
    event = {"task_id": TASK, "seq": seq, "type": type, **extra}
    return Frame.parse(dumps(event))


def drain(outbox: Outbox) -> list[Frame]:
    async def run() -> list[Frame]:
        out = []
        while outbox.pending():
            got = await outbox.get()
            assert got is not None
            out.append(got)
        return out

    return asyncio.run(run())


def following(since: int = 0, **limits: int) -> Outbox:
    outbox = Outbox(**limits)
    outbox.begin(TASK, since)
    outbox.end_sync(TASK, [])
    return outbox


def test_a_fast_client_gets_every_event_in_order() -> None:
    outbox = following()
    for seq in range(1, 11):
        outbox.offer(frame(seq))
    assert [f.seq for f in drain(outbox)] == list(range(1, 11))


def test_progress_is_coalesced_latest_wins_once_the_client_falls_behind() -> None:
    outbox = following(coalesce_after=4, max_frames=100)
    outbox.offer(frame(1, "queued"))
    outbox.offer(frame(2, "started"))
    for seq in range(3, 50):
        outbox.offer(frame(seq, preview="abc"))
    outbox.offer(frame(50, "succeeded"))
    got = drain(outbox)
    seqs = [f.seq for f in got]
    assert seqs == sorted(seqs) and seqs[:2] == [1, 2] and seqs[-1] == 50
    assert len(got) <= 8 and outbox.coalesced > 0
    assert got[-2].seq == 49  # the latest progress survived
    assert got[-2].event is not None and "preview" not in got[-2].event  # previews go first under pressure
    assert_no_gap(got)


def test_non_droppable_events_overflow_the_outbox_instead_of_being_lost() -> None:
    outbox = following(coalesce_after=2, max_frames=3)
    for seq, kind in enumerate(["queued", "started", "queued", "queued"], start=1):
        outbox.offer(frame(seq, kind))
    assert outbox.overflowed
    assert asyncio.run(outbox.get()) is None  # the connection is closed as too slow


def test_history_then_held_live_frames_without_duplicates() -> None:
    outbox = Outbox()
    outbox.begin(TASK, 2)
    outbox.offer(frame(5))  # live, while the history is being read
    outbox.offer(frame(6))
    outbox.end_sync(TASK, [frame(3), frame(4), frame(5)])
    outbox.offer(frame(6))  # a replay after a reconnect
    outbox.offer(frame(7, "succeeded"))
    outbox.offer(frame(8))  # nothing after the terminal event
    assert [f.seq for f in drain(outbox)] == [3, 4, 5, 6, 7]


def test_a_result_frame_by_reference_drops_the_image() -> None:
    f = frame(9, "succeeded", result={"status": "SUCCESS", "image_data": "AAAA", "metadata": {}})
    slim = f.by_reference("/r.png")
    assert slim.event is not None and slim.event["result"] == {"status": "SUCCESS", "metadata": {}, "image_url": "/r.png"}
    assert f.by_reference("/r.png") is slim  # serialized once
    assert f.sse().startswith(b"id: 9\nevent: succeeded\ndata: {")


def test_history_is_queued_whole_however_long_and_never_coalesced() -> None:
    outbox = Outbox(coalesce_after=4, max_frames=8)
    outbox.begin(TASK, 0)
    history = [frame(1, "queued"), frame(2, "started")] + [frame(s) for s in range(3, 40)]
    outbox.end_sync(TASK, history)
    assert not outbox.overflowed
    assert [f.seq for f in drain(outbox)] == list(range(1, 40))


def assert_no_gap(frames: list[Frame], start: int = 1) -> None:
    """Every seq from `start` on either arrived or is named by a later frame's `replaces`."""
    seen: list[int] = []
    for f in frames:
        assert f.event is not None
        replaced = f.event.get("replaces", [])
        assert replaced == sorted(replaced) and all(s < f.seq for s in replaced)
        assert "replaces" in f.text or not replaced  # the client gets it on the wire
        seen += [*replaced, f.seq]
    assert seen == list(range(start, start + len(seen))), seen


def test_a_coalesced_progress_names_the_seqs_it_replaces() -> None:
    outbox = following(coalesce_after=1, max_frames=100)
    outbox.offer(frame(1, "queued"))  # one queued frame: the outbox is now pressed
    for seq in range(2, 6):
        outbox.offer(frame(seq))
    got = drain(outbox)
    # 2 took the task's progress slot; 3, 4 and 5 coalesced into it, latest wins
    assert [f.seq for f in got] == [1, 5]
    assert got[1].event is not None and got[1].event["replaces"] == [2, 3, 4]
    assert got[0].event is not None and "replaces" not in got[0].event
    assert_no_gap(got)


def test_a_progress_with_nothing_to_replace_in_a_full_outbox_is_named_by_the_next_frame() -> None:
    outbox = Outbox(coalesce_after=1, max_frames=2)
    for task in ("a", "b"):
        outbox.begin(task, 0)
        outbox.end_sync(task, [])
    outbox.offer(Frame.parse(dumps({"task_id": "a", "seq": 1, "type": "queued"})))
    outbox.offer(Frame.parse(dumps({"task_id": "b", "seq": 1, "type": "queued"})))  # full
    outbox.offer(Frame.parse(dumps({"task_id": "a", "seq": 2, "type": "progress"})))  # not queued
    outbox.offer(Frame.parse(dumps({"task_id": "a", "seq": 3, "type": "progress"})))  # not queued either
    assert outbox.dropped == 2 and not outbox.overflowed
    drain(outbox)  # the client catches up
    outbox.offer(Frame.parse(dumps({"task_id": "a", "seq": 4, "type": "succeeded"})))
    (last,) = drain(outbox)
    assert last.seq == 4 and last.event is not None and last.event["replaces"] == [2, 3]


def test_under_any_pressure_no_seq_is_ever_skipped_silently() -> None:
    import random

    rng = random.Random(7)
    pressure = {"coalesced": 0, "dropped": 0, "checked": 0}
    for _ in range(200):
        outbox = Outbox(coalesce_after=rng.randint(1, 6), max_frames=rng.randint(6, 12))
        tasks = [f"t{i}" for i in range(rng.randint(1, 4))]
        for task in tasks:
            outbox.begin(task, 0)
            outbox.end_sync(task, [])
        got: list[Frame] = []
        seqs = dict.fromkeys(tasks, 0)
        for step in range(60):
            task = rng.choice(tasks)
            seqs[task] += 1
            kind = "progress" if rng.random() < 0.85 else "queued"
            outbox.offer(Frame.parse(dumps({"task_id": task, "seq": seqs[task], "type": kind})))
            if rng.random() < 0.2 and not outbox.overflowed:
                got += drain(outbox)
        for task in tasks:
            seqs[task] += 1
            outbox.offer(Frame.parse(dumps({"task_id": task, "seq": seqs[task], "type": "succeeded"})))
        if outbox.overflowed:
            continue  # closed as too slow: the client resumes from its last seq
        got += drain(outbox)
        for task in tasks:
            assert_no_gap([f for f in got if f.task_id == task])
        pressure["coalesced"] += outbox.coalesced
        pressure["dropped"] += outbox.dropped
        pressure["checked"] += 1
    assert min(pressure.values()) > 20, pressure  # the cases do put the policy to work
