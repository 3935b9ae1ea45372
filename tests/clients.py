"""Real clients for the tests: raw HTTP for SSE, the `websockets` package for WS."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import httpx
import numpy as np
import websockets.sync.client as ws_client
from PIL import Image

API = "/api/v1"


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_b64(image: Image.Image) -> str:
    return base64.b64encode(png(image)).decode()


def two_tone(width: int = 96, height: int = 64) -> Image.Image:
    """A red square on a blue background: the tiny u2net keeps the red."""
    image = Image.new("RGB", (width, height), (20, 40, 220))
    image.paste((230, 20, 20), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return image


def gradient(size: int) -> Image.Image:
    """A smooth image that compresses well, for inputs that must be big in pixels."""
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    xs, ys = np.meshgrid(ramp, ramp[::-1])
    rgb = np.stack([xs, ys, np.full((size, size), 128, np.uint8)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def noise(size: int, seed: int = 0) -> Image.Image:
    """Incompressible pixels, for results that must be big in bytes."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def decode_png(b64: str) -> Image.Image:
    raw = base64.b64decode(b64)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def submit(base: str, body: dict[str, Any], path: str = "/tasks/submit/") -> str:
    response = httpx.post(base + API + path, json=body, timeout=30)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def slow_removal(size: int = 2048) -> dict[str, Any]:
    """An object removal that runs for a few seconds on this machine."""
    return {
        "task_type": "object_removal",
        "image": png_b64(gradient(size)),
        "parameters": {"boxes": [[size // 8, size // 8, 7 * size // 8, 7 * size // 8]], "method": "telea"},
    }


def parse_sse(lines: list[str]) -> list[dict[str, Any]]:
    """SSE lines to events; checks that `id` and `event` agree with the data."""
    events: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                event = json.loads(fields["data"])
                assert int(fields["id"]) == event["seq"]
                assert fields["event"] == event["type"]
                events.append(event)
            fields = {}
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            fields[key] = value.removeprefix(" ")
    return events


class SSEStream:
    """An open SSE stream read event by event."""

    def __init__(self, base: str, task_id: str, headers: dict[str, str] | None = None, query: str = "") -> None:
        self._client = httpx.Client(timeout=httpx.Timeout(60, read=60))
        self._cm = self._client.stream("GET", f"{base}{API}/tasks/{task_id}/events{query}", headers=headers or {})
        self.response = self._cm.__enter__()
        self._lines = self.response.iter_lines()
        self.retry_ms: int | None = None

    def next_event(self) -> dict[str, Any] | None:
        block: list[str] = []
        for line in self._lines:
            if line.startswith("retry:"):
                self.retry_ms = int(line.split(":", 1)[1])
                continue
            block.append(line)
            if line == "":
                parsed = parse_sse(block)
                block = []
                if parsed:
                    return parsed[0]
        return None

    def rest(self) -> list[dict[str, Any]]:
        events = []
        while (event := self.next_event()) is not None:
            events.append(event)
        return events

    def close(self) -> None:
        self._cm.__exit__(None, None, None)
        self._client.close()


def sse_events(base: str, task_id: str, headers: dict[str, str] | None = None, query: str = "") -> list[dict[str, Any]]:
    stream = SSEStream(base, task_id, headers, query)
    try:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        return stream.rest()
    finally:
        stream.close()


def ws_url(base: str, path: str) -> str:
    return "ws" + base[len("http"):] + API + path


def ws_events(base: str, task_id: str, query: str = "") -> tuple[list[dict[str, Any]], int | None]:
    """All events of the per-task WebSocket, and its close code."""
    events = []
    with ws_client.connect(ws_url(base, f"/tasks/{task_id}/ws{query}"), open_timeout=10) as ws:
        try:
            while True:
                events.append(json.loads(ws.recv(timeout=60)))
        except websockets_closed() as exc:
            code = exc.rcvd.code if exc.rcvd else None
            return events, code


def websockets_closed() -> type[Exception]:
    from websockets.exceptions import ConnectionClosed

    return ConnectionClosed


def wait_status(base: str, task_id: str, statuses: set[str], timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body: dict[str, Any] = httpx.get(f"{base}{API}/tasks/{task_id}/status/").json()
        if body["status"] in statuses:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def assert_contiguous(events: list[dict[str, Any]], start: int = 1) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(start, start + len(events))), seqs


def metric(base: str, name: str, **labels: str) -> float:
    """One sample of the api's /metrics, parsed as Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}{API}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise KeyError(f"{name} {labels} not in /metrics")
