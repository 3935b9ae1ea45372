"""The wire contract: everything the api, the workers and the clients agree on.

Task types and their queues, actor names, statuses, event shapes, error codes, and
every Redis key and channel name live here and nowhere else.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Any, Literal, NotRequired, TypedDict


class TaskType(StrEnum):
    IMAGE_GENERATION = "image_generation"
    FACE_SWAP = "face_swap"
    STYLE_TRANSFER = "style_transfer"
    BACKGROUND_REMOVAL = "background_removal"
    OBJECT_REMOVAL = "object_removal"


class Queue(StrEnum):
    GPU = "gpu"
    CPU = "cpu"


QUEUE_OF: dict[TaskType, Queue] = {
    TaskType.IMAGE_GENERATION: Queue.GPU,
    TaskType.FACE_SWAP: Queue.GPU,
    TaskType.STYLE_TRANSFER: Queue.GPU,
    TaskType.BACKGROUND_REMOVAL: Queue.CPU,
    TaskType.OBJECT_REMOVAL: Queue.CPU,
}


def actor_name(task_type: TaskType) -> str:
    """The Dramatiq actor that runs `task_type`. Queued messages refer to it: never rename."""
    return f"process_{task_type.value}"


class Status(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"


TERMINAL_STATUSES = frozenset({Status.SUCCESS, Status.FAILURE, Status.REVOKED})


class EventType(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_EVENTS = frozenset({EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED})


class ErrorCode(StrEnum):
    """Stable machine-readable error codes, over HTTP, WebSocket and in `failed` events."""

    INVALID_INPUT = "invalid_input"
    INVALID_JSON = "invalid_json"
    NOT_FOUND = "not_found"
    NOT_READY = "not_ready"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN_ORIGIN = "forbidden_origin"
    TOO_MANY_TASKS = "too_many_tasks"
    UNAVAILABLE = "unavailable"
    STORAGE_FULL = "storage_full"
    UNKNOWN_OP = "unknown_op"
    INTERNAL_ERROR = "internal_error"
    NO_RESULT = "no_result"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"  # 409: the same Idempotency-Key, another body
    CANCELLED = "cancelled"
    # Failures of a task, carried by `failed` events.
    MODEL_UNAVAILABLE = "model_unavailable"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    ENGINE_ERROR = "engine_error"
    INVALID_IMAGE = "invalid_image"
    NO_FACE_DETECTED = "no_face_detected"
    OUT_OF_MEMORY = "out_of_memory"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"


class TaskError(TypedDict):
    code: str
    message: str


class TaskResult(TypedDict):
    """The `result` object of GET result and of a `succeeded` event. The store keeps it
    without `image_data`; the api adds it (or `image_url`) on the way out."""

    status: str
    image_data: NotRequired[str]  # base64 PNG
    image_url: NotRequired[str]  # instead of image_data, for clients asking inline=0
    images: NotRequired[list[str]]  # every output, base64 PNG, when there are several
    image_urls: NotRequired[list[str]]  # instead of images, for clients asking inline=0
    metadata: dict[str, Any]
    prompt_used: NotRequired[str]


class Event(TypedDict):
    """One entry of a task's event log, the same over SSE and WebSocket."""

    task_id: str
    seq: int
    type: str
    status: str
    progress: int
    message: str
    ts: float
    position: NotRequired[int]
    eta_s: NotRequired[float]
    worker: NotRequired[str]
    queue: NotRequired[str]
    step: NotRequired[int]
    total: NotRequired[int]
    preview: NotRequired[str]
    replaces: NotRequired[list[int]]  # set per client by the api when it coalesced progress
    result: NotRequired[TaskResult]
    error: NotRequired[TaskError]


EVENT_STATUS: dict[EventType, Status] = {
    EventType.QUEUED: Status.PENDING,
    EventType.STARTED: Status.PROCESSING,
    EventType.PROGRESS: Status.PROCESSING,
    EventType.SUCCEEDED: Status.SUCCESS,
    EventType.FAILED: Status.FAILURE,
    EventType.CANCELLED: Status.REVOKED,
}


def _body(task_id: str, type: EventType, progress: int, message: str, **extra: Any) -> str:
    """The one builder of an event's JSON, without its `seq`: the store inserts `seq`
    atomically (it prepends `"seq":N,` after the `{`). Fields that are None are left out."""
    event: dict[str, Any] = {
        "task_id": task_id,
        "type": type.value,
        "status": EVENT_STATUS[type].value,
        "progress": progress,
        "message": message,
        "ts": round(time.time(), 3),
    }
    event.update({k: v for k, v in extra.items() if v is not None})
    return dumps(event)


def queued_body(task_id: str, position: int | str, eta_s: float | None) -> str:
    """`queued`: the task waits at `position` of its queue; done in about `eta_s`."""
    return _body(task_id, EventType.QUEUED, 0, queued_message(position), position=position,
                 eta_s=None if eta_s is None else round(eta_s, 1))


# Where the position is only known inside the store's script (a submit on one Redis
# lines the task up and logs `queued` in one round trip), the body and its message
# carry this mark, quoted in the JSON, and the script puts the number in.
POSITION_MARK = "@position@"


def queued_template(task_id: str) -> tuple[str, str]:
    """`queued` at a position still unknown: its body and message with `POSITION_MARK`."""
    return queued_body(task_id, POSITION_MARK, None), queued_message(POSITION_MARK)


def queued_message(position: int | str) -> str:
    return f"Queued at position {position}"


def started_body(task_id: str, worker: str, queue: str) -> str:
    """`started`: a worker took the task (again, after its last worker died)."""
    return _body(task_id, EventType.STARTED, 0, "Started", worker=worker, queue=queue)


