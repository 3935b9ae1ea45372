"""What both SDK clients share: the request shapes, the reconnect policy, errors and
results (livepix/sdk/__init__.py says how to use them)."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
from pydantic import BaseModel
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..errors import (
    ApiError,
    ConnectionLostError,
    LivepixError,
    TaskCancelledError,
    TaskFailedError,
    UnauthorizedError,
    api_error,
)
from ..schema import (
    BODY_FIELDS,
    Event,
    FailedEvent,
    SucceededEvent,
    Task,
)
from ..wire import EventType, WsClose

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
API = "/api/v1"
RECONNECT_DELAYS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0)
MAX_RETRY_AFTER_S = 30.0
SSE_READ_TIMEOUT_S = 60.0  # the api sends a keepalive comment after 15 s of silence
WS_MAX_BYTES = 256 * 1024 * 1024  # a result travels inline, as base64

Transport = Literal["sse", "ws"]
ImageInput = str | bytes | os.PathLike[str]
TaskInput = Task | Mapping[str, Any] | None


def encode_image(image: ImageInput) -> str:
    """An image for a task field: base64 text (or a `data:` URL) as it is, the bytes of an
    image file, or the path of one."""
    if isinstance(image, str):
        return image
    raw = image if isinstance(image, bytes) else Path(image).read_bytes()
    return base64.b64encode(raw).decode("ascii")


def task_body(task: TaskInput, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of a submit: a task model, a mapping, or keyword fields. Images given
    as bytes or paths are encoded; nothing else is checked here (the api says what is
    wrong, and a newer api may take what this SDK does not know)."""
    if task is not None and fields:
        raise TypeError("pass a task or keyword fields, not both")
    if isinstance(task, BaseModel):
        return task.model_dump(mode="json", exclude_none=True)
    body = dict(task if task is not None else fields)
    for name in BODY_FIELDS:
        if name != "prompt" and body.get(name) is not None:
            body[name] = encode_image(body[name])
    if isinstance(body.get("parameters"), BaseModel):
        body["parameters"] = body["parameters"].model_dump(mode="json", exclude_none=True)
    return body


@dataclass(frozen=True, slots=True)
class Result:
    """A finished task's images: `png` the first, `images` every one (a generation or
    style transfer with `num_outputs` makes several)."""

    task_id: str
    png: bytes
    metadata: dict[str, Any]
    prompt_used: str | None
    event: SucceededEvent
    images: list[bytes] = field(default_factory=list)

    def save(self, path: str | os.PathLike[str]) -> list[Path]:
        """Write the PNG to `path`, or, for several outputs, `out.png` as `out-0.png`,
        `out-1.png`, ...; returns the paths written."""
        outputs = self.images or [self.png]
        paths = output_paths(path, len(outputs))
        for one, png in zip(paths, outputs, strict=True):
            one.write_bytes(png)
        return paths


class _Resume:
    """Where a stream stands: the last seq delivered, and the reconnect policy."""

    def __init__(self, task_id: str, since: int, give_up_s: float) -> None:
        self.task_id = task_id
        self.last = since
        self.give_up_s = give_up_s
        self.attempts = 0
        self.failing_since: float | None = None

    def opened(self) -> None:
        self.failing_since = None  # the api is there: the give-up clock starts again

    def fresh(self, event: Event) -> bool:
        """Whether `event` is new; a coalesced progress event's `replaces` covers the seqs
        it stands for, so they are not a gap."""
        if event.seq <= self.last:
            return False
        missing = event.seq - self.last - 1
        if missing:
            covered = sum(1 for seq in getattr(event, "replaces", ()) if self.last < seq < event.seq)
            if covered < missing:
                log.warning("task %s: events %d-%d never arrived", self.task_id,
                            self.last + 1, event.seq - 1)
        self.last, self.attempts, self.failing_since = event.seq, 0, None
        return True

    def delay(self, problem: BaseException | None) -> float:
        """Seconds to wait before reconnecting, or `ConnectionLostError` when it is time to
        give up."""
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        elif now - self.failing_since > self.give_up_s:
            raise ConnectionLostError(
                f"lost the stream of task {self.task_id} after seq {self.last} and could not "
                f"resume within {self.give_up_s:.0f} s: {problem or 'the stream ended'}",
                self.task_id, self.last,
            ) from problem
        delay = RECONNECT_DELAYS_S[min(self.attempts, len(RECONNECT_DELAYS_S) - 1)]
        self.attempts += 1
        if isinstance(problem, ApiError) and problem.retry_after_s:
            delay = max(delay, min(problem.retry_after_s, MAX_RETRY_AFTER_S))
        log.info("task %s: stream interrupted (%s); resuming after seq %d in %.2f s",
                 self.task_id, problem or "ended early", self.last, delay)
        return delay


