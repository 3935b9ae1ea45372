"""Per-task event streams: Server-Sent Events and the per-task WebSocket (SPEC section 5).

These handlers check the request (task, owner, resume point) and open the stream; the
delivery itself is app/live's: an outbox, an outlet, the hub's subscription.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

from redis.exceptions import RedisError
from sse_starlette.sse import EventSourceResponse, SendTimeoutError
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from livepix.wire import MAX_SEQ, WsClose

from .errors import ApiError, InvalidInputError, NotFoundError
from .live import Ending, Frame, Live, Outbox, SseOutlet, WsOutlet
from .live.stalls import SEND_TIMEOUT_S
from .tasks import TaskService

log = logging.getLogger(__name__)

SSE_RETRY_MS = 2000
SSE_RESUME_MS = 500  # the hint sent when the server ends a stream early
SSE_SHUTDOWN_GRACE_S = 2.0  # under uvicorn's graceful shutdown timeout (app/server.py)


def task_id_param(conn: HTTPConnection) -> str:
    """The `{task_id}` of the path; anything but a UUID is an unknown task."""
    raw = conn.path_params.get("task_id", "")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise NotFoundError() from None


def since_param(conn: HTTPConnection) -> int:
    """Resume point: the `Last-Event-ID` header, else `?since=`, else 0."""
    raw = conn.headers.get("last-event-id") or conn.query_params.get("since") or "0"
    try:
        since = int(raw)
    except ValueError:
        raise InvalidInputError(details={"since": ["must be a non-negative integer"]}) from None
    if not 0 <= since <= MAX_SEQ:
        raise InvalidInputError(details={"since": ["must be a non-negative integer"]})
    return since


def past_the_end(since: int, last_seq: int) -> InvalidInputError | None:
    """A resume point after the task's last event: no event could ever follow it (a
    client never saw a seq the log does not have yet), so the stream is refused."""
    if since <= last_seq:
        return None
    return InvalidInputError(
        details={"since": [f"is past the task's last event (seq {last_seq}); resume from a seq you received"]}
    )


def inline_param(conn: HTTPConnection) -> bool:
    return conn.query_params.get("inline", "1") not in ("0", "false")


def shaper(conn: HTTPConnection, inline: bool) -> Callable[[Frame], Frame]:
    """How this client gets its frames: with `inline=0`, a result image becomes its URL."""
    if inline:
        return _as_is

    def by_reference(frame: Frame) -> Frame:
        if frame.event is None or "result" not in frame.event:
            return frame  # keepalives, replies, and every event but the final one
        return frame.by_reference(str(conn.url_for("result_png", task_id=frame.task_id).path))

    return by_reference


def _as_is(frame: Frame) -> Frame:
    return frame


async def events_sse(request: Request) -> Response:
    tasks: TaskService = request.app.state.tasks
    live: Live = request.app.state.live
    task_id = task_id_param(request)
    since = since_param(request)
    shape = shaper(request, inline_param(request))
    try:
        state = await tasks.get(task_id, request.state.caller)
    except ApiError as exc:
        if exc.status_code < 500:
            raise
        # A browser's EventSource gives up for good on a non-200: ask it to retry.
        return EventStream(lambda scope, send: _retry_only(), headers=_SSE_HEADERS)
    if (refused := past_the_end(since, state.seq)) is not None:
        raise refused
    ended = state.terminal and since >= state.seq  # the stream keeps no TaskState alive
    outbox = Outbox()

    async def stream(scope: Scope, send: Send) -> AsyncIterator[bytes]:
        yield f"retry: {SSE_RETRY_MS}\n\n".encode()
        if ended:
            return
        async with live.hub.watching(outbox) as subscriptions:
            outlet = SseOutlet(subscriptions, live.stalls, send, live.transports.chunked(scope), shape)
            try:
                await subscriptions.follow(task_id, since)
            except RedisError:
                return  # the client reconnects after `retry` and resumes from its last id
            with live.keepalive.covering(outbox):
                ending = await outlet.pump()
        if ending is Ending.TOO_SLOW:
            # Too slow, or the api is stopping: end cleanly; the client resumes from
            # its last id (on another api process, if need be).
            yield f"retry: {SSE_RESUME_MS}\n\n".encode()

    return EventStream(
        stream,
        headers=_SSE_HEADERS,
        shutdown_event=_EndOnShutdown(outbox),
        shutdown_grace_period=SSE_SHUTDOWN_GRACE_S,
    )


class _EndOnShutdown:
    """What sse-starlette `set()`s when the server stops (it takes an anyio.Event): ends
    the stream's outbox at once, with no task per connection waiting for the event."""

    __slots__ = ("outbox",)

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def set(self) -> None:
        self.outbox.fail()


