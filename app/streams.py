"""Per-task event streams: Server-Sent Events and the per-task WebSocket (SPEC section 5)."""

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
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from livepix.wire import MAX_SEQ, WsClose

from .direct import Resume, start, written
from .errors import ApiError, InvalidInputError, NotFoundError
from .hub import Hub
from .keepalive import Keepalive
from .metrics import sent
from .prepared import chunked_transport, websocket_transport
from .stalls import SEND_TIMEOUT_S, Stalls
from .tasks import TaskService
from .watch import Frame, Watch

log = logging.getLogger(__name__)

SSE_RETRY_MS = 2000
SSE_RESUME_MS = 500  # the hint sent when the server ends a stream early
SSE_SHUTDOWN_GRACE_S = 2.0  # under uvicorn's graceful shutdown timeout (5 s)


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


def result_url(conn: HTTPConnection, task_id: str) -> str:
    return str(conn.url_for("result_png", task_id=task_id).path)


def shape(frame: Frame, inline: bool, conn: HTTPConnection) -> Frame:
    """`frame` as this client asked: with `inline=0`, a result image becomes its URL.
    Only a task's final event carries a result; keepalives and replies have no task."""
    if inline or "result" not in frame.event:
        return frame
    return frame.by_reference(result_url(conn, frame.task_id))


async def events_sse(request: Request) -> Response:
    tasks: TaskService = request.app.state.tasks
    hub: Hub = request.app.state.hub
    keepalive: Keepalive = request.app.state.keepalive
    stalls: Stalls = request.app.state.stalls
    task_id = task_id_param(request)
    since = since_param(request)
    inline = inline_param(request)
    try:
        state = await tasks.get(task_id, request.state.caller)
    except ApiError as exc:
        if exc.status_code < 500:
            raise
        # A browser's EventSource gives up for good on a non-200: ask it to retry.
        return EventStream(_retry_only(), headers=_SSE_HEADERS)
    if (refused := past_the_end(since, state.seq)) is not None:
        raise refused

    watch = Watch()
    ended = state.terminal and since >= state.seq  # the stream keeps no TaskState alive

    async def stream() -> AsyncIterator[bytes]:
        yield f"retry: {SSE_RETRY_MS}\n\n".encode()
        if ended:
            return
        try:
            await hub.follow(watch, task_id, since)  # unfollows itself if it fails
        except RedisError:
            return  # the client reconnects after `retry` and resumes from its last id
        keepalive.add(watch)
        try:
            while True:
                frame = await watch.get()
                if frame is None:
                    # Too slow, or the api is stopping: end cleanly; the client
                    # resumes from its last id (on another api process, if need be).
                    yield f"retry: {SSE_RESUME_MS}\n\n".encode()
                    return
                if isinstance(frame, Resume):
                    try:
                        await stalls.send(frame)  # a send that the fan-out began
                    except TimeoutError:
                        raise SendTimeoutError() from None
                    continue
                yield shape(frame, inline, request).sse()
                sent(frame)
                if frame.terminal:
                    return
                del frame  # an idle stream keeps no event alive
        finally:
            keepalive.discard(watch)
            hub.unfollow(watch, task_id)

    return EventStream(
        stream(),
        stalls=stalls,
        direct=(watch, lambda frame: shape(frame, inline, request)),
        ping=0,  # app.keepalive pings every stream from one task
        headers=_SSE_HEADERS,
        shutdown_event=_EndOnShutdown(watch),
        shutdown_grace_period=SSE_SHUTDOWN_GRACE_S,
    )


class _EndOnShutdown:
    """What sse-starlette `set()`s when the server stops (it takes an anyio.Event): ends
    the stream's watch at once, with no task per connection waiting for the event."""

    __slots__ = ("watch",)

    def __init__(self, watch: Watch) -> None:
        self.watch = watch

    def set(self) -> None:
        self.watch.fail()


