"""The delivery subsystem: task events from Redis to every client connection.

    Redis pub/sub --> Hub (one connection per api process, a channel per watched task)
        --> Outbox (one per connection: bounded, coalescing, never blocks the hub)
        --> Outlet (SSE, per-task WebSocket, /ws: prepared bytes or an ASGI send)
        --> the client

`Live` holds one api process's parts: the hub, the stall check that bounds every send,
the SSE keepalive, and how to reach connections' transports (none outside uvicorn).
Nothing here knows routes or requests: app/streams.py and app/mux.py open the
connections and hand them an outbox and an outlet.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from starlette.types import Scope

from .frame import Frame
from .hub import CompleteResult, Hub, ReadLog, Subscriptions, Topology
from .keepalive import Keepalive
from .outbox import Outbox
from .outlets import Ending, MuxOutlet, Outlet, SseOutlet, Transport, WsOutlet
from .stalls import Stalls

__all__ = [
    "Ending", "Frame", "Hub", "Live", "MuxOutlet", "Outbox", "Outlet", "SseOutlet",
    "Subscriptions", "Topology", "Transport", "Transports", "WsOutlet",
]


class Transports(Protocol):
    """Where a connection's prepared bytes can be written (app/server.py)."""

    def websocket(self, scope: Scope) -> Transport | None: ...

    def chunked(self, scope: Scope) -> Transport | None: ...


class NoTransports:
    """Outside uvicorn (or a uvicorn whose internals moved): every send goes through ASGI."""

    def websocket(self, scope: Scope) -> Transport | None:
        return None

    def chunked(self, scope: Scope) -> Transport | None:
        return None


@dataclass(eq=False)
class Live:
    """One api process's delivery path."""

    hub: Hub
    stalls: Stalls
    keepalive: Keepalive
    transports: Transports

    @classmethod
    def create(cls, topology: Topology, read_log: ReadLog, complete_result: CompleteResult,
               keepalive_s: int, transports: Transports | None = None) -> Live:
        hub = Hub(topology, read_log, complete_result)
        return cls(hub, Stalls(), Keepalive(keepalive_s), transports or NoTransports())

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The hub connected and the stall and keepalive checks running, for the block."""
        await self.hub.start()
        checks = [
            asyncio.create_task(self.stalls.run(), name="livepix-stalls"),
            asyncio.create_task(self.keepalive.run(), name="livepix-keepalive"),
        ]
        try:
            yield
        finally:
            for check in checks:
                check.cancel()
            await asyncio.gather(*checks, return_exceptions=True)
            await self.hub.stop()
