"""How the api runs under uvicorn: the one module that knows uvicorn.

It builds uvicorn's `Config` (httptools for HTTP, websockets-sansio for WebSocket, a
64 KiB frame limit, no per-message deflate, a bounded graceful shutdown), the
listening socket, the GC tuning and the log redaction, and it owns every private
attribute of uvicorn that livepix reads: the connection state that decides whether an
event's prepared bytes may be written straight to a transport (app/live/outlets.py).
Those attributes are checked once at startup; a uvicorn that moved them gets one
clear warning and the plain ASGI path for every send. Everything else in app/ is
plain Starlette/ASGI.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import re
import socket
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from livepix.config import Settings

from .live import Transport, Transports

log = logging.getLogger(__name__)

WS_MAX_SIZE_BYTES = 64 * 1024
GRACEFUL_SHUTDOWN_S = 5  # SSE streams get app/streams.py's SSE_SHUTDOWN_GRACE_S of it
GC_THRESHOLD_GEN0 = 50_000
# A client that stops reading keeps its socket, and megabytes of kernel buffers, for as
# long as it stays connected (docs/benchmarks.md, F9). The kernel aborts a connection
# whose data stays unacknowledged this long, zero-window probes included...
TCP_USER_TIMEOUT_MS = 30_000
# ... and with a capped send buffer (no autotuning; the kernel doubles it) a send blocks,
# and the 10 s send timeout starts, after ~0.5 MB instead of ~4 MB.
SEND_BUFFER_BYTES = 256 * 1024

SERVER_SEND = "livepix.server_send"  # scope key: uvicorn's own `send` (`KeepServerSend`)

# What the prepared writes read of uvicorn's connection objects.
_WS_STATE = ("handshake_complete", "initial_response", "close_sent", "disconnected", "writable", "transport")
_CYCLE_STATE = ("response_started", "response_complete", "chunked_encoding", "disconnected", "flow", "transport")
_FLOW_STATE = ("write_paused",)


def config(app: ASGIApp, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    """How the api runs under uvicorn (tests serve their apps the same way)."""
    return uvicorn.Config(
        KeepServerSend(app),
        host=host,
        port=port,
        http="httptools",  # the two whose connection state `UvicornTransports` reads
        ws="websockets-sansio",
        ws_max_size=WS_MAX_SIZE_BYTES,
        ws_per_message_deflate=False,  # small messages: deflate costs more than it saves
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        log_level=log_level,
        access_log=False,
    )


class KeepServerSend:
    """Keeps uvicorn's own `send` in each scope, before middleware wraps it: the
    prepared writes find the connection through it. Those bytes pass no middleware: a
    middleware that rewrites response bodies (compression) must not wrap the streams."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[SERVER_SEND] = send
        await self.app(scope, receive, send)


def missing_state(uvicorn_config: uvicorn.Config) -> list[str]:
    """The connection attributes the prepared writes read that this uvicorn lacks,
    found on real (unconnected) protocol objects."""
    loop = asyncio.new_event_loop()
    try:
        ws = WebSocketsSansIOProtocol(uvicorn_config, ServerState(), {}, _loop=loop)
        blank: dict[str, Any] = {name: None for name in inspect.signature(RequestResponseCycle).parameters}
        cycle = RequestResponseCycle(**blank)
        flow = FlowControl(None)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - any change of constructor is a moved internal
        return [f"constructors ({type(exc).__name__}: {exc})"]
    finally:
        loop.close()
    return (
        [f"WebSocketsSansIOProtocol.{a}" for a in _WS_STATE if not hasattr(ws, a)]
        + [f"RequestResponseCycle.{a}" for a in _CYCLE_STATE if not hasattr(cycle, a)]
        + [f"FlowControl.{a}" for a in _FLOW_STATE if not hasattr(flow, a)]
    )


class _Prepared:
    """Writes prepared bytes to a uvicorn connection's transport when uvicorn's own send
    would write them at once."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def _writable(self) -> bool:
        raise NotImplementedError

    def write(self, data: bytes) -> bool:
        if not self._writable() or self._conn.transport.is_closing():
            return False
        self._conn.transport.write(data)
        return True


class _WebSocket(_Prepared):
    __slots__ = ()

    def _writable(self) -> bool:
        p: WebSocketsSansIOProtocol = self._conn
        return (
            p.handshake_complete
            and p.initial_response is None  # not denied with an HTTP response
            and not p.close_sent
            and not p.disconnected
            and p.writable.is_set()  # not paused: uvicorn's send would not wait
        )


class _Chunked(_Prepared):
    __slots__ = ()

    def _writable(self) -> bool:
        c: RequestResponseCycle = self._conn
        return bool(
            c.response_started
            and not c.response_complete
            and c.chunked_encoding  # not a Content-Length response
            and not c.disconnected
            and not c.flow.write_paused  # uvicorn's send would not wait
        )


def _server_of(scope: Scope) -> Any:
    return getattr(scope.get(SERVER_SEND), "__self__", None)


class UvicornTransports(Transports):
    """The transports of uvicorn's httptools and websockets-sansio connections: bytes
    are written when uvicorn's own send would write them at once (the connection open,
    its response under way, its transport not paused); otherwise the caller takes the
    ASGI path, which waits, drops or fails as uvicorn decides."""

    def websocket(self, scope: Scope) -> Transport | None:
        protocol = _server_of(scope)
        return _WebSocket(protocol) if isinstance(protocol, WebSocketsSansIOProtocol) else None

    def chunked(self, scope: Scope) -> Transport | None:
        cycle = _server_of(scope)
        if not isinstance(cycle, RequestResponseCycle) or scope.get("method") == "HEAD":
            return None
        return _Chunked(cycle)


def transports(uvicorn_config: uvicorn.Config) -> Transports | None:
    """`UvicornTransports` if this uvicorn has what they read, else None (one warning)."""
    missing = missing_state(uvicorn_config)
    if missing:
        log.warning(
            "uvicorn %s lacks what livepix's prepared writes read (%s): every event goes "
            "through the ASGI send, slower but correct; pin uvicorn to the release in "
            "pyproject.toml for the fast path", uvicorn.__version__, ", ".join(missing),
        )
        return None
    return UvicornTransports()


class RedactTokens(logging.Filter):
    """Keep `?token=` values (API keys or stream tokens) out of uvicorn's logs."""

    _TOKEN = re.compile(r"(token=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._TOKEN.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def listening_socket(uvicorn_config: uvicorn.Config) -> socket.socket:
    """uvicorn's socket, with options that accepted connections inherit."""
    sock = uvicorn_config.bind_socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
    return sock


def run(settings: Settings) -> int:
    """`livepix api`: serve until SIGTERM or Ctrl-C."""
    from .main import create_app

    app = create_app(settings)
    uvicorn_config = config(app, settings.host, settings.port, settings.log_level)
    app.state.transports = transports(uvicorn_config)
    # Each connection holds hundreds of long-lived objects and each message allocates
    # more: with the default thresholds, full collections stall the loop for 100 ms+
    # (docs/benchmarks.md, F2). Freeze what startup built and collect less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_GEN0, 20, 100)
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(RedactTokens())
    uvicorn.Server(uvicorn_config).run(sockets=[listening_socket(uvicorn_config)])
    return 0