class EventStream(EventSourceResponse):
    """sse-starlette's response, with two shortcuts for the hot path:
    - its per-message send timeout is enforced by the process's stall check (`stalls`)
      instead of an anyio cancel scope per message; a stream whose send stays blocked
      past the timeout ends as too slow, quietly: the client resumes from its last id;
    - `direct` = (watch, for_client): while the stream's generator waits for a frame,
      the hub's fan-out writes a live frame, shaped for this client, itself
      (app/direct.py, app/prepared.py), without resuming the generator and
      sse-starlette's loop. The generator only ever waits in `watch.get()` once
      sse-starlette has sent what it yielded before, so the order holds."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        stalls: Stalls | None = None,
        direct: tuple[Watch, Callable[[Frame], Frame]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(content, send_timeout=SEND_TIMEOUT_S, **options)
        self._stalls = stalls
        self._direct = direct

    # Overrides sse-starlette's private per-message hook (3.7). Were it renamed, its own
    # timeout would apply again: the same behaviour at a higher cost per message.
    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self._stalls is None:
            await super()._send_with_timeout(send, message)
            return
        try:
            await self._stalls.send(send(message))
        except TimeoutError:
            raise SendTimeoutError() from None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._direct is not None:
            watch, for_client = self._direct
            transport = chunked_transport(scope)

            def direct(frame: Frame) -> Resume | None:
                shaped = for_client(frame)
                if written(transport, shaped.sse_chunk(), frame):
                    return None
                return start(send({"type": "http.response.body", "body": shaped.sse(), "more_body": True}), frame)

            watch.direct = direct
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            pass  # counted by the stall check; uvicorn closes the connection


_SSE_HEADERS: Mapping[str, str] = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


async def _retry_only() -> AsyncIterator[bytes]:
    yield f"retry: {SSE_RETRY_MS}\n\n".encode()


async def deny(websocket: WebSocket, exc: ApiError) -> None:
    """Refuse a WebSocket before it opens, with the same JSON error as HTTP."""
    await websocket.send_denial_response(
        JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)
    )


async def task_ws(websocket: WebSocket) -> None:
    tasks: TaskService = websocket.app.state.tasks
    hub: Hub = websocket.app.state.hub
    stalls: Stalls = websocket.app.state.stalls
    try:
        task_id = task_id_param(websocket)
        since = since_param(websocket)
        state = await tasks.get(task_id, websocket.state.caller)
        if (refused := past_the_end(since, state.seq)) is not None:
            raise refused
    except ApiError as exc:
        await deny(websocket, exc)
        return
    inline = inline_param(websocket)
    await websocket.accept()
    if state.terminal and since >= state.seq:
        await close(websocket, WsClose.DONE)
        return
    del state
    watch = Watch()

    async def send() -> None:
        try:
            await hub.follow(watch, task_id, since)
        except RedisError:
            await close(websocket, WsClose.RESTARTING, "storage unavailable; resume")
            return
        transport = websocket_transport(websocket.scope)

        def direct(frame: Frame) -> Resume | None:
            shaped = shape(frame, inline, websocket)
            if written(transport, shaped.ws_frame(), frame):
                return None
            return start(websocket.send_text(shaped.text), frame)

        watch.direct = direct
        while True:
            frame = await watch.get()
            if frame is None:
                await close(websocket, WsClose.TOO_SLOW, "too slow; resume from your last seq")
                return
            try:
                if isinstance(frame, Resume):
                    await stalls.send(frame)  # a send that the fan-out began (and records)
                    frame = frame.frame
                else:
                    await stalls.send(websocket.send_text(shape(frame, inline, websocket).text))
                    sent(frame)
            except TimeoutError:
                await close(websocket, WsClose.TOO_SLOW, "too slow; resume from your last seq")
                return
            if frame.terminal:
                await close(websocket, WsClose.DONE)
                return
            del frame  # an idle socket keeps no event alive

    try:
        await run_until_first_done(send(), drain(websocket))
    finally:
        hub.unfollow(watch, task_id)


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
