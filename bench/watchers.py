"""The client side of the benchmarks: raw asyncio protocols on uvloop for the per-task
WebSocket, SSE, the seed-style status poll, Socket.IO and submits, with the counters
and the latency histogram they fill. `bench.loadgen` and `bench.churngen` run them.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import random
import re
import socket
import struct
import time
from typing import Any

HOST = "127.0.0.1"


T_PUB = re.compile(rb'"t_pub":([0-9.]+)')


SEQ = re.compile(rb'"seq":(\d+)')


_BPD = 200  # histogram bins per decade; must match bench.common


_MIN_EXP = -6


_NBINS = _BPD * 8


_log10 = math.log10


PATHS = {
    "ws": "/api/v1/tasks/{task}/ws",
    "sse": "/api/v1/tasks/{task}/events",
    "poll": "/api/v1/tasks/{task}/status/",
    "sio": "/socket.io/?EIO=4&transport=websocket",
    "submit": "/api/v1/tasks/submit/",
}


class Stats:
    def __init__(self) -> None:
        self.reset()
        self.recording = True

    def reset(self) -> None:
        self.msgs = 0
        self.timed = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.requests = 0
        self.closed = 0
        self.gaps = 0
        self.dups = 0
        self.hist: dict[int, int] = {}
        self.rtt: dict[int, int] = {}
        self.learned: list[tuple[int, float]] = []
        self.statuses: dict[str, int] = {}
        self.t_reset = time.time()

    def latency(self, payload: bytes | bytearray | memoryview) -> None:
        m = T_PUB.search(payload)
        if m is None:
            return
        lat = time.time() - float(m.group(1))
        self.timed += 1
        i = int((_log10(lat) - _MIN_EXP) * _BPD) if lat > 1e-6 else 0
        if i >= _NBINS:
            i = _NBINS - 1
        h = self.hist
        h[i] = h.get(i, 0) + 1

    def add_rtt(self, seconds: float) -> None:
        i = int((_log10(seconds) - _MIN_EXP) * _BPD) if seconds > 1e-6 else 0
        i = min(i, _NBINS - 1)
        self.rtt[i] = self.rtt.get(i, 0) + 1


STATS = Stats()


def _check_seq(conn: Any, payload: bytes | bytearray) -> None:
    m = SEQ.search(payload)
    if m is None:
        return
    seq = int(m.group(1))
    last = conn.last_seq
    if last and seq > last + 1:
        STATS.gaps += 1
    elif last and seq <= last:
        STATS.dups += 1
    conn.last_seq = seq


class Conn(asyncio.Protocol):
    """Shared plumbing: handshake buffering, established future, byte counts."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.established: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buf = bytearray()
        self.open = False
        self.last_seq = 0
        self.stalled = False
        self.received = 0  # events on this connection
        self.lost = False  # the TCP connection ended
        self.close_code: int | None = None  # WebSocket close code from the server; -1: SSE stream ended

    def count_event(self, payload: bytes | bytearray) -> None:
        """One task event arrived (the first one, the history, makes the watch live)."""
        if not self.established.done():
            self.established.set_result(None)
        self.received += 1
        if STATS.recording:
            STATS.msgs += 1
            STATS.latency(payload)
        _check_seq(self, payload)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]
        STATS.bytes_out += len(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.established.done():
            self.established.set_exception(ConnectionError(f"closed before established: {exc}"))
        elif self.open:
            STATS.closed += 1
        self.open = False

    def fail(self, why: str) -> None:
        if not self.established.done():
            self.established.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()

    def _headers(self, data: bytes) -> bytes | None:
        """Buffer the response head; return what follows it once complete."""
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buf[:end])
        rest = bytes(self.buf[end + 4 :])
        self.buf = bytearray()
        self.head = head
        return rest

    def abort(self) -> None:
        """Close without TIME_WAIT (RST): thousands of closes must not eat ports."""
        if self.transport is None or self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.transport.abort()


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + mask + masked


