"""The blocking SDK client (httpx, the websockets sync client)."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable, Generator
from typing import Any, Self

import httpx
from httpx_sse import connect_sse
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


