"""The hub's fan-out to a big channel lets the event loop run between slices, and still
hands every outbox its frames in order, across a reconnect replay too."""

from __future__ import annotations

import asyncio

from app.live import Frame, Hub, Outbox
from app.live.hub import _Channel
from app.live.slices import SLICE
from livepix.storage import OneNode
from livepix.wire import channel

TASK = "8c5e0d1e-4c1c-4f0e-9b7a-2f1d7c9a6b10"
WATCHERS = 3 * SLICE + 7


def event(seq: int) -> str:
    return f'{{"task_id": "{TASK}", "seq": {seq}, "type": "progress", "progress": {seq}}}'


class FromRedis:
    """The link a message arrives on (the hub reads only its node's name)."""

    node = "redis"


async def publish(hub: Hub, seq: int) -> None:
    await hub.published(FromRedis(), channel(TASK), event(seq).encode())  # type: ignore[arg-type]


class Recording(Outbox):
    """A watch whose connection's sender always waits: every frame goes out through
    `direct`, in the order the watch offers it."""

    def __init__(self, log: list[tuple[Outbox, int]]) -> None:
        super().__init__()
        self.got: list[int] = []

        def direct(frame: Frame) -> None:
            self.got.append(frame.seq)
            log.append((self, frame.seq))

        self.direct = direct
        self._waiter = asyncio.get_running_loop().create_future()


def hub_with(watches: list[Outbox]) -> tuple[Hub, _Channel]:
    async def no_log(task_id: str, since: int) -> list[str]:
        return []

    async def as_is(task_id: str, text: str) -> str:
        return text

    hub = Hub(OneNode("redis://unused:1"), no_log, as_is)
    ch = hub._channels[channel(TASK)] = _Channel(TASK, node="redis")
    for watch in watches:
        ch.outboxes.add(watch)
        watch.begin(TASK, 0)
        watch.end_sync(TASK, [])
    return hub, ch


def test_a_big_fan_out_lets_other_work_run_and_keeps_each_watch_in_order() -> None:
    async def main() -> None:
        log: list[tuple[Outbox, int]] = []
        watches = [Recording(log) for _ in range(WATCHERS)]
        hub, _ = hub_with(list(watches))
        ran_at: list[int] = []

        async def other_request() -> None:
            ran_at.append(len(log))

        for seq in (1, 2):
            asyncio.get_running_loop().create_task(other_request())
            await publish(hub, seq)
        assert all(w.got == [1, 2] for w in watches)
        assert hub.offered == 2 * WATCHERS
        # the other task ran in the middle of the first fan-out, not after both
        assert 0 < ran_at[0] < WATCHERS, ran_at

    asyncio.run(main())


def test_frames_arriving_during_a_replay_wait_for_it_and_none_is_lost_or_reordered() -> None:
    async def main() -> None:
        log: list[tuple[Outbox, int]] = []
        watches = [Recording(log) for _ in range(WATCHERS)]
        hub, ch = hub_with(list(watches))
        await publish(hub, 1)

        async def read_log(task_id: str, since: int) -> list[str]:
            assert since == 1
            return [event(2), event(3)]

        hub._read_log = read_log
        ch.held = []  # as after a reconnect: live frames wait for the replay
        replay = asyncio.get_running_loop().create_task(hub._replay(channel(TASK), ch))
        await asyncio.sleep(0)  # the replay's log read
        await asyncio.sleep(0)  # the replay is part-way through a fan-out
        await publish(hub, 4)  # live, meanwhile: held
        assert not replay.done() and ch.held is not None and [f.seq for f in ch.held] == [4]
        await publish(hub, 5)
        await replay
        assert ch.held is None
        await publish(hub, 6)  # live again
        assert all(w.got == [1, 2, 3, 4, 5, 6] for w in watches)

    asyncio.run(main())


def test_a_replay_superseded_by_a_later_reconnect_leaves_the_hold_to_the_later_one() -> None:
    async def main() -> None:
        log: list[tuple[Outbox, int]] = []
        watches = [Recording(log) for _ in range(3)]
        hub, ch = hub_with(list(watches))
        reading = asyncio.Event()

        async def slow_log(task_id: str, since: int) -> list[str]:
            await reading.wait()
            return [event(1)]

        hub._read_log = slow_log
        ch.held = []
        first = asyncio.get_running_loop().create_task(hub._replay(channel(TASK), ch))
        await asyncio.sleep(0)
        ch.held = []  # another reconnect: its own replay will follow
        reading.set()
        await first
        assert ch.held == [] and all(w.got == [] for w in watches)

    asyncio.run(main())


def test_events_pub_sub_lost_are_read_from_the_log_before_the_next_one() -> None:
    async def main() -> None:
        log: list[tuple[Outbox, int]] = []
        watches = [Recording(log) for _ in range(3)]
        hub, _ = hub_with(list(watches))
        reads: list[int] = []

        async def read_log(task_id: str, since: int) -> list[str]:
            reads.append(since)
            return [event(seq) for seq in range(since + 1, 5)]

        hub._read_log = read_log
        await publish(hub, 1)
        await publish(hub, 4)  # 2 and 3 never came
        await publish(hub, 5)
        assert reads == [1] and hub.gaps == 1
        assert all(w.got == [1, 2, 3, 4, 5] for w in watches)

    asyncio.run(main())
