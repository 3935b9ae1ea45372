"""The REST endpoints (SPEC section 2), seed-compatible where the seed had them."""

from __future__ import annotations

import json
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from livepix.images import ImageLimits
from livepix.wire import ErrorCode, Status

from .auth import Authenticator, Caller
from .errors import (
    ApiError,
    InvalidInputError,
    InvalidJSONError,
    NotReadyError,
    PayloadTooLargeError,
    UnauthorizedError,
    UnavailableError,
)
from .idempotency import checked_key
from .streams import task_id_param
from .tasks import TaskService
from .validation import ValidationError, validate_task

INLINE_VALIDATION_BYTES = 64 * 1024  # decoding images this small takes well under 1 ms


class NoResultError(ApiError):
    """Raised when the image of a failed or cancelled task is asked for."""

    status_code = 409
    code = ErrorCode.NO_RESULT
    message = "The task ended without a result"


def _tasks(request: Request) -> TaskService:
    service: TaskService = request.app.state.tasks
    return service


async def read_json(request: Request, max_bytes: int) -> tuple[int, Any]:
    """(size, the request body as JSON), refusing bodies over `max_bytes` before reading
    them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"The request body is over {max_bytes // (1024 * 1024)} MB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(f"The request body is over {max_bytes // (1024 * 1024)} MB")
        chunks.append(chunk)
    try:
        return size, json.loads(b"".join(chunks), parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidJSONError() from None


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_LINKS = {
    "status": "status",
    "result": "result",
    "result_png": "result_png",
    "events": "events",
    "ws": "task_ws",
    "cancel": "cancel",
}
_PLACEHOLDER = "00000000-0000-4000-8000-000000000000"


def links(request: Request, task_id: str) -> dict[str, str]:
    # Resolving six routes per submit is measurable: resolve them once, then fill in.
    templates: dict[str, str] | None = getattr(request.app.state, "link_templates", None)
    if templates is None:
        templates = {
            key: str(request.url_for(route, task_id=_PLACEHOLDER).path) for key, route in _LINKS.items()
        }
        request.app.state.link_templates = templates
    return {key: path.replace(_PLACEHOLDER, task_id) for key, path in templates.items()}


async def submit(request: Request) -> Response:
    tasks = _tasks(request)
    settings = tasks.settings
    size, payload = await read_json(request, settings.max_body_bytes)
    limits = ImageLimits(settings.max_image_pixels, settings.max_image_side)
    try:
        if size <= INLINE_VALIDATION_BYTES:
            # A thread hop costs more than checking a small body (docs/benchmarks.md, F4).
            task = validate_task(payload, limits)
        else:
            task = await anyio.to_thread.run_sync(validate_task, payload, limits)
    except ValidationError as exc:
        raise InvalidInputError(details=exc.details) from None
    caller = writer(request)
    key = checked_key(request.headers.get("idempotency-key"), "Idempotency-Key")
    submitted = await tasks.submit(task, caller.owner, key)
    body: dict[str, Any] = {
        "task_id": submitted.task_id,
        "status": submitted.status.value,
        "message": f"{task.task_type.value} task submitted successfully",
        "links": links(request, submitted.task_id),
    }
    if submitted.position is not None:
        body["position"] = submitted.position
    authenticator: Authenticator = request.app.state.auth
    if authenticator.enabled:
        body["stream_token"] = authenticator.stream_token(submitted.task_id, caller.owner)
    # A retried submit gets the same answer; the header says that it made no new task.
    headers = {"Idempotent-Replayed": "true"} if submitted.replayed else None
    return JSONResponse(body, status_code=202, headers=headers)


def writer(request: Request) -> Caller:
    """The caller, if it may change things: a stream token is read-only."""
    caller: Caller = request.state.caller
    if caller.read_only:
        raise UnauthorizedError("A stream token is read-only: use an API key")
    return caller


async def status(request: Request) -> Response:
    tasks = _tasks(request)
    state = await tasks.get(task_id_param(request), request.state.caller)
    body: dict[str, Any] = {
        "task_id": state.task_id,
        "task_type": state.task_type,
        "status": state.status.value,
        "progress": state.progress,
        "message": state.message,
        "result_available": state.result_available,
        "seq": state.seq,
    }
    position = await tasks.position(state)
    if position is not None:
        body["position"] = position
        if state.eta_s is not None:
            body["eta_s"] = state.eta_s
    return JSONResponse(body)


async def _final_event(tasks: TaskService, request: Request) -> tuple[str, Status, dict[str, Any]]:
    state = await tasks.get(task_id_param(request), request.state.caller)
    if not state.terminal:
        raise NotReadyError(
            f"The task is {state.status.value}; watch its events or try again later"
        )
    event = await tasks.last_event(state.task_id)
    if event is None:
        raise UnavailableError("The task's events are missing; retry shortly")
    return state.task_id, state.status, event


async def result(request: Request) -> Response:
    task_id, final, event = await _final_event(_tasks(request), request)
    body: dict[str, Any] = {"task_id": task_id, "status": final.value}
    if final is Status.SUCCESS:
        body["result"] = event["result"]
    elif final is Status.REVOKED:
        body["error"] = {"code": ErrorCode.CANCELLED.value, "message": "The task was cancelled"}
    else:
        body["error"] = event.get("error", {"code": ErrorCode.ENGINE_ERROR.value, "message": "failed"})
    return JSONResponse(body)


async def result_png(request: Request) -> Response:
    tasks = _tasks(request)
    state = await tasks.get(task_id_param(request), request.state.caller)
    if not state.terminal:
        raise NotReadyError(f"The task is {state.status.value}; watch its events or try again later")
    if state.status is not Status.SUCCESS:
        raise NoResultError(f"The task ended {state.status.value} without a result")
    raw = request.query_params.get("index", "0")
    if not raw.isdigit() or len(raw) > 3:
        raise InvalidInputError(details={"index": ["must be the number of one of the task's images, from 0"]})
    png = await tasks.result_png(state.task_id, int(raw))
    if png is None:
        if raw != "0":
            raise InvalidInputError(details={"index": [f"the task has no image {raw}"]})
        raise UnavailableError("The task's result is missing; retry shortly")
    return Response(
        png,
        media_type="image/png",
        headers={
            "Content-Disposition": f'inline; filename="{state.task_id}.png"',
            "Cache-Control": "private, max-age=3600",
        },
    )


async def cancel(request: Request) -> Response:
    tasks = _tasks(request)
    state = await tasks.get(task_id_param(request), writer(request))
    cancelled, now = await tasks.cancel(state)
    return JSONResponse({"task_id": state.task_id, "status": now.value, "cancelled": cancelled})


async def queues(request: Request) -> Response:
    return JSONResponse(await _tasks(request).queues())


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    tasks = _tasks(request)
    redis_ok = await tasks.ping()
    hub_ok = request.app.state.live.hub.connected
    body = {"status": "ready" if redis_ok and hub_ok else "not_ready", "redis": redis_ok, "hub": hub_ok}
    if not (redis_ok and hub_ok):
        body.update(error="Redis is not reachable", code=ErrorCode.UNAVAILABLE.value)
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse(body)