def progress_body(
    task_id: str,
    percent: int,
    message: str,
    *,
    step: int | None = None,
    total: int | None = None,
    eta_s: float | None = None,
    **extra: Any,
) -> str:
    """`progress`, without its preview: the store adds the preview to what it publishes
    and keeps only the latest one (SPEC section 4)."""
    return _body(task_id, EventType.PROGRESS, percent, message, step=step, total=total, eta_s=eta_s, **extra)


def succeeded_body(task_id: str, message: str, result: TaskResult) -> str:
    """`succeeded`, its result without the image: the store keeps the PNG bytes once,
    and the api encodes them on the way out."""
    return _body(task_id, EventType.SUCCEEDED, 100, message, result=result)


def failed_body(task_id: str, message: str, error: TaskError, progress: int = 0) -> str:
    return _body(task_id, EventType.FAILED, progress, message, error=error)


def cancelled_body(task_id: str) -> str:
    return _body(task_id, EventType.CANCELLED, 0, "Cancelled")


def dumps(obj: Any) -> str:
    """Compact JSON, the one serialization used on the wire."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# --- Redis keys and channels -------------------------------------------------
# Per-task keys share a hash tag so that a task's keys live on one cluster slot.

KEY_PREFIX = "livepix"
RESULT_TTL_S = 3600


def state_key(task_id: str) -> str:
    """Hash: status, progress, message, seq, task_type, queue, owner, attempts, ..."""
    return f"{KEY_PREFIX}:task:{{{task_id}}}:state"


def log_key(task_id: str) -> str:
    """List: the task's events as JSON, index = seq - 1."""
    return f"{KEY_PREFIX}:task:{{{task_id}}}:log"


def input_key(task_id: str) -> str:
    """String: the task's validated request as JSON (images as base64), deleted when the
    task ends."""
    return f"{KEY_PREFIX}:task:{{{task_id}}}:input"


def result_key(task_id: str) -> str:
    """List: the task's output images, raw PNG bytes, one per output."""
    return f"{KEY_PREFIX}:task:{{{task_id}}}:result"


def channel(task_id: str) -> str:
    """Pub/sub channel on which every appended event of the task is published."""
    return f"{KEY_PREFIX}:task:{{{task_id}}}:events"


def task_id_of_channel(name: str) -> str:
    """Inverse of `channel`."""
    return name[len(KEY_PREFIX) + 7 : -8]


def pending_key(queue: Queue | str) -> str:
    """Sorted set of the queue's tasks not yet started, in submit order."""
    return f"{KEY_PREFIX}:queue:{queue}:pending"


def running_key() -> str:
    """Sorted set: running task id -> time it started."""
    return f"{KEY_PREFIX}:running"


def workers_key() -> str:
    """Sorted set: worker id -> last heartbeat time."""
    return f"{KEY_PREFIX}:workers"


def runtime_key() -> str:
    """Hash: task type -> moving average of its run time in seconds (for `eta_s`)."""
    return f"{KEY_PREFIX}:runtime"


def capacity_key(queue: Queue | str) -> str:
    """Sorted set: "<worker id>|<threads>" of each worker consuming `queue` -> last heartbeat."""
    return f"{KEY_PREFIX}:queue:{queue}:workers"


def owner_queue_key(owner: str) -> str:
    """Sorted set: the owner's waiting task ids -> submit time (the per-owner cap)."""
    return f"{KEY_PREFIX}:owner:{owner}:waiting"


def upkeep_lease_key() -> str:
    """String: the id of the api process doing the upkeep passes, with a short TTL."""
    return f"{KEY_PREFIX}:upkeep:lease"


def idempotency_key(owner: str, key_digest: str) -> str:
    """String: the task an owner's `Idempotency-Key` (by its digest) submitted, and the
    fingerprint of that request, for the TTL."""
    return f"{KEY_PREFIX}:idempotency:{owner}:{key_digest}"


def deadlines_key() -> str:
    """Sorted set: task id -> the time its `deadline_s` runs out (the upkeep ends it)."""
    return f"{KEY_PREFIX}:deadlines"


MAX_SEQ = 2**63 - 1  # Redis list indexes are signed 64-bit: a larger `since` is an error there
WORKER_HEARTBEAT_S = 5.0
WORKER_SEEN_S = 3 * WORKER_HEARTBEAT_S

# --- WebSocket -----------------------------------------------------------------

WsOp = Literal["subscribe", "unsubscribe", "submit", "cancel", "ping"]


class WsClose:
    """WebSocket close codes (SPEC section 5)."""

    DONE = 1000
    GOING_AWAY = 1001
    UNAUTHORIZED = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    RESTARTING = 1012
    OVERLOADED = 1013
    TOO_SLOW = 4008

# --- Task parameters shared by the api (validation) and the engines -------------

STYLE_PRESETS: dict[str, str] = {
    "anime": "anime style illustration, clean line art, vibrant cel shading",
    "watercolor": "soft watercolor painting, wet washes, paper texture",
    "oil_painting": "classical oil painting, thick impasto brush strokes",
    "pencil_sketch": "detailed graphite pencil sketch, cross hatching, monochrome",
    "cyberpunk": "cyberpunk scene, neon lights, rain, high contrast",
    "pixel_art": "16-bit pixel art, limited palette, crisp pixels",
    "van_gogh": "in the style of Vincent van Gogh, swirling brush strokes, post-impressionism",
    "ukiyo_e": "ukiyo-e woodblock print, flat colors, bold outlines",
    "pop_art": "pop art, halftone dots, bold primary colors",
    "cinematic": "cinematic film still, dramatic lighting, shallow depth of field",
}

INPAINT_METHODS = ("auto", "lama", "telea", "ns")
