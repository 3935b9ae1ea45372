"""Outlets (pure asyncio, an ASGI `send` that the test controls): a frame goes out at
once from the fan-out, or begins there and is finished in order by the pump; a
delivery is recorded once; a stalled send ends the stream as too slow."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from starlette.types import Message

from app.live import Ending, Frame, Hub, Outbox, SseOutlet, Subscriptions, WsOutlet
from app.live.counters import Counts
from app.live.outlets import Resume
from app.live.stalls import Stalls
from livepix.storage import OneNode


def frame(seq: int, type: str = "progress") -> Frame:
    return Frame.parse(f'{{"task_id": "t", "seq": {seq}, "type": "{type}", "ts": 1.0}}')


def as_is(f: Frame) -> Frame:
    return f


async def _nothing(task_id: str, since: int | str) -> Any:
    raise AssertionError("these tests read no log")


def following(outbox: Outbox) -> Subscriptions:
    """The outbox's subscriptions, on a hub that is never started (no task followed)."""
    return Subscriptions(Hub(OneNode("redis://unused:1"), _nothing, _nothing), outbox)


class Wire:
    """The connection's ASGI send: records what it sends; `gate` makes sends wait."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.gate: asyncio.Event | None = None

    async def send(self, message: Message) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.sent.append(message.get("text") or message["body"].decode())


class Written:
    """A transport that takes prepared bytes while `open`."""

    def __init__(self) -> None:
        self.open = True
        self.data: list[bytes] = []

    def write(self, data: bytes) -> bool:
        if self.open:
            self.data.append(data)
        return self.open


def test_a_frame_goes_out_as_prepared_bytes_when_the_transport_takes_them() -> None:
    async def main() -> None:
        wire, transport = Wire(), Written()
        outlet = WsOutlet(following(Outbox()), Stalls(), wire.send, transport, as_is)
        before = (Counts.delivered, Counts.prepared)
        assert outlet.now(frame(1)) is None
        assert transport.data == [frame(1).ws_frame()] and wire.sent == []
        assert (Counts.delivered, Counts.prepared) == (before[0] + 1, before[1] + 1)
        transport.open = False  # paused: the ASGI send instead
        assert outlet.now(frame(2)) is None
        assert wire.sent == [frame(2).text] and Counts.delivered == before[0] + 2

    asyncio.run(main())


def test_a_send_that_waits_is_finished_in_order_by_the_pump_and_recorded_then() -> None:
    async def main() -> None:
        wire = Wire()
        wire.gate = asyncio.Event()
        outbox = Outbox()
        outlet = SseOutlet(following(outbox), Stalls(), wire.send, None, as_is)
        outbox.begin("t", 0)
        outbox.end_sync("t", [])
        pump = asyncio.create_task(outlet.pump())
        await asyncio.sleep(0)  # the pump idles: live frames go out from the fan-out
        before = Counts.delivered
        outbox.offer(frame(1))  # begun, waits on the gate
        outbox.offer(frame(2))  # queued behind it
        assert wire.sent == [] and Counts.delivered == before
        wire.gate.set()
        outbox.offer(frame(3, "succeeded"))
        assert await asyncio.wait_for(pump, 5) is Ending.DONE
        assert [s.split("\n")[0] for s in wire.sent] == ["id: 1", "id: 2", "id: 3"]
        assert Counts.delivered == before + 3

    asyncio.run(main())


def test_cancelling_the_pump_runs_a_begun_send_s_cleanup() -> None:
    async def main() -> None:
        cleaned: list[str] = []

        async def send(message: Message) -> None:
            try:
                await asyncio.Event().wait()
            finally:
                cleaned.append("cleanup")

        outbox = Outbox()
        outlet = WsOutlet(following(outbox), Stalls(), send, None, as_is)
        resume = outlet.now(frame(1))
        assert isinstance(resume, Resume)
        outbox._out.append(resume)
        pump = asyncio.create_task(outlet.pump())
        await asyncio.sleep(0.01)
        pump.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pump
        assert cleaned == ["cleanup"]

    asyncio.run(main())


def test_live_frames_go_out_directly_only_while_the_pump_idles() -> None:
    async def main() -> None:
        wire = Wire()
        outbox = Outbox()
        outlet = WsOutlet(following(outbox), Stalls(), wire.send, None, as_is)
        outbox.begin("t", 0)
        outbox.end_sync("t", [frame(1)])  # history is always queued
        outbox.offer(frame(2))  # the pump has not taken the history yet: queued
        assert wire.sent == [] and outbox.pending() == 2
        pump = asyncio.create_task(outlet.pump())
        await asyncio.sleep(0)
        assert wire.sent == [frame(1).text, frame(2).text] and outbox.pending() == 0
        outbox.offer(frame(3))  # the pump idles: sent from here, nothing queued
        assert wire.sent[-1] == frame(3).text and outbox.pending() == 0
        pump.cancel()

    asyncio.run(main())


def test_a_send_blocked_past_the_limit_ends_the_stream_as_too_slow() -> None:
    async def main() -> None:
        wire = Wire()
        stalls = Stalls(limit_s=0.05)
        outbox = Outbox()
        outlet = SseOutlet(following(outbox), stalls, wire.send, None, as_is)
        outbox.begin("t", 0)
        outbox.end_sync("t", [frame(1)])
        wire.gate = asyncio.Event()  # the client stopped reading
        before = Counts.stalled
        pump = asyncio.create_task(outlet.pump())
        await asyncio.sleep(0.1)
        assert stalls.check(time.monotonic()) == 1
        assert await asyncio.wait_for(pump, 5) is Ending.TOO_SLOW
        assert Counts.stalled == before + 1

    asyncio.run(main())


def test_an_overflowed_outbox_ends_the_stream_as_too_slow() -> None:
    async def main() -> None:
        outbox = Outbox()
        outlet = WsOutlet(following(outbox), Stalls(), Wire().send, None, as_is)
        outbox.fail()
        assert await outlet.pump() is Ending.TOO_SLOW

    asyncio.run(main())
