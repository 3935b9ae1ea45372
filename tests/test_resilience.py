"""Slow clients and a Redis restart: healthy watchers lose nothing and wait for nothing."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
import websockets.sync.client as ws_client

from actors.recorder import Recorder
from livepix.config import load_settings
from tests.clients import (
    API,
    SSEStream,
    assert_contiguous,
    metric,
    noise,
    png_b64,
    sse_events,
    submit,
    two_tone,
    ws_url,
)
from tests.conftest import RedisServer, Stack


def ws_frame(text: str) -> bytes:
    """A masked client text frame (RFC 6455)."""
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def stalled_ws(base: str, ops: list[dict[str, Any]]) -> socket.socket:
    """A WebSocket client that sends `ops`, then never reads again, with a tiny buffer."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {API}/ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    for op in ops:
        sock.sendall(ws_frame(json.dumps(op)))
    return sock


def test_a_stalled_websocket_client_does_not_slow_a_healthy_one(stack: Stack) -> None:
    # Results of ~4 MB each: far more than a stalled socket's buffers can take.
    bodies = [
        {
            "task_type": "object_removal",
            "image": png_b64(noise(1024, seed)),
            "parameters": {"boxes": [[10, 10, 40, 40]], "dilate_px": 0},
        }
        for seed in range(4)
    ]
    closed_before = slow_clients_closed(stack.url)
    ids = [submit(stack.url, body) for body in bodies]
    stalled = stalled_ws(stack.url, [{"op": "subscribe", "task_id": t} for t in ids])
    try:
        lags = []
        with ws_client.connect(ws_url(stack.url, "/ws"), max_size=None) as ws:
            for task_id in ids:
                ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
            waiting = set(ids)
            while waiting:
                event = json.loads(ws.recv(timeout=60))
                if event.get("type") == "succeeded":
                    lags.append(time.time() - event["ts"])
                    waiting.discard(event["task_id"])
        # Each result reached the healthy client promptly although the stalled one
        # had stopped reading long before.
        assert max(lags) < 5.0, lags
        # And the server lets go of the stalled one once a send stays blocked past its
        # timeout (10 s), and counts it. Reading the socket would unblock the sends, so
        # only /metrics is watched until then.
        deadline = time.monotonic() + 40
        while slow_clients_closed(stack.url) == closed_before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert slow_clients_closed(stack.url) == closed_before + 1
        assert closed_by_server(stalled, within_s=45)
    finally:
        stalled.close()


def slow_clients_closed(url: str) -> float:
    return metric(url, "livepix_slow_clients_closed_total")


def held_by(pid: int, ports: set[int]) -> set[int]:
    """Which of the client `ports` process `pid` still has a connection from."""
    return {c.raddr.port for c in psutil.Process(pid).net_connections("tcp") if c.raddr and c.raddr.port in ports}


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """Drain `sock` until the server closes it (EOF or reset), or give up."""
    sock.settimeout(1.0)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if not sock.recv(1 << 20):
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


def test_a_stalled_sse_client_is_let_go_and_others_are_not_slowed(stack: Stack) -> None:
    bodies = [
        {
            "task_type": "object_removal",
            "image": png_b64(noise(1024, seed)),
            "parameters": {"boxes": [[10, 10, 40, 40]], "dilate_px": 0},
        }
        for seed in range(10, 14)
    ]
    ids = [submit(stack.url, body) for body in bodies]
    host, port = stack.url.removeprefix("http://").split(":")
    stalled = []
    for task_id in ids:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(f"GET {API}/tasks/{task_id}/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        stalled.append(sock)
    try:
        for task_id in ids:
            final = sse_events(stack.url, task_id)[-1]
            assert final["type"] == "succeeded"
            assert time.time() - final["ts"] < 5.0  # delivered promptly to a healthy client
        # The server lets go of each stalled socket although its client never reads
        # again: the kernel gives up on data unacknowledged for 30 s (TCP_USER_TIMEOUT).
        api = next(p for p in stack.processes if p.name.startswith("api"))
        ports = {sock.getsockname()[1] for sock in stalled}
        deadline = time.monotonic() + 60
        while held_by(api.proc.pid, ports) and time.monotonic() < deadline:
            time.sleep(1)
        assert not held_by(api.proc.pid, ports)
    finally:
        for sock in stalled:
            sock.close()


def test_a_stalled_sse_stream_ends_once_a_send_blocks_past_the_timeout(new_stack: Stack) -> None:
    url = new_stack.add_api()
    task_id = submit(url, {"task_type": "image_generation", "prompt": "a stalled reader"})
    # The test plays the worker (there is none): the real Recorder writes the events.
    recorder = Recorder(redis.Redis.from_url(new_stack.redis_url), load_settings(), "test-worker")
    assert recorder.start(task_id, "gpu") > 0
    closed_before = slow_clients_closed(url)
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {API}/tasks/{task_id}/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    try:
        time.sleep(1)  # joined
        for step in range(40):  # ~1.3 MB of previews: more than the socket's buffers take
            recorder.progress(task_id, step, "Denoising", preview="A" * 32768)
        deadline = time.monotonic() + 30
        while slow_clients_closed(url) == closed_before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert slow_clients_closed(url) == closed_before + 1
        assert "Traceback" not in new_stack.logs()
    finally:
        sock.close()


def test_redis_restart_while_a_watcher_waits_leaves_no_gap(
    tmp_path: Path, data_dir: Path
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    s = Stack(server.url(0), data_dir, tmp_path)
    try:
        base = s.add_api()
        task_id = submit(base, {"task_type": "background_removal", "image": png_b64(two_tone())})
        stream = SSEStream(base, task_id)
        first = stream.next_event()
        assert first is not None and first["type"] == "queued"

        server.stop()
        deadline = time.monotonic() + 10
        while httpx.get(base + API + "/readyz").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        status = httpx.get(f"{base}{API}/tasks/{task_id}/status/")
        assert status.status_code == 503 and status.json()["code"] == "unavailable"

        server.start()  # same port, same AOF: the queued task is still there
        s.add_worker("cpu")  # its events race the hub's resubscribe
        rest: list[dict[str, Any]] = []
        done = threading.Event()

        def read() -> None:
            rest.extend(stream.rest())
            done.set()

        threading.Thread(target=read, daemon=True).start()
        assert done.wait(60), "the stream did not complete after Redis came back"
        stream.close()
        events = [first, *rest]
        assert_contiguous(events)
        assert events[-1]["type"] == "succeeded"
        assert httpx.get(base + API + "/readyz").status_code == 200
    finally:
        s.stop()
        server.stop()
