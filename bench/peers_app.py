"""The peers: the usual Python ways of pushing the same task events, served by uvicorn
with the same settings as `livepix api` (uvloop, httptools, permessage-deflate off).

  sse  sse-starlette, one Redis pub/sub connection per client (the common pattern):
       GET /events/{task} subscribes to the task's livepix channel, sends a `ready`
       event once subscribed, then one SSE event per message.
  sio  python-socketio (ASGI) with its AsyncRedisManager: clients emit ("watch", task)
       and join the task's room; workers emit through RedisManager(write_only=True).
  floor  not a peer but a reference: a bare uvloop server with no ASGI, no JSON, no
       per-connection task. One raw RESP pub/sub connection; each message is framed
       once (a WebSocket frame, an SSE chunk) and the same bytes are written to every
       watcher's transport. What is left is the kernel's cost of a loopback send plus
       Python's loop over the transports: the floor any Python design can reach here.
       Paths: /api/v1/tasks/{task}/ws (WebSocket), /api/v1/tasks/{task}/events (SSE).
       It greets each watcher with a fake `{"seq":1}` instead of the task's history, so
       the clients count one seq gap per connection.

    python -m bench.peers_app sse --port 8101 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
from typing import Any


def sse_app(redis_url: str) -> Any:
    import redis.asyncio as aioredis
    from sse_starlette.sse import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    from livepix.wire import channel

    # one shared client; every pub/sub takes a connection of its own from the pool
    client = aioredis.Redis.from_url(redis_url, max_connections=50_000)

    async def events(request: Request) -> EventSourceResponse:
        task = request.path_params["task"]

        async def stream() -> Any:
            pubsub = client.pubsub()
            await pubsub.subscribe(channel(task))
            try:
                yield {"event": "ready", "data": "{}"}
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        yield {"event": "progress", "data": message["data"].decode()}
            finally:
                await pubsub.unsubscribe()
                await pubsub.aclose()

        return EventSourceResponse(stream(), ping=15)

    return Starlette(routes=[Route("/events/{task}", events)])


def sio_app(redis_url: str) -> Any:
    import socketio

    sio = socketio.AsyncServer(async_mode="asgi", client_manager=socketio.AsyncRedisManager(redis_url),
                               cors_allowed_origins="*", transports=["websocket"])

    @sio.on("watch")  # type: ignore[misc]
    async def watch(sid: str, task: str) -> None:
        await sio.enter_room(sid, task)
        await sio.emit("watching", {"task": task}, to=sid)

    return socketio.ASGIApp(sio)


def floor_server(redis_url: str, port: int) -> None:
    """The reference server described above (runs until SIGTERM)."""
    import asyncio
    import base64
    import hashlib
    import signal
    from urllib.parse import urlsplit

    import uvloop

    from livepix.wire import channel, task_id_of_channel

    watchers: dict[str, set[asyncio.Transport]] = {}
    sse_watchers: dict[str, set[asyncio.Transport]] = {}
    guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    redis_proto: RespSubscriber | None = None

    class RespSubscriber(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = bytearray()
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def subscribe(self, name: str) -> None:
            assert self.transport is not None
            n = name.encode()
            self.transport.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(n), n))

        def data_received(self, data: bytes) -> None:
            buf = self.buf
            buf += data
            pos = 0
            while True:  # *3 $7 message $len channel $len payload (or subscribe acks)
                items: list[bytes] = []
                p = pos
                if len(buf) - p < 4 or buf[p] != 42:  # '*'
                    break
                nl = buf.find(b"\r\n", p)
                if nl < 0:
                    break
                count = int(buf[p + 1 : nl])
                p = nl + 2
                ok = True
                for _ in range(count):
                    nl = buf.find(b"\r\n", p)
                    if nl < 0:
                        ok = False
                        break
                    if buf[p] == 36:  # '$'
                        n = int(buf[p + 1 : nl])
                        if len(buf) < nl + 2 + n + 2:
                            ok = False
                            break
                        items.append(bytes(buf[nl + 2 : nl + 2 + n]))
                        p = nl + 2 + n + 2
                    else:  # ':' integer
                        items.append(bytes(buf[p + 1 : nl]))
                        p = nl + 2
                if not ok:
                    break
                pos = p
                if items and items[0] == b"message":
                    fan_out(task_id_of_channel(items[1].decode()), items[2])
            del buf[:pos]

    def fan_out(task: str, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x81, n]) if n < 126 else bytes([0x81, 126]) + n.to_bytes(2, "big")
        frame = head + payload
        for t in watchers.get(task, ()):
            t.write(frame)
        body = b"event: progress\ndata: " + payload + b"\n\n"
        chunk = b"%x\r\n%s\r\n" % (len(body), body)
        for t in sse_watchers.get(task, ()):
            t.write(chunk)

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = bytearray()
            self.transport: asyncio.Transport | None = None
            self.task = ""
            self.group: dict[str, set[asyncio.Transport]] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            if self.group is not None:
                return  # client frames (pongs, close) are ignored
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            path = head.split(" ", 2)[1]
            parts = path.split("/")  # /api/v1/tasks/{task}/ws
            self.task = parts[4]
            assert self.transport is not None and redis_proto is not None
            first = b'{"seq":1,"type":"queued"}'
            if parts[5] == "ws":
                key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                           if line.lower().startswith("sec-websocket-key"))
                accept = base64.b64encode(hashlib.sha1(key.encode() + guid).digest()).decode()
                self.transport.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                      f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").encode()
                                     + bytes([0x81, len(first)]) + first)
                self.group = watchers
            else:
                body = b"data: " + first + b"\n\n"
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                     b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(body), body))
                self.group = sse_watchers
            if self.task not in watchers and self.task not in sse_watchers:
                redis_proto.subscribe(channel(self.task))
            self.group.setdefault(self.task, set()).add(self.transport)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.group is not None and self.transport is not None:
                self.group.get(self.task, set()).discard(self.transport)

    async def serve() -> None:
        nonlocal redis_proto
        loop = asyncio.get_running_loop()
        url = urlsplit(redis_url)
        _, redis_proto = await loop.create_connection(RespSubscriber, url.hostname, url.port)
        server = await loop.create_server(Client, "127.0.0.1", port, backlog=4096)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        server.close()

    uvloop.run(serve())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers_app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("sse", "sio", "floor"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args()
    if args.kind == "floor":
        floor_server(args.redis, args.port)
        return
    import uvicorn

    app = sse_app(args.redis) if args.kind == "sse" else sio_app(args.redis)
    uvicorn.run(app, host="127.0.0.1", port=args.port, ws_per_message_deflate=False, ws_max_size=64 * 1024,
                log_level="warning", access_log=False, timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
