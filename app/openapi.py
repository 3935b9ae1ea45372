"""`GET /api/v1/openapi.json`: the HTTP API described as OpenAPI 3.1 (SPEC sections 2-6).

`DOCUMENT` is built once at import. Task types, parameter names and defaults, style
presets, inpaint methods, statuses and error codes come from the code, so the document
cannot drift from what the api validates; the ranges written here are checked against
the validators by tests/test_openapi.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from livepix import wire
from livepix.wire import ErrorCode, Status, TaskType

from .validation import MAX_BOXES, MAX_DEADLINE_S, MAX_PROMPT_CHARS, MIN_DEADLINE_S, PARAMETERS

Schema = dict[str, Any]

API = "/api/v1"  # = main.API, which cannot be imported: main imports this module
TASK = API + "/tasks/{task_id}"


def _ref(name: str, kind: str = "schemas") -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _camel(task_type: TaskType) -> str:
    return "".join(word.title() for word in task_type.value.split("_"))


def _range(lo: float, hi: float, multiple_of: int = 1, **extra: Any) -> Schema:
    kind = "integer" if isinstance(lo, int) and isinstance(hi, int) else "number"
    schema: Schema = {"type": kind, "minimum": lo, "maximum": hi, **extra}
    return schema | {"multipleOf": multiple_of} if multiple_of > 1 else schema


def _enum(values: Iterable[str], **extra: Any) -> Schema:
    return {"type": "string", "enum": [str(v) for v in values], **extra}


def _nullable(schema: Schema) -> Schema:
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    out = {**schema, "type": [schema["type"], "null"]}
    if "enum" in out:  # an enum rejects null unless it lists it
        out["enum"] = [*out["enum"], None]
    return out


def _object(required: list[str], **properties: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_BOOL: Schema = {"type": "boolean"}
_STEPS = _range(1, 150, description="Denoising steps.")
_GUIDANCE = _range(0.0, 30.0, description="Classifier-free guidance scale.")
_SEED = _nullable(_range(0, 2**32 - 1, description="Random seed; null picks one."))
_COLOR = _STR | {"pattern": "^#?([0-9a-fA-F]{6})([0-9a-fA-F]{2})?$"}
_RGBA = {"type": "array", "items": _range(0, 255), "minItems": 3, "maxItems": 4}
_BOX = {"type": "array", "items": _INT | {"minimum": 0}, "minItems": 4, "maxItems": 4}

# Range and shape of each parameter; names and defaults come from validation.PARAMETERS.
_RANGES: dict[TaskType, dict[str, Schema]] = {
    TaskType.IMAGE_GENERATION: {
        "width": _range(64, 2048, 8, description="Output width in px."),
        "height": _range(64, 2048, 8, description="Output height in px."),
        "steps": _STEPS, "guidance_scale": _GUIDANCE, "seed": _SEED,
        "negative_prompt": _STR | {"maxLength": MAX_PROMPT_CHARS},
    },
    TaskType.FACE_SWAP: {
        "source_face_index": _range(0, 63, description="Which face of `image` to use."),
        "target_face_index": _nullable(_range(0, 63, description="Which face of "
                                                     "`target_image` to replace; null: all.")),
    },
    TaskType.STYLE_TRANSFER: {
        "style": _nullable(_enum(wire.STYLE_PRESETS, description="A style preset.")),
        "strength": _range(0.05, 1.0, description="How far the result may move from `image`."),
        "steps": _STEPS, "guidance_scale": _GUIDANCE, "seed": _SEED,
    },
    TaskType.BACKGROUND_REMOVAL: {
        "only_mask": _BOOL | {"description": "Return the mask, not the cut-out."},
        "alpha_matting": _BOOL | {"description": "Refine the edges by alpha matting."},
        "bgcolor": _nullable({"anyOf": [_COLOR, _RGBA], "description": "null: transparent."}),
    },
    TaskType.OBJECT_REMOVAL: {
        "boxes": _nullable({"type": "array", "minItems": 1, "maxItems": MAX_BOXES, "items": _BOX,
                            "description": "[x0, y0, x1, y1] each, with x0 < x1 and y0 < y1."}),
        "dilate_px": _range(0, 64, description="Grow the mask by this many px."),
        "method": _enum(wire.INPAINT_METHODS, description="`telea`, `ns`: OpenCV; `auto`: LaMa."),
    },
}

_IMAGE = _STR | {"description": "Base64 PNG, JPEG or WebP; a `data:` URL prefix is accepted."}
_PROMPT = _STR | {"minLength": 1, "maxLength": MAX_PROMPT_CHARS}


def _either(field: str, parameter: str) -> list[Schema]:
    in_parameters = {"properties": {"parameters": {"required": [parameter]}}}
    return [{"required": [field]}, {"required": ["parameters"], **in_parameters}]


# Per task type: the body fields it takes (True: required), and what else it needs.
_FIELDS: dict[TaskType, tuple[dict[str, bool], str, list[Schema]]] = {
    TaskType.IMAGE_GENERATION: ({"prompt": True}, "Needs `prompt`.", []),
    TaskType.FACE_SWAP: ({"image": True, "target_image": True},
                         "`image`: the face to use; `target_image`: the picture to change.", []),
    TaskType.STYLE_TRANSFER: ({"image": True, "prompt": False},
                              "Needs `parameters.style` or `prompt`.", _either("prompt", "style")),
    TaskType.BACKGROUND_REMOVAL: ({"image": True}, "Needs `image`.", []),
    TaskType.OBJECT_REMOVAL: ({"image": True, "mask": False},
                              "Needs `mask` (white = remove) or `parameters.boxes`.",
                              _either("mask", "boxes")),
}


def _task_schemas() -> dict[str, Schema]:
    schemas: dict[str, Schema] = {}
    for task_type in TaskType:
        name, ranges = _camel(task_type), _RANGES[task_type]
        defaults = {n: default for n, (default, _) in PARAMETERS[task_type].items()}
        schemas[name + "Parameters"] = {"type": "object", "additionalProperties": False,
                                        "properties": {n: ranges[n] | {"default": d}
                                                       for n, d in defaults.items()}}
        fields, needs, any_of = _FIELDS[task_type]
        schemas[name + "Task"] = {
            "type": "object",
            "title": task_type.value,
            "description": f"Runs on the `{wire.QUEUE_OF[task_type]}` queue. {needs}",
            "additionalProperties": False,
            "required": ["task_type", *(f for f, required in fields.items() if required)],
            "properties": {
                "task_type": {"const": task_type.value},
                **{f: _PROMPT if f == "prompt" else _IMAGE for f in fields},
                "parameters": {"anyOf": [_ref(name + "Parameters"), {"type": "null"}]},
                "deadline_s": _nullable(_range(MIN_DEADLINE_S, MAX_DEADLINE_S, description=(
                    "End the task `failed` with `timeout` if it has not finished this many "
                    "seconds after the submit (a running one stops at its next progress point)."))),
            },
        } | ({"anyOf": any_of} if any_of else {})
    mapping = {t.value: f"#/components/schemas/{_camel(t)}Task" for t in TaskType}
    schemas["TaskRequest"] = {"oneOf": [{"$ref": ref} for ref in mapping.values()],
                              "discriminator": {"propertyName": "task_type", "mapping": mapping}}
    return schemas


_UUID = _STR | {"format": "uuid"}
_STATUS = _enum(Status)
_CODE = _enum(ErrorCode)
_B64 = _STR | {"contentEncoding": "base64"}
_LINKS = ("status", "result", "result_png", "events", "ws", "cancel")

_SCHEMAS: dict[str, Schema] = {
    **_task_schemas(),
    "Error": _object(["error", "code"], error=_STR, code=_CODE, details={
        "type": "object", "description": "Problems per field (`parameters.<name>` for those).",
        "additionalProperties": {"type": "array", "items": _STR}}),
    "TaskError": _object(["code", "message"], code=_CODE, message=_STR),
    "TaskResult": _object(
        ["status", "metadata"], status={"const": Status.SUCCESS.value},
        image_data=_B64 | {"contentMediaType": "image/png"},
        image_url=_STR | {"description": "Path of result.png, on streams opened with inline=0"},
        prompt_used=_STR, metadata={"type": "object"},
        images={"type": "array", "items": _B64, "description": "Every output, when a task made several"},
    ) | {"oneOf": [{"required": ["image_data"]}, {"required": ["image_url"]}]},
    "Event": _object(
        ["task_id", "seq", "type", "status", "progress", "message", "ts"],
        task_id=_UUID, seq=_INT | {"minimum": 1, "description": "1, 2, 3... per task"},
        type=_enum(wire.EventType), status=_STATUS, progress=_range(0, 100), message=_STR,
        ts={"type": "number", "description": "Unix time, s"},
        position=_INT | {"minimum": 1, "description": "`queued`: place in the queue"},
        eta_s={"type": "number", "description": "`queued`: estimated wait, s"},
        worker=_STR | {"description": "`started`"},
        queue=_enum(wire.Queue, description="`started`"),
        step=_INT | {"description": "`progress`"}, total=_INT | {"description": "`progress`"},
        preview=_B64 | {"contentMediaType": "image/jpeg", "description": "`progress`, optional; "
                        "live only: a replayed event may come without it"},
        replaces={"type": "array", "items": _INT, "description": "Seqs this client will not get: "
                  "progress coalesced (or not queued) for a slow client; never a gap otherwise"},
        result=_ref("TaskResult") | {"description": "`succeeded`"},
        error=_ref("TaskError") | {"description": "`failed`"},
    ),
    "Submitted": _object(
        ["task_id", "status", "message", "position", "links"], task_id=_UUID,
        status={"const": Status.PENDING.value}, message=_STR, position=_INT | {"minimum": 1},
        links=_object(list(_LINKS), **dict.fromkeys(_LINKS, _STR)),
        stream_token=_STR | {"description": "With API keys on: a signed, read-only token for "
                             "this task only, to pass as `?token=` on its streams and GETs"},
    ),
    "TaskStatus": _object(
        ["task_id", "task_type", "status", "progress", "message", "result_available", "seq"],
        task_id=_UUID, task_type=_enum(TaskType), status=_STATUS, progress=_range(0, 100),
        message=_STR, result_available=_BOOL,
        seq=_INT | {"minimum": 0, "description": "The last event's seq"},
        position=_INT | {"minimum": 1, "description": "While PENDING"},
    ),
    "TaskOutcome": _object(
        ["task_id", "status"], task_id=_UUID, status=_STATUS,
        result=_ref("TaskResult") | {"description": "When SUCCESS"},
        error=_ref("TaskError") | {"description": "When FAILURE, or REVOKED (code `cancelled`)"},
    ),
    "CancelResult": _object(["task_id", "status", "cancelled"], task_id=_UUID, status=_STATUS,
                            cancelled=_BOOL),
    "Queues": _object(
        ["queues", "workers", "running"], workers=_INT | {"description": "Seen in the last 15 s"},
        running=_INT, queues=_object([q.value for q in wire.Queue], **{
            q.value: _object(["pending", "running"], pending=_INT, running=_INT)
            for q in wire.Queue}),
    ),
}


def _json(description: str, schema: Schema, **extra: Any) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}},
            **extra}


def _error(description: str, *examples: tuple[ErrorCode, str], details: Any = None) -> Schema:
    """An `Error` response, with one example per (code, message)."""
    values = {c.value: {"value": {"error": message, "code": c.value}} for c, message in examples}
    if details is not None:
        values[examples[0][0].value]["value"]["details"] = details
    return {"description": description,
            "content": {"application/json": {"schema": _ref("Error"), "examples": values}}}


def _op(op_id: str, tag: str, summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    return {"operationId": op_id, "tags": [tag], "summary": summary, "responses": responses,
            **extra}


_RETRY_AFTER = {"Retry-After": {"schema": _INT}}
_UNAVAILABLE = "The service is temporarily unavailable; retry shortly"
_RESPONSES: dict[str, Schema] = {
    "NotFound": _error("Unknown, expired or someone else's task, or an id that is not a UUID",
                       (ErrorCode.NOT_FOUND, "Task not found")),
    "Unavailable": _error("Redis is unreachable; retry after `Retry-After` seconds",
                          (ErrorCode.UNAVAILABLE, _UNAVAILABLE)) | {"headers": _RETRY_AFTER},
}
_404, _503 = _ref("NotFound", "responses"), _ref("Unavailable", "responses")
_NOT_READY = (ErrorCode.NOT_READY, "The task is PROCESSING; watch its events or try again later")
_TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": _UUID}
_SINCE = _INT | {"minimum": 0}
_SSE = ("A `retry:` hint, then each event after the resume point as `id: <seq>`, "
        "`event: <type>`, `data: <Event JSON>` (its `result` inline unless `inline=0`), and a "
        "keepalive comment after 15 s without an event; the stream ends after the terminal event. While Redis "
        "is down: 200 with only `retry:`, never a 5xx (EventSource would give up for good).")
_READY = {"redis": _BOOL, "hub": _BOOL}

_PATHS: dict[str, Schema] = {
    API + "/tasks/submit/": {"post": _op("submitTask", "tasks", "Submit a task", {
        "202": _json("Queued", _ref("Submitted")),
        "400": _error("Invalid task (`details` per field), or a body that is not JSON",
                      (ErrorCode.INVALID_INPUT, "Invalid input"),
                      (ErrorCode.INVALID_JSON, "The request body is not valid JSON"),
                      details={"prompt": ["Prompt is required for image_generation"]}),
        "401": _error("API keys are on and the request carries none, a wrong one, or a "
                      "read-only stream token", (ErrorCode.UNAUTHORIZED, "A valid API key is required")),
        "413": _error("The body is over `LIVEPIX_MAX_BODY_MB`",
                      (ErrorCode.PAYLOAD_TOO_LARGE, "The request body is over 25 MB")),
        "429": _error("The owner already has `LIVEPIX_MAX_QUEUED_PER_OWNER` waiting tasks",
                      (ErrorCode.TOO_MANY_TASKS, "Too many waiting tasks")) | {"headers": _RETRY_AFTER},
        "503": _503,
    }, requestBody={"required": True,
                    "content": {"application/json": {"schema": _ref("TaskRequest")}}})},
    TASK + "/status/": {"parameters": [_TASK_ID], "get": _op(
        "getTaskStatus", "tasks", "A task's latest state",
        {"200": _json("State", _ref("TaskStatus")), "404": _404, "503": _503})},
    TASK + "/result/": {"parameters": [_TASK_ID], "get": _op(
        "getTaskResult", "tasks", "A finished task's result (base64 PNG) or error",
        {"200": _json("Finished", _ref("TaskOutcome")), "404": _404,
         "409": _error("Not finished yet", _NOT_READY), "503": _503})},
    TASK + "/cancel/": {"parameters": [_TASK_ID], "post": _op(
        "cancelTask", "tasks", "Cancel a task; `cancelled` is false if it had already ended",
        {"200": _json("Cancelled, or not", _ref("CancelResult")), "404": _404, "503": _503})},
    TASK + "/result.png": {"parameters": [_TASK_ID], "get": _op(
        "getTaskResultPng", "tasks", "The result image as bytes", {
            "200": {"description": "The image", "content": {"image/png": {"schema": {}}},
                    "headers": {"Content-Disposition": {"schema": _STR}}},
            "400": _error("No such image", (ErrorCode.INVALID_INPUT, "Invalid input"),
                          details={"index": ["the task has no image 3"]}),
            "404": _404,
            "409": _error("Not finished yet, or ended without a result", _NOT_READY,
                          (ErrorCode.NO_RESULT, "The task ended FAILURE without a result")),
            "503": _503},
        parameters=[{"name": "index", "in": "query", "schema": _INT | {"minimum": 0, "maximum": 999, "default": 0},
                     "description": "Which output, for a task that made several."}])},
    TASK + "/events": {"parameters": [_TASK_ID], "get": _op(
        "streamTaskEvents", "streams", "The task's events as Server-Sent Events", {
            "200": {"description": _SSE, "content": {"text/event-stream": {"schema": _STR}}},
            "400": _error("A bad `since` or `Last-Event-ID`", (ErrorCode.INVALID_INPUT,
                          "Invalid input"), details={"since": ["must be a non-negative integer"]}),
            "404": _404},
        parameters=[
            {"name": "Last-Event-ID", "in": "header", "schema": _SINCE,
             "description": "Resume after this seq; wins over `since`."},
            {"name": "since", "in": "query", "schema": _SINCE | {"default": 0},
             "description": "Resume after this seq (EventSource cannot send headers at first)."},
            {"name": "inline", "in": "query", "schema": _STR | {"default": "1"},
             "description": "`0` or `false`: results carry `image_url`, not `image_data`."},
        ])},
    API + "/queues": {"get": _op("getQueues", "service", "Queue depths, workers, running tasks",
                                 {"200": _json("Snapshot", _ref("Queues")), "503": _503})},
    API + "/healthz": {"get": _op("healthz", "service", "Liveness", {
        "200": _json("Alive", _object(["status"], status={"const": "ok"}))}, security=[{}])},
    API + "/readyz": {"get": _op("readyz", "service", "Readiness: Redis and the event hub", {
        "200": _json("Ready", _object(["status", "redis", "hub"], status={"const": "ready"},
                                      **_READY)),
        "503": _json("Not ready", _object(
            ["status", "redis", "hub", "error", "code"], status={"const": "not_ready"},
            error=_STR, code={"const": ErrorCode.UNAVAILABLE.value}, **_READY),
            headers=_RETRY_AFTER)})},
    API + "/metrics": {"get": _op("metrics", "service", "Prometheus metrics of this process", {
        "200": {"description": "Prometheus text format",
                "content": {"text/plain": {"schema": _STR}}}})},
    API + "/openapi.json": {"get": _op("openapi", "service", "This document", {
        "200": _json("OpenAPI 3.1", {"type": "object"})})},
}

_DESCRIPTION = f"""\
AI image tasks with live progress: submit a task, then watch it instead of polling.