def _reconnectable(exc: BaseException) -> bool:
    """Whether a stream that failed with `exc` is worth opening again."""
    if isinstance(exc, ApiError):
        return exc.status >= 500  # a restarting api or proxy
    return isinstance(exc, (httpx.TransportError, OSError, ConnectionClosed, InvalidHandshake))


def _error_of(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    return api_error(response.status_code, body, response.headers.get("retry-after"))


def _checked(response: httpx.Response) -> Any:
    """The JSON of a successful answer, or the `ApiError` of an error answer."""
    if response.status_code >= 400:
        raise _error_of(response)
    return response.json()


def _ws_refused(exc: InvalidStatus) -> ApiError:
    response = exc.response
    try:
        body = json.loads(response.body or b"")
    except ValueError:
        body = None
    return api_error(response.status_code, body, response.headers.get("Retry-After"))


def _ws_closed(exc: ConnectionClosed) -> LivepixError | None:
    """What a WebSocket closed before the task's end means: an error to raise, or None
    (reconnect and resume: 1001/1012 going away, 4008 too slow, 1013 overloaded...)."""
    code = exc.rcvd.code if exc.rcvd is not None else None
    if code == WsClose.UNAUTHORIZED:
        return UnauthorizedError(exc.rcvd.reason if exc.rcvd else "unauthorized", status=401)
    return None


def _outcome(task_id: str, event: Event) -> None:
    """Raise the error of a task that ended without a result."""
    if isinstance(event, FailedEvent):
        raise TaskFailedError(task_id, event.error.code, event.error.message)
    if event.type == EventType.CANCELLED:
        raise TaskCancelledError(task_id)


class _Base:
    """What both clients share: where the api is, who is asking, the request shapes."""

    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        stream_token: str | None,
        timeout_s: float,
        reconnect_timeout_s: float,
        submit_retries: int,
    ) -> None:
        self.url = (url or os.environ.get("LIVEPIX_URL") or DEFAULT_URL).rstrip("/")
        if api_key is None and stream_token is None:
            api_key = os.environ.get("LIVEPIX_API_KEY") or None
        self.api_key = api_key
        self.stream_token = stream_token
        self.timeout_s = timeout_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self.submit_retries = submit_retries
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._params = {"token": stream_token} if stream_token else {}

    def _http_options(self) -> dict[str, Any]:
        return {"base_url": self.url + API, "headers": self._headers, "params": self._params,
                "timeout": httpx.Timeout(self.timeout_s, read=max(self.timeout_s, 60.0))}

    def _ws_url(self, task_id: str, since: int, inline: bool) -> str:
        query = {"since": since, **self._params, **({} if inline else {"inline": "0"})}
        return "ws" + self.url.removeprefix("http") + f"{API}/tasks/{task_id}/ws?{urlencode(query)}"

    def _sse_options(self, since: int, inline: bool) -> dict[str, Any]:
        return {"headers": {"Last-Event-ID": str(since)},
                "params": {} if inline else {"inline": "0"},
                "timeout": httpx.Timeout(self.timeout_s, read=SSE_READ_TIMEOUT_S)}

    def _submit_delay(self, attempt: int, problem: BaseException) -> float:
        """Seconds before the submit is sent again (same key), or raise when out of tries."""
        if attempt >= self.submit_retries:
            if isinstance(problem, LivepixError):
                raise problem
            raise ConnectionLostError(f"cannot reach {self.url}: {problem}") from problem
        delay = RECONNECT_DELAYS_S[min(attempt + 2, len(RECONNECT_DELAYS_S) - 1)]
        if isinstance(problem, ApiError) and problem.retry_after_s:
            delay = min(problem.retry_after_s, MAX_RETRY_AFTER_S)
        log.info("submit: %s; sending it again in %.2f s, same key", problem, delay)
        return delay


def output_paths(path: str | os.PathLike[str], count: int) -> list[Path]:
    """Where `count` outputs saved as `path` go: `path` itself for one, `out-0.png`,
    `out-1.png`, ... for `out.png` and several."""
    target = Path(path)
    if count == 1:
        return [target]
    return [target.with_name(f"{target.stem}-{i}{target.suffix or '.png'}") for i in range(count)]


def _images(event: SucceededEvent) -> list[bytes]:
    """Every output of a result that carries them inline (`images`)."""
    return [base64.b64decode(b64) for b64 in event.result.images or []]
