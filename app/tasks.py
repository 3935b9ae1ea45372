"""The api's side of the task store: submit, look up, cancel, read the log, positions.

Redis errors become `UnavailableError` here, at the edge.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import RedisError

from livepix import store
from livepix.config import Settings
from livepix.storage import arun
from livepix.wire import (
    QUEUE_OF,
    TERMINAL_STATUSES,
    WORKER_SEEN_S,
    Queue,
    Status,
    actor_name,
    dumps,
    log_key,
    pending_key,
    result_key,
    running_key,
    state_key,
    workers_key,
)

from .auth import ANONYMOUS, Caller
from .errors import NotFoundError, StorageFullError, TooManyTasksError, UnavailableError
from .idempotency import Idempotency
from .validation import TaskRequest

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class TaskState:
    """A task's latest state, from its Redis hash."""

    task_id: str
    status: Status
    progress: int
    message: str
    seq: int
    task_type: str
    queue: str
    owner: str
    result_available: bool
    error_code: str
    eta_s: float | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_hash(cls, task_id: str, h: dict[str, str]) -> TaskState:
        return cls(
            task_id=task_id,
            status=Status(h.get("status", Status.PENDING.value)),
            progress=int(h.get("progress", 0)),
            message=h.get("message", ""),
            seq=int(h.get("seq", 0)),
            task_type=h.get("task_type", ""),
            queue=h.get("queue", ""),
            owner=h.get("owner", ""),
            result_available=h.get("result_available") == "1",
            error_code=h.get("error_code", ""),
            eta_s=float(h["eta_s"]) if h.get("eta_s") else None,
        )


@dataclass(frozen=True, slots=True)
class Submitted:
    task_id: str
    status: Status
    position: int | None
    replayed: bool = False  # the task an earlier submit with the same Idempotency-Key made


