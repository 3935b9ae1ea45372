"""`GET /api/v1/openapi.json`: the HTTP API described as OpenAPI 3.1 (SPEC sections 2-6).

`DOCUMENT` is built once at import. Its schemas are generated from the pydantic models
of livepix/schema.py, the same models that validate submits and that the SDK returns,
so the document cannot drift from what the api does; the paths, responses and
examples are written here.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from livepix import schema
from livepix.wire import ErrorCode

Schema = dict[str, Any]

API = "/api/v1"  # = main.API, which cannot be imported: main imports this module
TASK = API + "/tasks/{task_id}"


def _ref(name: str, kind: str = "schemas") -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _object(required: list[str], **properties: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_BOOL: Schema = {"type": "boolean"}
_REF_TEMPLATE = "#/components/schemas/{model}"
# Model class -> component name, where the two differ.
_NAMES = {"ErrorBody": "Error"}


class _Generator(GenerateJsonSchema):
    """pydantic's JSON Schema, without a `title` on every property."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _renamed(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _renamed(v) if k != "$ref" else _rename_ref(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_renamed(v) for v in node]
    return node


def _rename_ref(ref: str) -> str:
    prefix, _, name = ref.rpartition("/")
    return f"{prefix}/{_NAMES.get(name, name)}"


def _model_schemas() -> dict[str, Schema]:
    """Every schema of livepix/schema.py, as components: the task request and the event
    (each a `oneOf` told apart by its type), the answers, the error body."""
    schemas: dict[str, Schema] = {}
    for name, union in (("TaskRequest", schema.TaskRequest), ("Event", schema.AnyEvent)):
        document = TypeAdapter(union).json_schema(ref_template=_REF_TEMPLATE,
                                                  schema_generator=_Generator)
        schemas.update(document.pop("$defs"))
        schemas[name] = document
    answers = (schema.ErrorBody, schema.TaskError, schema.TaskResult, schema.Submitted,
               schema.TaskStatus, schema.TaskOutcome, schema.CancelResult, schema.Queues)
    _, document = models_json_schema([(model, "validation") for model in answers],
                                     ref_template=_REF_TEMPLATE, schema_generator=_Generator)
    schemas.update(document["$defs"])
    return {_NAMES.get(name, name): _renamed(value) for name, value in schemas.items()}


_SCHEMAS = _model_schemas()


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
_TASK_ID = {"name": "task_id", "in": "path", "required": True,
            "schema": {"type": "string", "format": "uuid"}}
_IDEMPOTENCY_KEY = {
    "name": schema.IDEMPOTENCY_HEADER, "in": "header",
    "schema": _STR | {"pattern": schema.IDEMPOTENCY_KEY_PATTERN},
    "description": "Retry a submit safely: the same key from the same owner within the "
    "result TTL answers the same task instead of queueing another (1-200 printable ASCII "
    "characters, e.g. a UUID; the SDK sends one by default).",
}
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
        "409": _error("This `Idempotency-Key` was sent before with another body",
                      (ErrorCode.IDEMPOTENCY_CONFLICT,
                       "This Idempotency-Key was used for another request")),
        "413": _error("The body is over `LIVEPIX_MAX_BODY_MB`",
                      (ErrorCode.PAYLOAD_TOO_LARGE, "The request body is over 25 MB")),
        "429": _error("The owner already has `LIVEPIX_MAX_QUEUED_PER_OWNER` waiting tasks",
                      (ErrorCode.TOO_MANY_TASKS, "Too many waiting tasks")) | {"headers": _RETRY_AFTER},
        "503": _503,
        "507": _error("Redis refuses writes: its maxmemory is reached; retry after `Retry-After` seconds",
                      (ErrorCode.STORAGE_FULL, "The service's storage is full; retry later"))
               | {"headers": _RETRY_AFTER},
    }, parameters=[_IDEMPOTENCY_KEY], requestBody={
        "required": True, "content": {"application/json": {"schema": _ref("TaskRequest")}}})},
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
