"""Safe retries of a submit: the same `Idempotency-Key` from the same owner within the
TTL gives the same task, never a second one; the key with another request is a conflict.

The first submit with a key claims it (SET NX) with the new task's id and the request's
fingerprint before the task is stored; a retry finds the claim and answers with that
task. A claim whose task never appeared (its submit died half-way) is taken over once
it is `STALE_CLAIM_S` old; a retry that arrives while the first submit is still storing
its task waits for it a moment.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import string
import time
from dataclasses import dataclass
from typing import Any

from livepix.wire import ErrorCode, dumps, idempotency_key

from .errors import ApiError, InvalidInputError, UnavailableError
from .validation import TaskRequest

MAX_KEY_CHARS = 200
STALE_CLAIM_S = 10.0  # a claim this old whose task does not exist is taken over
WAIT_FOR_TASK_S = 2.0  # how long a retry waits for the first submit to store its task
_PRINTABLE = frozenset(string.printable) - frozenset("\t\n\r\x0b\x0c")


class IdempotencyConflictError(ApiError):
    """Raised when an `Idempotency-Key` already submitted another request."""

    status_code = 409
    code = ErrorCode.IDEMPOTENCY_CONFLICT
    message = "This Idempotency-Key was used for another request"


def checked_key(raw: Any, field: str) -> str | None:
    """The key as given, or None; `InvalidInputError` if it is not 1-200 printable ASCII."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not 0 < len(raw) <= MAX_KEY_CHARS or not set(raw) <= _PRINTABLE:
        raise InvalidInputError(details={field: [f"must be 1-{MAX_KEY_CHARS} printable ASCII characters"]})
    return raw


def fingerprint(request: TaskRequest) -> str:
    """What makes two submits the same request: the validated request, defaults included."""
    wire = {**request.to_wire(), "deadline_s": request.deadline_s}
    return hashlib.sha256(dumps(dict(sorted(wire.items()))).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    task_id: str
    fingerprint: str
    at: float

    def text(self) -> str:
        return dumps({"task_id": self.task_id, "fingerprint": self.fingerprint, "at": self.at})

    @classmethod
    def parse(cls, text: str) -> Claim:
        data = json.loads(text)
        return cls(str(data["task_id"]), str(data["fingerprint"]), float(data["at"]))


class Idempotency:
    """The claims of keys, on the api's Redis client (text replies)."""

    def __init__(self, client: Any, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s

    @staticmethod
    def name(owner: str, key: str) -> str:
        return idempotency_key(owner or "-", hashlib.sha256(key.encode()).hexdigest()[:32])

    async def claim(self, owner: str, key: str, task_id: str, request: TaskRequest) -> Claim | None:
        """Claim `key` for a new task `task_id`: None if it is ours now, else the claim of
        the task it already submitted (`IdempotencyConflictError` for another request)."""
        name = self.name(owner, key)
        mine = Claim(task_id, fingerprint(request), round(time.time(), 3))
        while True:
            if await self.client.set(name, mine.text(), nx=True, ex=self.ttl_s):
                return None
            raw = await self.client.get(name)
            if raw is None:
                continue  # expired between the two calls
            theirs = Claim.parse(raw)
            if theirs.fingerprint != mine.fingerprint:
                raise IdempotencyConflictError()
            if time.time() - theirs.at > STALE_CLAIM_S and not await self._exists(theirs.task_id):
                # the submit that claimed it died before storing its task: take it over
                if await self.client.set(name, mine.text(), xx=True, ex=self.ttl_s, get=True) == raw:
                    return None
                continue
            return theirs

    async def wait_for(self, claim: Claim) -> None:
        """Wait for the task of a claim to be stored (the first submit is under way)."""
        deadline = time.monotonic() + WAIT_FOR_TASK_S
        while not await self._exists(claim.task_id):
            if time.monotonic() > deadline:
                raise UnavailableError("The first submit with this Idempotency-Key is still under way; retry")
            await asyncio.sleep(0.05)

    async def release(self, owner: str, key: str, task_id: str) -> None:
        """Drop our claim after a submit that failed, so that a retry can submit again."""
        name = self.name(owner, key)
        raw = await self.client.get(name)
        if raw is not None and Claim.parse(raw).task_id == task_id:
            await self.client.delete(name)

    async def _exists(self, task_id: str) -> bool:
        from livepix.wire import state_key

        return bool(await self.client.exists(state_key(task_id)))