class EventStream(EventSourceResponse):
    """sse-starlette's response around a stream whose events an `SseOutlet` sends with
    the connection's own `send`: the body given to sse-starlette is only the `retry`
    hints, and its per-send timeout guards those (app/live/stalls.py guards the rest).
    `body` is called with the scope and `send` once the response runs."""

    def __init__(self, body: Callable[[Scope, Send], AsyncIterator[bytes]], **options: Any) -> None:
        super().__init__(_nothing(), send_timeout=SEND_TIMEOUT_S, ping=0, **options)
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.body_iterator = self._body(scope, send)
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            pass  # the client stopped reading; uvicorn closes the connection


_SSE_HEADERS: Mapping[str, str] = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield  # an async generator that yields nothing


async def _retry_only() -> AsyncIterator[bytes]:
    yield f"retry: {SSE_RETRY_MS}\n\n".encode()


async def deny(websocket: WebSocket, exc: ApiError) -> None:
    """Refuse a WebSocket before it opens, with the same JSON error as HTTP."""
    await websocket.send_denial_response(
        JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)
    )


async def task_ws(websocket: WebSocket) -> None:
    tasks: TaskService = websocket.app.state.tasks
    live: Live = websocket.app.state.live
    try:
        task_id = task_id_param(websocket)
        since = since_param(websocket)
        state = await tasks.get(task_id, websocket.state.caller)
        if (refused := past_the_end(since, state.seq)) is not None:
            raise refused
    except ApiError as exc:
        await deny(websocket, exc)
        return
    shape = shaper(websocket, inline_param(websocket))
    await websocket.accept()
    if state.terminal and since >= state.seq:
        await close(websocket, WsClose.DONE)
        return
    del state
    async def stream() -> None:
        async with live.hub.watching(Outbox()) as subscriptions:
            outlet = WsOutlet(subscriptions, live.stalls, websocket.send,
                              live.transports.websocket(websocket.scope), shape)
            try:
                await subscriptions.follow(task_id, since)
            except RedisError:
                ending = None
            else:
                ending = await outlet.pump()
        if ending is None:
            await close(websocket, WsClose.RESTARTING, "storage unavailable; resume")
        elif ending is Ending.DONE:
            await close(websocket, WsClose.DONE)
        else:
            await close(websocket, WsClose.TOO_SLOW, "too slow; resume from your last seq")

    await run_until_first_done(stream(), drain(websocket))


async def close(websocket: WebSocket, code: int, reason: str = "") -> None:
    """Close with `code`, giving up after the send timeout: a stalled client cannot take
    the close frame either, and returning ends the connection all the same."""
    try:
        await asyncio.wait_for(websocket.close(code, reason), SEND_TIMEOUT_S)
    except (TimeoutError, RuntimeError, WebSocketDisconnect, OSError):
        pass


async def drain(websocket: WebSocket) -> None:
    """Read until the client goes away: a send-only handler never sees the disconnect."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError):
        return


async def run_until_first_done(sender: Coroutine[Any, Any, None], receiver: Coroutine[Any, Any, None]) -> None:
    """Run `sender` in a task of its own beside `receiver`, which runs in this task; the
    first to finish ends the other. Two tasks per connection, not three: a task and its
    frames cost about 1 KB for every open WebSocket (docs/benchmarks.md, F7)."""
    me = asyncio.current_task()
    assert me is not None
    task = asyncio.ensure_future(sender)
    receiving = True
    ended_by_sender = False

    def on_sender_done(_: object) -> None:
        nonlocal ended_by_sender
        if receiving:  # a callback already scheduled may run after `receiver` ended
            ended_by_sender = True
            me.cancel()

    task.add_done_callback(on_sender_done)
    try:
        await receiver
    except asyncio.CancelledError:
        if not ended_by_sender or me.uncancel() > 0:
            raise  # cancelled from outside (the server stops)
    except (WebSocketDisconnect, OSError):
        pass
    except Exception:
        log.exception("websocket task failed")
    finally:
        receiving = False
        task.remove_done_callback(on_sender_done)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled():
        exc = task.exception()
        if exc is not None and not isinstance(exc, (WebSocketDisconnect, OSError)):
            log.error("websocket task failed", exc_info=exc)
