"""The CLI's client side: `livepix submit | watch | status | result | cancel`.

Talks to a livepix api over HTTP, SSE or WebSocket, resumes a stream by `seq` after a
network error, and exits with a code a script can branch on.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

API = "/api/v1"
TERMINAL = {"succeeded": 0, "failed": 1, "cancelled": 3}

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 3
EXIT_NOT_FOUND = 4
EXIT_UNREACHABLE = 5
EXIT_INTERRUPTED = 130

RECONNECT_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 3.0, 5.0)
GIVE_UP_AFTER_S = 120.0


class ClientError(Exception):
    """Raised when the api answers with an error; `exit_code` says how the CLI exits."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def parse_value(text: str) -> Any:
    """`--param k=v` values: JSON when it parses (numbers, true, null, lists), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def image_b64(path: str) -> str:
    try:
        return base64.b64encode(Path(path).read_bytes()).decode()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from exc


@dataclass
class Client:
    url: str
    api_key: str | None = None
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.http = httpx.Client(base_url=self.url + API, headers=headers, timeout=httpx.Timeout(30, read=60))

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach {self.url}: {exc}", EXIT_UNREACHABLE) from exc
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            raise ClientError(f"{method} {path}: HTTP {response.status_code}") from None
        if response.status_code >= 400:
            raise ClientError(_describe(body), EXIT_NOT_FOUND if response.status_code == 404 else EXIT_FAILED)
        return body

    def submit(self, task: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/tasks/submit/", json=task)

    def status(self, task_id: str) -> dict[str, Any]:
        return self._call("GET", f"/tasks/{task_id}/status/")

    def result(self, task_id: str) -> dict[str, Any]:
        return self._call("GET", f"/tasks/{task_id}/result/")

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._call("POST", f"/tasks/{task_id}/cancel/")

    def events(self, task_id: str, transport: str, since: int = 0) -> Iterator[dict[str, Any]]:
        """The task's events after `since`, resuming by seq across network errors."""
        last = since
        failing_since: float | None = None
        attempt = 0
        while True:
            try:
                stream = self._sse(task_id, last) if transport == "sse" else self._ws(task_id, last)
                for event in stream:
                    failing_since, attempt = None, 0
                    if event["seq"] <= last:
                        continue  # defensive: never show an event twice
                    last = event["seq"]
                    yield event
                    if event["type"] in TERMINAL:
                        return
                # The stream ended without a terminal event (server restart, slow client).
            except (httpx.TransportError, OSError, _ws_closed()) as exc:
                if failing_since is None:
                    failing_since = time.monotonic()
                if time.monotonic() - failing_since > GIVE_UP_AFTER_S:
                    raise ClientError(f"lost the stream and could not resume: {exc}", EXIT_UNREACHABLE) from exc
            time.sleep(RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)])
            attempt += 1

    def _sse(self, task_id: str, since: int) -> Iterator[dict[str, Any]]:
        headers = {"Last-Event-ID": str(since)}
        with self.http.stream("GET", f"/tasks/{task_id}/events", headers=headers, timeout=httpx.Timeout(30, read=60)) as response:
            if response.status_code != 200:
                response.read()
                raise ClientError(_describe(response.json()), EXIT_NOT_FOUND if response.status_code == 404 else EXIT_FAILED)
            for line in response.iter_lines():
                if line.startswith("data:"):
                    yield json.loads(line[5:].strip())

    def _ws(self, task_id: str, since: int) -> Iterator[dict[str, Any]]:
        from websockets.exceptions import ConnectionClosedOK, InvalidStatus
        from websockets.sync.client import connect

        url = "ws" + self.url[len("http"):] + f"{API}/tasks/{task_id}/ws?since={since}"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            with connect(url, additional_headers=headers, open_timeout=30, max_size=None) as ws:
                try:
                    while True:
                        yield json.loads(ws.recv(timeout=60))
                except ConnectionClosedOK:
                    return
        except InvalidStatus as exc:
            code = exc.response.status_code
            raise ClientError(f"HTTP {code} opening the stream", EXIT_NOT_FOUND if code == 404 else EXIT_FAILED) from exc


def _ws_closed() -> type[Exception]:
    from websockets.exceptions import ConnectionClosedError

    return ConnectionClosedError


def _describe(body: dict[str, Any]) -> str:
    message = f"{body.get('error', 'error')} ({body.get('code', '?')})"
    for field_name, problems in (body.get("details") or {}).items():
        message += f"\n  {field_name}: {'; '.join(map(str, problems))}"
    return message


class ProgressView:
    """Human-readable progress: one redrawn line on a terminal, a line per change otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last = ""

    def show(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "queued":
            eta = f", about {event['eta_s']:.0f} s" if "eta_s" in event else ""
            line = f"queued: position {event.get('position', '?')}{eta}"
        elif kind in ("started", "progress"):
            percent = int(event.get("progress", 0))
            bar = "#" * (percent // 5) + "." * (20 - percent // 5)
            line = f"[{bar}] {percent:3d}% {event.get('message', '')}"
        else:
            line = f"{kind}: {event.get('message', '')}"
        if line == self._last:
            return
        self._last = line
        if self.tty:
            self.out.write("\r\x1b[2K" + line)
            if kind in TERMINAL:
                self.out.write("\n")
        else:
            self.out.write(line + "\n")
        self.out.flush()


def save_result(event: dict[str, Any], path: str) -> str:
    data = base64.b64decode(event["result"]["image_data"])
    Path(path).write_bytes(data)
    return path


def watch(
    client: Client,
    task_id: str,
    *,
    transport: str = "sse",
    as_json: bool = False,
    output: str | None = None,
    cancel_on_exit: bool = False,
    since: int = 0,
) -> int:
    """Follow a task to its end; the exit code tells how it ended."""
    view = ProgressView(sys.stderr if as_json else sys.stdout)
    try:
        for event in client.events(task_id, transport, since):
            if as_json:
                sys.stdout.write(json.dumps(event) + "\n")
                sys.stdout.flush()
            else:
                view.show(event)
            if event["type"] == "succeeded":
                path = save_result(event, output or f"{task_id}.png")
                print(f"saved {path}", file=sys.stderr if as_json else sys.stdout)
            if event["type"] == "failed" and not as_json:
                error = event.get("error", {})
                print(f"error: {error.get('message')} ({error.get('code')})", file=sys.stderr)
            if event["type"] in TERMINAL:
                return TERMINAL[event["type"]]
    except KeyboardInterrupt:
        if cancel_on_exit:
            answer = client.cancel(task_id)
            print(f"\ncancelled {task_id}: {answer['status']}", file=sys.stderr)
        else:
            print(f"\nthe task goes on; resume with: livepix watch {task_id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_FAILED