The seed paths (submit, status, result, cancel) also answer without their trailing
slash; `/healthz`, `/readyz` and `/metrics` also answer at the root.

**Events** (schema `Event`) are the same over SSE and WebSocket; every task ends with
exactly one `succeeded`, `failed` or `cancelled`. `seq` starts at 1 and grows by 1;
resuming after seq N yields every later event once, in order.

**WebSockets** (OpenAPI cannot describe them): text frames of JSON; `?inline=0` as for SSE.

- `{TASK}/ws?since=<seq>`: the task's events; closes 1000 after the terminal one. An
  unknown task is refused with the 404 JSON before the socket opens.
- `{API}/ws`: one socket for many tasks. Client ops: `{{"op":"subscribe","task_id",
  "since"?}}`, `{{"op":"unsubscribe","task_id"}}`, `{{"op":"submit","request_id",
  "task":<TaskRequest>}}` (also subscribes), `{{"op":"cancel","task_id"}}`, `{{"op":"ping"}}`.
  Replies, besides events: `{{"op":"submitted","request_id","task_id","status","position"}}`,
  `{{"op":"cancelled","task_id","cancelled","status"}}`, `{{"op":"unsubscribed","task_id"}}`,
  `{{"op":"pong"}}`, `{{"op":"error","code","error","request_id"|"task_id"?,"details"?}}`.

Close codes: 1000 done, 1001/1012 server going away (reconnect and resume), 1008
unauthorized, 1009 frame too big, 1011 internal error, 1013 overloaded (back off),
4008 too slow (reconnect and resume).

**Auth**: none by default (task ids are unguessable UUID4s). With `LIVEPIX_API_KEYS` set,
send `Authorization: Bearer <key>`; a task submitted with another key answers 404.
"""

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "livepix", "version": "0.1.0", "description": _DESCRIPTION,
             "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
    "tags": [{"name": "tasks"}, {"name": "streams"}, {"name": "service"}],
    "security": [{}, {"bearer": []}],  # {}: keys are optional (LIVEPIX_API_KEYS)
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "responses": _RESPONSES,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "Only when `LIVEPIX_API_KEYS` is set."}},
    },
}

_BODY = json.dumps(DOCUMENT, separators=(",", ":")).encode()  # rendered once, served often


async def openapi(request: Request) -> Response:
    return Response(_BODY, media_type="application/json")