class _RedisErrors:
    """See `redis_errors` (a class: a generator-based context manager costs a few us on
    every submit)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, RedisOutOfMemoryError):
            log.warning("Redis is full: %s", exc)
            raise StorageFullError() from exc
        if isinstance(exc, (RedisError, OSError)):
            log.warning("Redis unavailable: %s", exc)
            raise UnavailableError() from exc


_REDIS_ERRORS = _RedisErrors()


def redis_errors() -> _RedisErrors:
    """Translate Redis failures into an error for the client: 507 `storage_full` when
    Redis refuses writes (maxmemory reached), else 503 `unavailable`."""
    return _REDIS_ERRORS


class TaskService:
    """Everything the api does with tasks in Redis and on the broker.

    `client` decodes replies to text; `binary` (the same Redis) keeps bytes, for the
    result images.
    """

    def __init__(self, client: Any, binary: Any, settings: Settings) -> None:
        self.client = client
        self.binary = binary
        self.settings = settings
        self.opts = store.Options(settings.result_ttl_s, settings.cluster)
        self.idempotency = Idempotency(client, settings.result_ttl_s)
        self.submitted: dict[str, int] = {}

    async def submit(self, request: TaskRequest, owner: str = "", idempotency_key: str | None = None) -> Submitted:
        """Store a validated task, then enqueue it.

        With `idempotency_key`, a key this owner used within the TTL answers with the task
        it submitted then (`Submitted.replayed`), or `IdempotencyConflictError` if that
        was another request. Raises `TooManyTasksError` when the owner already has its
        cap of waiting tasks.
        """
        task_id = str(uuid.uuid4())
        if idempotency_key is not None:
            async with redis_errors():
                claim = await self.idempotency.claim(owner, idempotency_key, task_id, request)
                if claim is not None:
                    await self.idempotency.wait_for(claim)
                    state = await self.state(claim.task_id)
            if claim is not None:
                if state is None:
                    raise UnavailableError("The task of this Idempotency-Key is gone; retry")
                return Submitted(claim.task_id, state.status, await self.position(state), replayed=True)
        try:
            position = await self._store(task_id, request, owner)
        except BaseException:
            if idempotency_key is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self.idempotency.release(owner, idempotency_key, task_id)
            raise
        self.submitted[request.task_type.value] = self.submitted.get(request.task_type.value, 0) + 1
        return Submitted(task_id, Status.PENDING, position)

    async def _store(self, task_id: str, request: TaskRequest, owner: str) -> int:
        queue = QUEUE_OF[request.task_type].value
        deadline = None if request.deadline_s is None else time.time() + request.deadline_s
        try:
            async with redis_errors():
                return await arun(self.client, store.submit(
                    self.opts, task_id, request.task_type.value, queue, owner, dumps(request.to_wire()),
                    self.settings.max_queued_per_owner, actor_name(request.task_type), deadline,
                ))
        except store.OwnerCapError:
            raise TooManyTasksError(
                f"You already have {self.settings.max_queued_per_owner} tasks waiting; "
                "retry when some have started",
                retry_after_s=5,
            ) from None

    async def state(self, task_id: str) -> TaskState | None:
        async with redis_errors():
            raw = cast(dict[str, str], await self.client.hgetall(state_key(task_id)))
        if not raw:
            return None
        return TaskState.from_hash(task_id, raw)

    async def get(self, task_id: str, caller: Caller = ANONYMOUS) -> TaskState:
        """The task's state, or `NotFoundError` (unknown, expired, or not the caller's)."""
        state = await self.state(task_id)
        if state is None or state.owner != caller.owner or not caller.may_read(task_id):
            raise NotFoundError()
        return state

    async def position(self, state: TaskState) -> int | None:
        if state.status is not Status.PENDING:
            return None
        async with redis_errors():
            rank = await self.client.zrank(pending_key(state.queue), state.task_id)
        return None if rank is None else int(cast(int, rank)) + 1

    async def read_log(self, task_id: str, since: int) -> list[str]:
        """The task's events after seq `since`, as JSON text, as a client gets them: the
        latest preview on its event, the result with its images. Raises RedisError."""
        pipe = self.client.pipeline(transaction=False)
        pipe.lrange(log_key(task_id), since, -1)
        pipe.hmget(state_key(task_id), "preview", "preview_seq")
        texts, (preview, preview_seq) = await pipe.execute()
        texts = [str(text) for text in texts]
        if preview and preview_seq and since < int(preview_seq) <= since + len(texts):
            at = int(preview_seq) - since - 1
            texts[at] = texts[at][:-1] + f',"preview":"{preview}"}}'
        if texts:
            texts[-1] = await self.complete_result(task_id, texts[-1])
        return texts

    async def complete_result(self, task_id: str, text: str) -> str:
        """A `succeeded` event as clients get it: its result with the images, base64
        (the store keeps the PNG bytes once). Raises RedisError."""
        event = json.loads(text)
        result = event.get("result")
        if not isinstance(result, dict) or "image_data" in result:
            return text
        images = await self.binary.lrange(result_key(task_id), 0, -1)
        encoded = [base64.b64encode(image).decode("ascii") for image in images]
        if encoded:
            result["image_data"] = encoded[0]
        if len(encoded) > 1:
            result["images"] = encoded
        return dumps(event)

    async def result_png(self, task_id: str, index: int = 0) -> bytes | None:
        """The task's `index`th output image, PNG bytes, or None."""
        async with redis_errors():
            image = await self.binary.lindex(result_key(task_id), index)
        return None if image is None else bytes(image)

    async def last_event(self, task_id: str) -> dict[str, Any] | None:
        """The task's last event as clients get it (a result with its images)."""
        async with redis_errors():
            raw = await self.client.lindex(log_key(task_id), -1)
            if raw is None:
                return None
            text = await self.complete_result(task_id, str(raw))
        return dict(json.loads(text))

    async def cancel(self, state: TaskState) -> tuple[bool, Status]:
        """Cancel a task: (whether it was or will be cancelled, its status now)."""
        async with redis_errors():
            code, status = await arun(self.client, store.cancel(self.opts, state.task_id, state.queue))
        if code == -1:
            raise NotFoundError()
        return code > 0, Status(status)

    async def queues(self) -> dict[str, Any]:
        """Depth of each queue, workers seen, running tasks."""
        now = time.time()
        async with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for queue in Queue:
                pipe.zcard(pending_key(queue))
            pipe.zrange(running_key(), 0, -1)
            pipe.zcount(workers_key(), now - WORKER_SEEN_S, "+inf")
            *depths, running_ids, workers = await pipe.execute()
            queues_of = {}
            if running_ids:
                pipe = self.client.pipeline(transaction=False)
                for task_id in running_ids:
                    pipe.hget(state_key(task_id), "queue")
                queues_of = dict(zip(running_ids, await pipe.execute(), strict=True))
        running = {q.value: 0 for q in Queue}
        for queue in queues_of.values():
            if queue in running:
                running[queue] += 1
        return {
            "queues": {
                q.value: {"pending": int(depth), "running": running[q.value]}
                for q, depth in zip(Queue, depths, strict=True)
            },
            "workers": int(workers),
            "running": sum(running.values()),
        }

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False