class WS(Conn):
    def __init__(self, path: str, port: int) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        super().__init__(
            (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        )
        self.frag = bytearray()

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            frame = ws_frame(opcode, payload)
            self.transport.write(frame)
            STATS.bytes_out += len(frame)

    def data_received(self, data: bytes) -> None:
        STATS.bytes_in += len(data)
        if not self.open:
            rest = self._headers(data)
            if rest is None:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.fail(self.head.split(b"\r\n", 1)[0].decode(errors="replace"))
                return
            self.open = True
            self.on_open()
            if not rest:
                return
            data = rest
        buf = self.buf
        if buf:
            buf += data
            view = buf
        else:
            view = data
        pos = 0
        end = len(view)
        while end - pos >= 2:
            b0 = view[pos]
            b1 = view[pos + 1]
            n = b1 & 0x7F
            p = pos + 2
            if n == 126:
                if end - p < 2:
                    break
                n = (view[p] << 8) | view[p + 1]
                p += 2
            elif n == 127:
                if end - p < 8:
                    break
                n = int.from_bytes(view[p : p + 8], "big")
                p += 8
            if b1 & 0x80:  # a masked server frame: not expected, but skip the key
                p += 4
            if end - p < n:
                break
            payload = view[p : p + n]
            pos = p + n
            opcode = b0 & 0x0F
            if opcode == 0:
                self.frag += payload
                if b0 & 0x80:
                    self.on_message(bytes(self.frag))
                    self.frag = bytearray()
            elif opcode in (1, 2):
                if b0 & 0x80:
                    self.on_message(payload)
                else:
                    self.frag = bytearray(payload)
            elif opcode == 9:
                self.send(10, bytes(payload))
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.send(8, bytes(payload[:2]))
                self.open = False
                STATS.closed += 1
                if self.transport is not None:
                    self.transport.close()
                return
        if pos < end:
            self.buf = bytearray(view[pos:])
        elif buf:
            self.buf = bytearray()

    def on_open(self) -> None:
        pass  # established at the first event (the task's history): the watch is live

    def on_message(self, payload: bytes | bytearray) -> None:
        self.count_event(payload)


class SocketIO(WS):
    """Engine.IO v4 over a WebSocket: answer pings, connect the default namespace,
    emit ("watch", task), count events."""

    def __init__(self, path: str, port: int, task: str) -> None:
        super().__init__(path, port)
        self.task = task

    def on_open(self) -> None:
        pass  # established once the server acknowledges the watch

    def on_message(self, payload: bytes | bytearray) -> None:
        kind = payload[:1]
        if kind == b"4":
            if payload[1:2] == b"2":  # an event
                if payload.startswith(b'42["watching"'):
                    if not self.established.done():
                        self.established.set_result(None)
                    return
                if STATS.recording:
                    STATS.msgs += 1
                    STATS.latency(payload)
            elif payload[1:2] == b"0":  # namespace connected
                self.send(1, b'42["watch","' + self.task.encode() + b'"]')
        elif kind == b"0":  # engine.io open
            self.send(1, b"40")
        elif kind == b"2":  # engine.io ping
            self.send(1, b"3")


class SSE(Conn):
    def __init__(self, path: str, port: int) -> None:
        super().__init__(
            (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n"
             "Cache-Control: no-cache\r\n\r\n").encode()
        )
        self.raw = bytearray()  # chunked body not yet decoded
        self.text = bytearray()  # decoded body not yet split into events
        self.need = 0  # payload bytes left in the current chunk
        self.skip = 0  # CRLF bytes left after the current chunk
        self.sep = b""  # the blank line ending an event: b"\n\n" or b"\r\n\r\n" (sse-starlette's default)

    def data_received(self, data: bytes) -> None:
        STATS.bytes_in += len(data)
        if not self.open:
            rest = self._headers(data)
            if rest is None:
                return
            first = self.head.split(b"\r\n", 1)[0]
            if b" 200 " not in first + b" ":
                self.fail(first.decode(errors="replace"))
                return
            if b"transfer-encoding: chunked" not in self.head.lower():
                self.fail("expected a chunked SSE response")
                return
            self.open = True  # established at the first event (the task's history)
            data = rest
        raw = self.raw
        raw += data
        pos = 0
        end = len(raw)
        text = self.text
        while pos < end:
            if self.skip:
                k = min(self.skip, end - pos)
                self.skip -= k
                pos += k
                continue
            if self.need:
                k = min(self.need, end - pos)
                text += raw[pos : pos + k]
                self.need -= k
                pos += k
                if not self.need:
                    self.skip = 2
                continue
            nl = raw.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(raw[pos:nl].split(b";", 1)[0], 16)
            pos = nl + 2
            if size == 0:
                self.close_code = -1
                self.open = False
                STATS.closed += 1
                if self.transport is not None:
                    self.transport.close()
                break
            self.need = size
        del raw[:pos]
        if not self.sep:
            nl = text.find(b"\n")
            if nl < 0:
                return
            self.sep = b"\r\n\r\n" if nl > 0 and text[nl - 1] == 13 else b"\n\n"
        sep = self.sep
        step = len(sep)
        start = 0
        while True:
            j = text.find(sep, start)
            if j < 0:
                break
            block = text[start:j]
            start = j + step
            if b"data:" in block:
                self.on_event(block)
        if start:
            del text[:start]

    def on_event(self, block: bytes | bytearray) -> None:
        """One SSE event (its `id:`/`event:`/`data:` lines)."""
        self.count_event(block)


class Poll(Conn):
    """A keep-alive HTTP/1.1 connection issuing one GET at a time."""

    def __init__(self, path: str, port: int, body: bytes | None = None) -> None:
        super().__init__(b"")
        if body is None:
            self.get = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
        else:
            self.get = (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        self.status = b""
        self.waiter: asyncio.Future[bytes] | None = None
        self.length = -1
        self.known: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open = True
        self.established.set_result(None)

    def ask(self) -> asyncio.Future[bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(self.get)
        STATS.bytes_out += len(self.get)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        STATS.bytes_in += len(data)
        self.buf += data
        while True:
            if self.length < 0:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end]).lower()
                self.status = head[9:12]
                i = head.find(b"content-length:")
                j = head.find(b"\r\n", i)
                self.length = int(head[i + 15 : j if j > 0 else len(head)])
                del self.buf[: end + 4]
            if len(self.buf) < self.length:
                return
            body = bytes(self.buf[: self.length])
            del self.buf[: self.length]
            self.length = -1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(str(exc)))
        super().connection_lost(exc)


async def poll_loop(conn: Poll, interval: float) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(random.random() * interval)  # pollers are spread over the interval
    due = loop.time()
    while conn.open:
        t = time.time()
        try:
            body = await conn.ask()
        except ConnectionError:
            return
        now = time.time()
        if STATS.recording:
            STATS.requests += 1
            STATS.add_rtt(now - t)
        m = SEQ.search(body)
        if m is not None:
            seq = int(m.group(1))
            if conn.known is None:
                conn.known = seq
            elif seq > conn.known:
                if STATS.recording:
                    STATS.learned.extend((s, now) for s in range(conn.known + 1, seq + 1))
                conn.known = seq
        due += interval
        await asyncio.sleep(max(0.0, due - loop.time()))


async def submit_loop(conn: Poll) -> None:
    """Closed loop: the next POST as soon as the previous answer is in."""
    while conn.open:
        t = time.time()
        try:
            await conn.ask()
        except ConnectionError:
            return
        if STATS.recording:
            STATS.requests += 1
            STATS.add_rtt(time.time() - t)
            code = conn.status.decode()
            STATS.statuses[code] = STATS.statuses.get(code, 0) + 1
