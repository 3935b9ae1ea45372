"""Prepared writes: a live event's bytes on the wire, built once per event and written
straight to the transport of each connection that can take them at once.

Through ASGI, every watcher of an event pays again for the same work: Starlette's and
uvicorn's send layers, framing the same payload (a WebSocket frame header, an HTTP
chunk), copying it. `livepix api` runs uvicorn with httptools for HTTP and
websockets-sansio for WebSocket (livepix/cli.py). For their connections,
`websocket_transport` and `chunked_transport` give a `Transport` whose `write` puts
prepared bytes on the socket when uvicorn's own send would write them at once: the
connection is open, its response under way (the WebSocket accepted; the SSE response
started, chunked), and its transport not paused. Otherwise `write` returns False and
the caller takes the ASGI path, which waits, drops or fails as uvicorn decides. Under
any other server the functions return None and the ASGI path is the only one.

The WebSocket frames are what uvicorn would send: final, unmasked, no extension
(livepix turns per-message deflate off). A frame goes out whole in one `write`, so
uvicorn's own frames (pings, close) never land inside one.

Measured: 26.8 -> 18.0 us of api CPU per WebSocket delivery at 1,000 watchers
(docs/benchmarks.md, F13).
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

SERVER_SEND = "livepix.server_send"  # scope key: the server's own `send` (app.main.App)


class Transport(Protocol):
    def write(self, data: bytes) -> bool:
        """Write `data` now and return True, or return False (nothing written)."""


def ws_text_frame(payload: bytes) -> bytes:
    """`payload` (UTF-8) as one final, unmasked text frame (RFC 6455, section 5.2)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = b"\x81\x7e" + size.to_bytes(2, "big")
    else:
        header = b"\x81\x7f" + size.to_bytes(8, "big")
    return header + payload


def http_chunk(body: bytes) -> bytes:
    """`body` as one chunk of a chunked HTTP/1.1 response (RFC 9112, section 7.1).
    Never empty: an empty chunk ends the response."""
    if not body:
        raise ValueError("an empty chunk would end the response")
    return b"%x\r\n%b\r\n" % (len(body), body)


class _WebSocket:
    __slots__ = ("_protocol",)

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    def write(self, data: bytes) -> bool:
        p = self._protocol
        if (
            not p.handshake_complete
            or p.initial_response is not None  # denied with an HTTP response
            or p.close_sent
            or p.disconnected
            or not p.writable.is_set()  # paused: uvicorn's send would wait
            or p.transport.is_closing()
        ):
            return False
        p.transport.write(data)
        return True


class _Chunked:
    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle

    def write(self, data: bytes) -> bool:
        c = self._cycle
        if (
            not c.response_started
            or c.response_complete
            or not c.chunked_encoding  # a Content-Length response
            or c.disconnected
            or c.flow.write_paused  # uvicorn's send would wait
            or c.transport.is_closing()
        ):
            return False
        c.transport.write(data)
        return True


def _server_of(scope: Scope) -> Any:
    return getattr(scope.get(SERVER_SEND), "__self__", None)


def websocket_transport(scope: Scope) -> Transport | None:
    """The transport of this WebSocket, for frames from `ws_text_frame`."""
    protocol = _server_of(scope)
    return _WebSocket(protocol) if isinstance(protocol, WebSocketsSansIOProtocol) else None


def chunked_transport(scope: Scope) -> Transport | None:
    """The transport of this HTTP response, for chunks from `http_chunk`."""
    cycle = _server_of(scope)
    if not isinstance(cycle, RequestResponseCycle) or scope.get("method") == "HEAD":
        return None
    return _Chunked(cycle)
