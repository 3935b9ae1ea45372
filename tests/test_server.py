"""app/server.py against the uvicorn this project installs: prepared writes served the
way `livepix api` serves (app.server.config), read by independent clients (the
websockets client for frames, httpx (h11) for chunks), and the startup check of what
they read. If a uvicorn upgrade moves what app/server.py reads, these fail instead of
the api quietly losing its fast path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis
import uvicorn
import websockets.sync.client as ws_client
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from actors.recorder import Recorder
from app.live.framing import http_chunk, ws_text_frame
from app.server import SERVER_SEND, UvicornTransports, config, missing_state
from livepix.config import load_settings
from tests.clients import SSEStream, metric, submit, ws_url
from tests.conftest import Stack

HOST = "127.0.0.1"
TRANSPORTS = UvicornTransports()


@asynccontextmanager
async def serving(*routes: Any) -> AsyncIterator[int]:
    """An app of `routes` under uvicorn in this loop; yields its port."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    server = uvicorn.Server(config(Starlette(routes=list(routes)), HOST, 0, "warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task


class Raw:
    """A plain ASGI endpoint for a Route (a function would be taken as request -> response)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Any]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


SIZES = [0, 5, 125, 126, 65535, 65536, 200_000]  # each length encoding, both sides of its bounds


def test_websocket_frames_arrive_whole_and_in_order_between_asgi_sends() -> None:
    seen: dict[str, Any] = {}

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        transport = TRANSPORTS.websocket(websocket.scope)
        assert transport is not None
        for size in SIZES:
            assert transport.write(ws_text_frame(("p" * size).encode()))
            await websocket.send_text(f"asgi {size}")
        await websocket.receive()  # the client's close
        seen["after_close"] = transport.write(ws_text_frame(b"late"))

    async def main() -> None:
        async with serving(WebSocketRoute("/ws", endpoint)) as port:
            async with connect(f"ws://{HOST}:{port}/ws", max_size=None) as ws:
                for size in SIZES:
                    assert await ws.recv() == "p" * size
                    assert await ws.recv() == f"asgi {size}"
            for _ in range(100):
                if "after_close" in seen:
                    break
                await asyncio.sleep(0.02)

    asyncio.run(main())
    assert seen["after_close"] is False


def test_a_websocket_whose_client_stops_reading_refuses_writes_until_it_drains() -> None:
    seen: dict[str, Any] = {}
    pad = "x" * 65_000

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        transport = TRANSPORTS.websocket(websocket.scope)
        assert transport is not None
        n = 0
        while transport.write(ws_text_frame(f"{n:06d}{pad}".encode())):
            n += 1
            assert n < 5_000, "the transport never paused"
        seen["refused_after"] = n
        await websocket.send_text(f"{n:06d}{pad}")  # uvicorn's send waits for the client
        n += 1
        seen["after_drain"] = transport.write(ws_text_frame(f"{n:06d}{pad}".encode()))
        n += 1
        await websocket.send_text("end")
        await websocket.receive()

    async def main() -> list[str]:
        async with (
            serving(WebSocketRoute("/ws", endpoint)) as port,
            connect(f"ws://{HOST}:{port}/ws", max_size=None, max_queue=1) as ws,
        ):
            while "refused_after" not in seen:
                await asyncio.sleep(0.05)  # not reading: buffers fill up
            received = []
            while (message := await ws.recv()) != "end":
                received.append(message[:6])
            return received

    received = asyncio.run(main())
    assert seen["refused_after"] > 0 and seen["after_drain"] is True
    assert received == [f"{n:06d}" for n in range(seen["refused_after"] + 2)]


def test_chunks_join_the_asgi_body_of_a_chunked_response_only_while_it_is_open() -> None:
    seen: dict[str, Any] = {}

    async def chunks(scope: Scope, receive: Receive, send: Send) -> None:
        transport = TRANSPORTS.chunked(scope)
        assert transport is not None
        seen["before_start"] = transport.write(http_chunk(b"early,"))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        seen["open"] = transport.write(http_chunk(b"one,"))
        await send({"type": "http.response.body", "body": b"two,", "more_body": True})
        transport.write(http_chunk(b"three,"))
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        seen["after_end"] = transport.write(http_chunk(b"late,"))

    async def sized(scope: Scope, receive: Receive, send: Send) -> None:
        transport = TRANSPORTS.chunked(scope)
        assert transport is not None
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
        seen["sized"] = transport.write(http_chunk(b"no,"))
        await send({"type": "http.response.body", "body": b"yes"})

    async def head(scope: Scope, receive: Receive, send: Send) -> None:
        seen["head"] = TRANSPORTS.chunked(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> tuple[str, str]:
        routes = Route("/chunks", Raw(chunks)), Route("/sized", Raw(sized)), Route("/head", Raw(head), methods=["HEAD"])
        async with serving(*routes) as port, httpx.AsyncClient(base_url=f"http://{HOST}:{port}") as client:
            chunked = await client.get("/chunks")
            plain = await client.get("/sized")
            assert (await client.head("/head")).status_code == 200
            return chunked.text, plain.text

    chunked, plain = asyncio.run(main())
    assert chunked == "one,two,three,"
    assert plain == "yes"
    assert seen == {"before_start": False, "open": True, "after_end": False, "sized": False, "head": None}


def test_other_servers_get_no_transport_and_keep_the_asgi_path() -> None:
    async def send(message: Any) -> None:
        pass

    for scope in ({"type": "websocket"}, {"type": "websocket", SERVER_SEND: send}):
        assert TRANSPORTS.websocket(scope) is None
    assert TRANSPORTS.chunked({"type": "http", "method": "GET", SERVER_SEND: send}) is None


@pytest.mark.parametrize("stream", ["sse", "ws", "mux"])
def test_live_events_reach_watchers_through_prepared_writes(new_stack: Stack, stream: str) -> None:
    url = new_stack.add_api()
    task_id = submit(url, {"task_type": "image_generation", "prompt": "prepared"})
    recorder = Recorder(redis.Redis.from_url(new_stack.redis_url), load_settings(), "test-worker")
    first = recorder.start(task_id, "gpu")
    assert first > 0
    before = prepared_total(url)
    with contextlib.ExitStack() as opened:
        if stream == "sse":
            sse = SSEStream(url, task_id, query=f"?since={first}")
            opened.callback(sse.close)
            receive: Callable[[], dict[str, Any] | None] = sse.next_event
        else:
            path = "/ws" if stream == "mux" else f"/tasks/{task_id}/ws?since={first}&inline=0"
            ws = opened.enter_context(ws_client.connect(ws_url(url, path), open_timeout=10, max_size=None))
            if stream == "mux":
                ws.send(json.dumps({"op": "subscribe", "task_id": task_id, "since": first}))

            def receive() -> dict[str, Any] | None:
                while True:
                    message = json.loads(ws.recv(timeout=30))
                    if "seq" in message:
                        return message

        time.sleep(0.5)  # joined, history sent: the connection waits for live events
        for step in range(1, 6):
            recorder.progress(task_id, step * 10, "Denoising", preview="A" * 70_000 if step == 3 else None)
            event = receive()
            assert event is not None and event["type"] == "progress" and event["seq"] == first + step
            assert event["progress"] == step * 10
            assert len(event.get("preview", "")) == (70_000 if step == 3 else 0)
            time.sleep(0.1)
    assert prepared_total(url) == before + 5


def prepared_total(url: str) -> float:
    return metric(url, "livepix_deliveries_prepared_total")


def test_the_installed_uvicorn_has_what_the_prepared_writes_read() -> None:
    assert missing_state(config(Starlette(), HOST, 0)) == []


def test_a_uvicorn_whose_internals_moved_gets_the_asgi_path_and_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from app import server

    monkeypatch.setattr(server, "_WS_STATE", (*server._WS_STATE, "moved_in_a_later_release"))
    with caplog.at_level("WARNING", logger="app.server"):
        assert server.transports(config(Starlette(), HOST, 0)) is None
    (record,) = [r for r in caplog.records if r.name == "app.server"]
    assert "WebSocketsSansIOProtocol.moved_in_a_later_release" in record.getMessage()
