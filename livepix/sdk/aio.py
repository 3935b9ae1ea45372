"""The asyncio SDK client, with the methods of `Client` as coroutines."""

from __future__ import annotations

import asyncio
import base64
import inspect
import itertools
import json
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Self

import httpx
from httpx_sse import aconnect_sse
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ..errors import ConnectionLostError
from ..schema import (
    IDEMPOTENCY_HEADER,
    CancelResult,
    Event,
    Submitted,
    SucceededEvent,
    TaskOutcome,
    TaskStatus,
    parse_event,
)
from .common import (
    WS_MAX_BYTES,
    Result,
    TaskInput,
    Transport,
    _Base,
    _checked,
    _error_of,
    _images,
    _outcome,
    _reconnectable,
    _Resume,
    _ws_closed,
    _ws_refused,
    task_body,
)

log = logging.getLogger(__name__)


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


