"""`WS /ws`: one multiplexed WebSocket to subscribe to many tasks, submit and cancel.

Client ops: `{"op":"subscribe","task_id","since"?}`, `{"op":"unsubscribe","task_id"}`,
`{"op":"submit","request_id","task":{...}}`, `{"op":"cancel","task_id"}`, `{"op":"ping"}`.
Server replies: events, and `{"op":"submitted"|"cancelled"|"unsubscribed"|"error"|"pong",...}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any, NoReturn

import anyio
from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from livepix.images import ImageLimits
from livepix.wire import MAX_SEQ, ErrorCode, WsClose

from .auth import Authenticator, Caller
from .errors import ApiError, UnauthorizedError
from .idempotency import checked_key
from .live import Ending, Frame, Live, MuxOutlet, Outbox, Subscriptions
from .streams import close, inline_param, past_the_end, run_until_first_done, shaper
from .tasks import TaskService
from .validation import ValidationError, json_problem, validate_task

log = logging.getLogger(__name__)


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not JSON")  # json.loads accepts NaN and Infinity otherwise


class Session:
    """One client of `/ws`: its subscriptions and the ops it sends."""

    def __init__(self, websocket: WebSocket, live: Live, subscriptions: Subscriptions) -> None:
        self.ws = websocket
        self.tasks: TaskService = websocket.app.state.tasks
        self.caller: Caller = websocket.state.caller
        self.subscriptions = subscriptions
        self.outbox = subscriptions.outbox
        self.outlet = MuxOutlet(
            subscriptions, live.stalls, websocket.send, live.transports.websocket(websocket.scope),
            shaper(websocket, inline_param(websocket)),
        )
        self._joining: dict[str, asyncio.Task[None]] = {}

    def say(self, **fields: Any) -> None:
        self.outbox.say(Frame.reply(**fields))

    def error(self, code: str, message: str, **about: Any) -> None:
        self.say(op="error", code=code, error=message, **about)

    async def send_loop(self) -> None:
        if await self.outlet.pump() is Ending.TOO_SLOW:
            await close(self.ws, WsClose.TOO_SLOW, "too slow; resubscribe from your last seq")

    async def receive_loop(self) -> None:
        while True:
            try:
                text = await self.ws.receive_text()
            except WebSocketDisconnect:
                return
            except KeyError:  # a binary frame
                self.error(ErrorCode.INVALID_JSON.value, "send JSON text frames")
                continue
            try:
                op = json.loads(text, parse_constant=_not_json)
            except (ValueError, RecursionError):  # RecursionError: nested too deep
                self.error(ErrorCode.INVALID_JSON.value, "the message is not valid JSON")
                continue
            if not isinstance(op, dict):
                self.error(ErrorCode.INVALID_JSON.value, "a message must be a JSON object")
                continue
            # Replies echo these fields: refuse what could not be sent back as JSON text.
            # A submit's `task` is checked by validate_task, with details, as over HTTP.
            if problem := json_problem({k: v for k, v in op.items() if k != "task"}):
                self.error(ErrorCode.INVALID_JSON.value, f"the message {problem}")
                continue
            await self.handle(op)

    async def handle(self, op: dict[str, Any]) -> None:
        name = op.get("op")
        if name == "ping":
            self.say(op="pong")
        elif name == "subscribe":
            task_id = self._task_id(op)
            since = op.get("since", 0)
            if task_id is None:
                return
            if not isinstance(since, int) or isinstance(since, bool) or not 0 <= since <= MAX_SEQ:
                self.error(ErrorCode.INVALID_INPUT.value, "since must be a non-negative integer", task_id=task_id)
                return
            await self.subscribe(task_id, since)
        elif name == "unsubscribe":
            task_id = self._task_id(op)
            if task_id is not None:
                joining = self._joining.pop(task_id, None)
                if joining is not None:
                    joining.cancel()  # its follow unfollows itself
                self.subscriptions.unfollow(task_id)
                # After an explicit unsubscribe, a subscribe means what its `since` says.
                self.outlet.last_seq.pop(task_id, None)
                self.say(op="unsubscribed", task_id=task_id)
        elif name == "cancel":
            task_id = self._task_id(op)
            if task_id is not None:
                await self.cancel(task_id)
        elif name == "submit":
            await self.submit(op)
        else:
            self.error(ErrorCode.UNKNOWN_OP.value, f"unknown op {name!r}", received_op=name)

    def _task_id(self, op: dict[str, Any]) -> str | None:
        raw = op.get("task_id")
        if not isinstance(raw, str):
            self.error(ErrorCode.INVALID_INPUT.value, "task_id must be a string", task_id=raw)
            return None
        try:
            return str(uuid.UUID(raw))
        except ValueError:  # anything but a UUID is an unknown task, as over HTTP
            self.error(ErrorCode.NOT_FOUND.value, "Task not found", task_id=raw)
            return None

    async def subscribe(self, task_id: str, since: int) -> None:
        try:
            state = await self.tasks.get(task_id, self.caller)
        except ApiError as exc:
            self.error(exc.code.value, exc.message, task_id=task_id)
            return
        if task_id in self.outbox.follows or task_id in self._joining:
            return  # already subscribed: harmless, and never delivers twice
        if (refused := past_the_end(since, state.seq)) is not None:
            self.error(refused.code.value, "since is past the task's last event", task_id=task_id,
                       details=refused.details)
            return
        since = max(since, self.outlet.last_seq.get(task_id, 0))
        if state.terminal and since >= state.seq:
            return  # this socket already has every event of the finished task
        # Follow in the background: history reads must not stall this socket's ops.
        self._joining[task_id] = asyncio.create_task(self._follow(task_id, since))

    async def _follow(self, task_id: str, since: int) -> None:
        try:
            await self.subscriptions.follow(task_id, since)
        except RedisError:
            self.error(ErrorCode.UNAVAILABLE.value, "storage unavailable; subscribe again", task_id=task_id)
        finally:
            # An unsubscribe may have replaced or removed this join already.
            if self._joining.get(task_id) is asyncio.current_task():
                del self._joining[task_id]

    async def cancel(self, task_id: str) -> None:
        try:
            if self.caller.read_only:
                raise UnauthorizedError("A stream token is read-only: use an API key")
            state = await self.tasks.get(task_id, self.caller)
            cancelled, status = await self.tasks.cancel(state)
        except ApiError as exc:
            self.error(exc.code.value, exc.message, task_id=task_id)
            return
        self.say(op="cancelled", task_id=task_id, cancelled=cancelled, status=status.value)

    async def submit(self, op: dict[str, Any]) -> None:
        request_id = op.get("request_id")
        settings = self.tasks.settings
        limits = ImageLimits(settings.max_image_pixels, settings.max_image_side)
        try:
            if self.caller.read_only:
                raise UnauthorizedError("A stream token is read-only: use an API key")
            key = checked_key(op.get("idempotency_key"), "idempotency_key")
            request = await anyio.to_thread.run_sync(validate_task, op.get("task"), limits)
            submitted = await self.tasks.submit(request, self.caller.owner, key)
        except ValidationError as exc:
            self.say(op="error", request_id=request_id, code=ErrorCode.INVALID_INPUT.value,
                     error="Invalid input", details=exc.details)
            return
        except ApiError as exc:
            self.error(exc.code.value, exc.message, request_id=request_id)
            return
        task_id = submitted.task_id
        reply: dict[str, Any] = {"request_id": request_id, "task_id": task_id, "status": submitted.status.value}
        if submitted.position is not None:
            reply["position"] = submitted.position
        if submitted.replayed:
            reply["replayed"] = True
        authenticator: Authenticator = self.ws.app.state.auth
        if authenticator.enabled:
            reply["stream_token"] = authenticator.stream_token(task_id, self.caller.owner)
        self.say(op="submitted", **reply)
        await self.subscribe(task_id, 0)

    async def close(self) -> None:
        joins = list(self._joining.values())
        self._joining.clear()
        for join in joins:
            join.cancel()
        await asyncio.gather(*joins, return_exceptions=True)  # each unfollows itself


async def mux_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    live: Live = websocket.app.state.live
    async with live.hub.watching(Outbox()) as subscriptions:
        session = Session(websocket, live, subscriptions)
        try:
            await run_until_first_done(session.send_loop(), session.receive_loop())
        finally:
            await session.close()
    # Both loops end with the socket closed or gone, unless one of them failed.
    if WebSocketState.CONNECTED == websocket.application_state == websocket.client_state:
        await close(websocket, WsClose.INTERNAL, "internal error")
