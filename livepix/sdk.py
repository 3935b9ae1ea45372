"""The livepix Python SDK: `Client` (blocking, httpx) and `AsyncClient` (asyncio), with
the same methods.

    from pathlib import Path
    from livepix.sdk import Client

    with Client("http://127.0.0.1:8000") as client:
        result = client.run(task_type="background_removal", image=Path("photo.png"))
        result.save("cutout.png")

- `submit(task)` queues a task and answers at once (`Submitted`). Every submit carries an
  `Idempotency-Key` (a new UUID unless given); a submit whose answer was lost (a network
  error, a 503) is sent again with the same key, so the api never queues it twice.
- `stream(task_id, since=0)` yields the task's events (`livepix.schema` models: one class
  per type) over SSE or a WebSocket. It resumes by `seq` across network errors and api
  restarts, each event exactly once and in order, until the terminal event; past
  `reconnect_timeout_s` without a connection it raises `ConnectionLostError`.
- `run(task)` submits, streams, and returns the `Result` (PNG bytes); a task that fails
  raises `TaskFailedError`, a cancelled one `TaskCancelledError`. `wait(task_id)` does
  the same for a task already submitted.
- `status()`, `result()`, `result_png()`, `cancel()`: the REST endpoints.

Errors: livepix/errors.py (`ApiError` and one subclass per error code). With an
`api_key` (or `LIVEPIX_API_KEY`), requests carry `Authorization: Bearer`; a client made
with a `stream_token` (read-only, one task: what submit answers when keys are on)
passes it as `?token=` and can read that task only.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlencode

import httpx
from httpx_sse import aconnect_sse, connect_sse
from pydantic import BaseModel
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .errors import (
    ApiError,
    ConnectionLostError,
    LivepixError,
    TaskCancelledError,
    TaskFailedError,
    UnauthorizedError,
    api_error,
)
from .schema import (
    BODY_FIELDS,
    IDEMPOTENCY_HEADER,
    CancelResult,
    Event,
    FailedEvent,
    Submitted,
    SucceededEvent,
    Task,
    TaskOutcome,
    TaskStatus,
    parse_event,
)
from .wire import EventType, WsClose

__all__ = ["AsyncClient", "Client", "Result", "encode_image"]

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


class Client(_Base):
    """A blocking livepix client. Use it as a context manager, or call `close()`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        stream_token: str | None = None,
        timeout_s: float = 30.0,
        reconnect_timeout_s: float = 120.0,
        submit_retries: int = 3,
    ) -> None:
        super().__init__(url, api_key, stream_token, timeout_s, reconnect_timeout_s, submit_retries)
        self._http = httpx.Client(**self._http_options())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return _checked(self._http.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            raise ConnectionLostError(f"cannot reach {self.url}: {exc}") from exc

    def submit(
        self, task: TaskInput = None, /, *, idempotency_key: str | None = None, **fields: Any
    ) -> Submitted:
        """Queue a task: a model of livepix.schema, a mapping, or keyword fields (images as
        base64, bytes or paths). Sent again with the same Idempotency-Key after a network
        error or a 503, at most `submit_retries` times."""
        body = task_body(task, fields)
        headers = {IDEMPOTENCY_HEADER: idempotency_key or str(uuid.uuid4())}
        for attempt in itertools.count():
            try:
                response = self._http.post("/tasks/submit/", json=body, headers=headers)
            except httpx.TransportError as exc:
                problem: Exception = exc
            else:
                if response.status_code != 503:
                    return Submitted.model_validate(_checked(response))
                problem = _error_of(response)
            time.sleep(self._submit_delay(attempt, problem))
        raise AssertionError("unreachable")

    def status(self, task_id: str) -> TaskStatus:
        """The task's latest state."""
        return TaskStatus.model_validate(self._request("GET", f"/tasks/{task_id}/status/"))

    def result(self, task_id: str) -> TaskOutcome:
        """A finished task's result (or its error); `NotReadyError` before it ends."""
        return TaskOutcome.model_validate(self._request("GET", f"/tasks/{task_id}/result/"))

    def result_png(self, task_id: str, index: int = 0) -> bytes:
        """A finished task's image (`index`: which one, for a task that made several);
        `NotReadyError` before it ends, `NoResultError` when it ended without one."""
        try:
            response = self._http.get(f"/tasks/{task_id}/result.png", params={"index": index})
        except httpx.TransportError as exc:
            raise ConnectionLostError(f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error_of(response)
        return response.content

    def cancel(self, task_id: str) -> CancelResult:
        """Cancel a task; `cancelled` is false when it had already ended."""
        return CancelResult.model_validate(self._request("POST", f"/tasks/{task_id}/cancel/"))

    def stream(
        self, task_id: str, since: int = 0, *, transport: Transport = "sse", inline: bool = True
    ) -> Generator[Event, None, None]:
        """The task's events after seq `since`, to the terminal one; resumes by seq across
        network errors and api restarts. `inline=False`: results carry `image_url`."""
        if transport not in ("sse", "ws"):
            raise ValueError(f'transport is "sse" or "ws", not {transport!r}')
        opened = self._sse if transport == "sse" else self._ws
        resume = _Resume(task_id, since, self.reconnect_timeout_s)
        while True:
            problem: BaseException | None = None
            events = opened(task_id, resume, inline)
            try:
                for event in events:
                    if resume.fresh(event):
                        yield event
                        if event.terminal:
                            return
            except Exception as exc:
                if not _reconnectable(exc):
                    raise
                problem = exc
            finally:
                events.close()
            time.sleep(resume.delay(problem))

    def _sse(self, task_id: str, resume: _Resume, inline: bool) -> Generator[Event, None, None]:
        options = self._sse_options(resume.last, inline)
        with connect_sse(self._http, "GET", f"/tasks/{task_id}/events", **options) as source:
            if source.response.status_code != 200:
                source.response.read()
                _checked(source.response)
            resume.opened()
            for sse in source.iter_sse():
                if sse.data:
                    yield parse_event(json.loads(sse.data))

    def _ws(self, task_id: str, resume: _Resume, inline: bool) -> Generator[Event, None, None]:
        from websockets.sync.client import connect

        try:
            ws = connect(self._ws_url(task_id, resume.last, inline), additional_headers=self._headers,
                         open_timeout=self.timeout_s, max_size=WS_MAX_BYTES)
        except InvalidStatus as exc:
            raise _ws_refused(exc) from exc
        with ws:
            resume.opened()
            try:
                while True:
                    yield parse_event(json.loads(ws.recv()))
            except ConnectionClosed as exc:
                if (error := _ws_closed(exc)) is not None:
                    raise error from exc
                raise

    def wait(
        self,
        task_id: str,
        *,
        since: int = 0,
        transport: Transport = "sse",
        on_event: Callable[[Event], object] | None = None,
    ) -> Result:
        """Watch a submitted task to its end; its `Result`, or `TaskFailedError` /
        `TaskCancelledError`. `on_event` sees every event first."""
        for event in self.stream(task_id, since, transport=transport):
            if on_event is not None:
                on_event(event)
            if isinstance(event, SucceededEvent):
                return self._result(event)
            _outcome(task_id, event)
        raise ConnectionLostError(f"the stream of task {task_id} ended without its end")

    def run(
        self,
        task: TaskInput = None,
        /,
        *,
        idempotency_key: str | None = None,
        transport: Transport = "sse",
        on_event: Callable[[Event], object] | None = None,
        **fields: Any,
    ) -> Result:
        """Submit a task, watch it, and return its `Result`."""
        submitted = self.submit(task, idempotency_key=idempotency_key, **fields)
        return self.wait(submitted.task_id, transport=transport, on_event=on_event)

    def _result(self, event: SucceededEvent) -> Result:
        data = event.result.image_data
        png = base64.b64decode(data) if data else self.result_png(event.task_id)
        images = _images(event) or [self.result_png(event.task_id, i) for i in range(len(event.result.image_urls or []))]
        return Result(event.task_id, png, event.result.metadata, event.result.prompt_used, event, images or [png])


class AsyncClient(_Base):
    """An asyncio livepix client, with the methods of `Client` as coroutines (and
    `stream()` an async iterator). Use it as an async context manager, or `await
    aclose()`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        stream_token: str | None = None,
        timeout_s: float = 30.0,
        reconnect_timeout_s: float = 120.0,
        submit_retries: int = 3,
    ) -> None:
        super().__init__(url, api_key, stream_token, timeout_s, reconnect_timeout_s, submit_retries)
        self._http = httpx.AsyncClient(**self._http_options())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return _checked(await self._http.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            raise ConnectionLostError(f"cannot reach {self.url}: {exc}") from exc

    async def submit(
        self, task: TaskInput = None, /, *, idempotency_key: str | None = None, **fields: Any
    ) -> Submitted:
        """As `Client.submit`."""
        body = task_body(task, fields)
        headers = {IDEMPOTENCY_HEADER: idempotency_key or str(uuid.uuid4())}
        for attempt in itertools.count():
            try:
                response = await self._http.post("/tasks/submit/", json=body, headers=headers)
            except httpx.TransportError as exc:
                problem: Exception = exc
            else:
                if response.status_code != 503:
                    return Submitted.model_validate(_checked(response))
                problem = _error_of(response)
            await asyncio.sleep(self._submit_delay(attempt, problem))
        raise AssertionError("unreachable")

    async def status(self, task_id: str) -> TaskStatus:
        """As `Client.status`."""
        return TaskStatus.model_validate(await self._request("GET", f"/tasks/{task_id}/status/"))

    async def result(self, task_id: str) -> TaskOutcome:
        """As `Client.result`."""
        return TaskOutcome.model_validate(await self._request("GET", f"/tasks/{task_id}/result/"))

    async def result_png(self, task_id: str, index: int = 0) -> bytes:
        """As `Client.result_png`."""
        try:
            response = await self._http.get(f"/tasks/{task_id}/result.png", params={"index": index})
        except httpx.TransportError as exc:
            raise ConnectionLostError(f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error_of(response)
        return response.content

    async def cancel(self, task_id: str) -> CancelResult:
        """As `Client.cancel`."""
        return CancelResult.model_validate(await self._request("POST", f"/tasks/{task_id}/cancel/"))

    async def stream(
        self, task_id: str, since: int = 0, *, transport: Transport = "sse", inline: bool = True
    ) -> AsyncGenerator[Event, None]:
        """As `Client.stream`. Leaving the loop early: close it (`contextlib.aclosing`)."""
        if transport not in ("sse", "ws"):
            raise ValueError(f'transport is "sse" or "ws", not {transport!r}')
        opened = self._sse if transport == "sse" else self._ws
        resume = _Resume(task_id, since, self.reconnect_timeout_s)
        while True:
            problem: BaseException | None = None
            events = opened(task_id, resume, inline)
            try:
                async for event in events:
                    if resume.fresh(event):
                        yield event
                        if event.terminal:
                            return
            except Exception as exc:
                if not _reconnectable(exc):
                    raise
                problem = exc
            finally:
                await events.aclose()
            await asyncio.sleep(resume.delay(problem))

    async def _sse(self, task_id: str, resume: _Resume, inline: bool) -> AsyncGenerator[Event, None]:
        options = self._sse_options(resume.last, inline)
        async with aconnect_sse(self._http, "GET", f"/tasks/{task_id}/events", **options) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                _checked(source.response)
            resume.opened()
            async for sse in source.aiter_sse():
                if sse.data:
                    yield parse_event(json.loads(sse.data))

    async def _ws(self, task_id: str, resume: _Resume, inline: bool) -> AsyncGenerator[Event, None]:
        from websockets.asyncio.client import connect

        try:
            ws = await connect(self._ws_url(task_id, resume.last, inline),
                               additional_headers=self._headers, open_timeout=self.timeout_s,
                               max_size=WS_MAX_BYTES)
        except InvalidStatus as exc:
            raise _ws_refused(exc) from exc
        async with ws:
            resume.opened()
            try:
                while True:
                    yield parse_event(json.loads(await ws.recv()))
            except ConnectionClosed as exc:
                if (error := _ws_closed(exc)) is not None:
                    raise error from exc
                raise

    async def wait(
        self,
        task_id: str,
        *,
        since: int = 0,
        transport: Transport = "sse",
        on_event: Callable[[Event], object | Awaitable[object]] | None = None,
    ) -> Result:
        """As `Client.wait`; `on_event` may be a coroutine function."""
        events = self.stream(task_id, since, transport=transport)
        try:
            async for event in events:
                if on_event is not None and inspect.isawaitable(seen := on_event(event)):
                    await seen
                if isinstance(event, SucceededEvent):
                    return await self._result(event)
                _outcome(task_id, event)
        finally:
            await events.aclose()
        raise ConnectionLostError(f"the stream of task {task_id} ended without its end")

    async def run(
        self,
        task: TaskInput = None,
        /,
        *,
        idempotency_key: str | None = None,
        transport: Transport = "sse",
        on_event: Callable[[Event], object | Awaitable[object]] | None = None,
        **fields: Any,
    ) -> Result:
        """As `Client.run`."""
        submitted = await self.submit(task, idempotency_key=idempotency_key, **fields)
        return await self.wait(submitted.task_id, transport=transport, on_event=on_event)

    async def _result(self, event: SucceededEvent) -> Result:
        data = event.result.image_data
        png = base64.b64decode(data) if data else await self.result_png(event.task_id)
        images = _images(event) or [await self.result_png(event.task_id, i)
                                    for i in range(len(event.result.image_urls or []))]
        return Result(event.task_id, png, event.result.metadata, event.result.prompt_used, event, images or [png])


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
