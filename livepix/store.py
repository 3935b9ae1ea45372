"""The task store: how a task's state, event log, result and queue entries change in
Redis.

A task's own keys share a hash tag (one cluster slot), so each change to them is one
Lua script: it checks the task's status, appends the event to the log with the next
`seq`, updates the state hash, refreshes the TTL and publishes the same bytes, so that
the log and the live stream never disagree. The queue bookkeeping (waiting and running
sets, the owner's cap, run times, the Dramatiq queue) lives in other slots: it is
changed by separate calls, ordered so that a process dying between two of them leaves
a state the api's upkeep repairs (app/upkeep.py), never a task without its terminal
event.

Operations are written without I/O: each is a generator that yields batches of calls
and receives their results, and returns its outcome. livepix/storage.py runs them on a
blocking client (the workers) or an asyncio one (the api), on one Redis or a cluster.
A batch's calls go out in one round trip; an `Ordered` batch runs in its order, one
call after the other where they live on different nodes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import RedisError

from .broker import encode_message, queue_list_key, queue_messages_key
from .wire import (
    EVENT_STATUS,
    POSITION_MARK,
    TERMINAL_EVENTS,
    EventType,
    Status,
    TaskError,
    TaskResult,
    cancelled_body,
    channel,
    deadlines_key,
    failed_body,
    input_key,
    log_key,
    owner_queue_key,
    pending_key,
    progress_body,
    queued_body,
    queued_message,
    queued_template,
    result_key,
    running_key,
    runtime_key,
    started_body,
    state_key,
    succeeded_body,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

# --- the scripts ------------------------------------------------------------------

_PRELUDE = """
local function append(state, log, chan, ttl, body, status, progress, message, publish, preview)
  local seq = redis.call('HINCRBY', state, 'seq', 1)
  local ev = '{"seq":' .. seq .. ',' .. string.sub(body, 2)
  redis.call('RPUSH', log, ev)
  redis.call('HSET', state, 'status', status, 'progress', progress, 'message', message)
  redis.call('EXPIRE', state, ttl)
  redis.call('EXPIRE', log, ttl)
  if preview ~= '' then
    -- live only: published with the event; the log keeps the latest one, in the state
    redis.call('HSET', state, 'preview', preview, 'preview_seq', seq)
    ev = string.sub(ev, 1, -2) .. ',"preview":"' .. preview .. '"}'
  end
  if publish ~= '' then
    redis.call(publish, chan, ev)
    return seq, ''  -- published: the caller need not read it back
  end
  return seq, ev
end
local function is_terminal(s)
  return s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED'
end
"""

# The scripts that append an event return it last (after the channel, always ARGV[1]):
# where they do not publish it themselves (a cluster, `publish` ''), the runner
# publishes it once a replica has the write (livepix/storage.py). Where they do, they
# return '' instead (a progress event with its preview is big).

# KEYS: state, log, input
# ARGV: channel, ttl, publish, task_id, input_json, task_type, queue, owner, now, deadline,
#       position, queued_body, queued_message
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1, ''} end
redis.call('HSET', KEYS[1], 'seq', 0, 'task_type', ARGV[6], 'queue', ARGV[7], 'owner', ARGV[8],
  'created', ARGV[9], 'attempts', 0, 'position', ARGV[11])
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'deadline', ARGV[10]) end
redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[2])
local seq, ev = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[12], 'PENDING', 0, ARGV[13], ARGV[3], '')
return {seq, ev}
"""

# KEYS: state, log, input
# ARGV: channel, ttl, publish, worker, now, max_attempts, started_body, lost_body
# Returns {seq, was_pending, owner, deadline, event}: seq -1 unknown task, 0 already
# ended, -2 out of attempts (then failed `worker_lost`).
_START = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {-1, 0, '', '', ''} end
local info = redis.call('HMGET', KEYS[1], 'owner', 'deadline')
local owner, deadline = info[1] or '', info[2] or ''
if is_terminal(st) then return {0, 0, owner, deadline, ''} end
local was_pending = 0
if st == 'PENDING' then was_pending = 1 end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[6]) then
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[1], 'finished', ARGV[5], 'error_code', 'worker_lost', 'result_available', 0)
  redis.call('HDEL', KEYS[1], 'position', 'eta_s', 'preview', 'preview_seq')
  local _, ev = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[8], 'FAILURE', 0, 'Worker lost', ARGV[3], '')
  return {-2, was_pending, owner, deadline, ev}
end
redis.call('HSET', KEYS[1], 'worker', ARGV[4], 'started', ARGV[5])
redis.call('HDEL', KEYS[1], 'position', 'eta_s', 'lost_at')
local seq, ev = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[7], 'PROCESSING', 0, 'Started', ARGV[3], '')
return {seq, was_pending, owner, deadline, ev}
"""

# KEYS: state, log
# ARGV: channel, ttl, publish, body, progress, message, preview ('' none)
# Returns {seq, cancel_requested, event}: seq -1 unknown task, 0 already ended.
_PROGRESS = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {-1, '', ''} end
if is_terminal(st) then return {0, '', ''} end
local seq, ev = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[4], 'PROCESSING', ARGV[5], ARGV[6], ARGV[3], ARGV[7])
return {seq, redis.call('HGET', KEYS[1], 'cancel_requested') or '', ev}
"""

# KEYS: state, log, input, result
# ARGV: channel, ttl, publish, body, status, progress, message, now, error_code,
#       only_status, only_worker ('' = any: the watchdog ends only what it judged),
#       then the result's PNG images, if any
# Returns {seq, was_pending, owner, task_type, started, event}: seq -1 unknown, 0 not
# ended here.
_FINISH = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {-1, 0, '', '', '', ''} end
if is_terminal(st) then return {0, 0, '', '', '', ''} end
if ARGV[10] ~= '' and st ~= ARGV[10] then return {0, 0, '', '', '', ''} end
if ARGV[11] ~= '' and redis.call('HGET', KEYS[1], 'worker') ~= ARGV[11] then return {0, 0, '', '', '', ''} end
local info = redis.call('HMGET', KEYS[1], 'owner', 'task_type', 'started')
redis.call('DEL', KEYS[3])
local available = 0
if #ARGV > 11 then
  redis.call('DEL', KEYS[4])
  for i = 12, #ARGV do redis.call('RPUSH', KEYS[4], ARGV[i]) end
  redis.call('EXPIRE', KEYS[4], ARGV[2])
  available = 1
end
redis.call('HSET', KEYS[1], 'finished', ARGV[8], 'error_code', ARGV[9], 'result_available', available)
redis.call('HDEL', KEYS[1], 'position', 'eta_s', 'preview', 'preview_seq', 'cancel_requested')
local seq, ev = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[3], '')
local was_pending = 0
if st == 'PENDING' then was_pending = 1 end
return {seq, was_pending, info[1] or '', info[2] or '', info[3] or '', ev}
"""

# KEYS: state, log, input
# ARGV: channel, ttl, publish, cancelled_body, now
# Returns {code, status, owner, event}: -1 unknown, 0 already ended, 1 revoked now, 2
# requested.
_CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {-1, '', '', ''} end
if is_terminal(st) then return {0, st, '', ''} end
if st == 'PENDING' then
  local owner = redis.call('HGET', KEYS[1], 'owner') or ''
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[1], 'finished', ARGV[5], 'result_available', 0)
  redis.call('HDEL', KEYS[1], 'position', 'eta_s')
  local _, ev = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[4], 'REVOKED', 0, 'Cancelled', ARGV[3], '')
  return {1, 'REVOKED', owner, ev}
end
redis.call('HSET', KEYS[1], 'cancel_requested', 'cancel')
return {2, st, '', ''}
"""

# KEYS: state
# ARGV: reason
# A running task past its deadline is told to stop at its next progress point.
_INTERRUPT = """
if redis.call('HGET', KEYS[1], 'status') ~= 'PROCESSING' then return 0 end
redis.call('HSET', KEYS[1], 'cancel_requested', ARGV[1])
return 1
"""

# KEYS: state, log
# ARGV: channel, ttl, publish, queued_body, position, eta_s ('' unknown), message
# Re-sends `queued` to a task still waiting (the upkeep decides that it moved).
_REQUEUED = """
if redis.call('HGET', KEYS[1], 'status') ~= 'PENDING' then return {0, ''} end
redis.call('HSET', KEYS[1], 'position', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'eta_s', ARGV[6]) else redis.call('HDEL', KEYS[1], 'eta_s') end
local seq, ev = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[4], 'PENDING', 0, ARGV[7], ARGV[3], '')
return {seq, ev}
"""

# KEYS: owner_waiting
# ARGV: now, ttl, cap, task_id
# Admits a waiting task under its owner's cap (-2 if full); entries older than the TTL
# (of tasks gone without leaving the set) no longer count. Its first write is the ZADD:
# Redis refuses a script over maxmemory only at its first write, and only if that
# write may grow memory (a submit must be refused whole, storage_full).
_ADMIT = """
local stale = tonumber(ARGV[1]) - tonumber(ARGV[2])
if redis.call('ZCOUNT', KEYS[1], '(' .. stale, '+inf') >= tonumber(ARGV[3]) then return -2 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', stale)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: pending
# ARGV: task_id
# Appends the task to its queue's waiting set; returns its position (1 = next).
_LINE_UP = """
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local score = 1
if last[2] then score = tonumber(last[2]) + 1 end
redis.call('ZADD', KEYS[1], 'NX', score, ARGV[1])
return redis.call('ZRANK', KEYS[1], ARGV[1]) + 1
"""

# KEYS: queue list, queue messages (Dramatiq's)
# ARGV: message id, encoded message
# What RedisBroker.enqueue writes, once per message id.
_ENQUEUE = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
return 1
"""

# KEYS: runtime
# ARGV: task_type, seconds
_LEARN = """
local took = tonumber(ARGV[2])
local avg = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if avg then took = 0.7 * avg + 0.3 * took end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.3f', took))
return 1
"""


def _function(name: str, body: str) -> str:
    """A script's body as a local Lua function of its own KEYS and ARGV, for a script
    that runs several in one call."""
    return f"local function {name}(KEYS, ARGV)\n{body}end\n"


# KEYS: owner_waiting, pending, state, log, input, queue list, queue messages, deadlines
# ARGV: channel, ttl, publish, task_id, input_json, task_type, queue, owner, now, deadline,
#       queued_body, queued_message (both with the position mark), owner_cap, message
# On one Redis, a submit in one round trip: admit, line up, create, enqueue; it
# publishes `queued` itself. Returns the position; -2 when the owner is at its cap, -1
# when the id is taken.
_SUBMIT = (
    _function("admit", _ADMIT) + _function("line_up", _LINE_UP) + _function("create", _CREATE)
    + _function("enqueue", _ENQUEUE) + f"""
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
if admit({{KEYS[1]}}, {{ARGV[9], ARGV[2], ARGV[13], ARGV[4]}}) == -2 then return -2 end
local position = tostring(line_up({{KEYS[2]}}, {{ARGV[4]}}))
local body = string.gsub(ARGV[11], '"{POSITION_MARK}"', position)
body = string.gsub(body, '{POSITION_MARK}', position)
local message = string.gsub(ARGV[12], '{POSITION_MARK}', position)
create({{KEYS[3], KEYS[4], KEYS[5]}}, {{ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
  ARGV[7], ARGV[8], ARGV[9], ARGV[10], position, body, message}})
if ARGV[10] ~= '' then redis.call('ZADD', KEYS[8], ARGV[10], ARGV[4]) end
enqueue({{KEYS[6], KEYS[7]}}, {{ARGV[4], ARGV[14]}})
return tonumber(position)
"""
)

_TASK_SCRIPTS = {
    "create": _CREATE,
    "start": _START,
    "progress": _PROGRESS,
    "finish": _FINISH,
    "cancel": _CANCEL,
    "requeued": _REQUEUED,
}
# The terminal event even when Redis refuses writes (maxmemory reached, noeviction):
# a task must end, and ending frees its input. Redis >= 7 (script flags).
_DESPITE_FULL = "#!lua flags=allow-oom\n"
APPENDING = frozenset({*_TASK_SCRIPTS, "finish_despite_full"})  # answers end with the event appended
SCRIPTS: dict[str, str] = {
    **{name: _PRELUDE + body for name, body in _TASK_SCRIPTS.items()},
    "finish_despite_full": _DESPITE_FULL + _PRELUDE + _FINISH,
    "submit": _PRELUDE + _SUBMIT,  # one Redis only: publishes, returns no event
    "interrupt": _INTERRUPT,
    "admit": _ADMIT,
    "line_up": _LINE_UP,
    "enqueue": _ENQUEUE,
    "learn": _LEARN,
}
SHAS: dict[str, str] = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in SCRIPTS.items()}

# --- calls and operations -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Script:
    """A call of one of `SCRIPTS`."""

    name: str
    keys: Sequence[str]
    args: Sequence[str | int | float | bytes]


@dataclass(frozen=True, slots=True)
class Command:
    """A plain Redis command on one key."""

    args: tuple[str | int | float | bytes, ...]

    def __init__(self, *args: str | float | bytes) -> None:
        object.__setattr__(self, "args", args)


Call = Script | Command


class Ordered(list[Call]):
    """A batch whose calls must take effect in their order."""


Op = Generator[list[Call], list[Any], T]


@dataclass(frozen=True, slots=True)
class Options:
    """What every operation needs to know of the deployment."""

    ttl_s: int
    cluster: bool = False

    @property
    def publish(self) -> str:
        """What the scripts publish with: on a cluster nothing, the runner publishes
        (SPUBLISH, sharded pub/sub: a channel's messages stay on its shard) once a
        replica has the write, so that no failover takes back an event a client saw."""
        return "" if self.cluster else "PUBLISH"


def _now() -> float:
    return round(time.time(), 3)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class OwnerCapError(Exception):
    """Raised when an owner already has its cap of waiting tasks."""


def submit(
    opts: Options,
    task_id: str,
    task_type: str,
    queue: str,
    owner: str,
    input_json: str,
    owner_cap: int,
    actor: str,
    deadline: float | None = None,
) -> Op[int]:
    """Store a new task, log its `queued` event, then enqueue its Dramatiq message.
    Returns its position in its queue.

    On one Redis this is one script, one round trip (the submit path's cost is mostly
    round trips). On a cluster the task's keys, its queue's and the owner's live in
    different slots: the task is written before its message, so a submit that dies
    between the two leaves a waiting task without a message, which the upkeep enqueues
    (`reenqueue`); never a message without its task. Raises `OwnerCapError` when the
    owner is at its cap.
    """
    now = _now()
    if not opts.cluster:
        body, message = queued_template(task_id)
        [position] = yield [Script(
            "submit",
            [owner_queue_key(owner), pending_key(queue), state_key(task_id), log_key(task_id), input_key(task_id),
             queue_list_key(queue, False), queue_messages_key(queue, False), deadlines_key()],
            [channel(task_id), opts.ttl_s, opts.publish, task_id, input_json, task_type, queue, owner, now,
             "" if deadline is None else round(deadline, 3), body, message, owner_cap,
             encode_message(queue, actor, task_id)],
        )]
        if int(position) == -2:
            raise OwnerCapError(owner)
        if int(position) < 0:
            raise RuntimeError(f"task id {task_id} is taken")
        return int(position)
    admitted, position = yield [
        Script("admit", [owner_queue_key(owner)], [now, opts.ttl_s, owner_cap, task_id]),
        Script("line_up", [pending_key(queue)], [task_id]),
    ]
    if int(admitted) == -2:
        yield [Command("ZREM", pending_key(queue), task_id)]
        raise OwnerCapError(owner)
    position = int(position)
    body = queued_body(task_id, position, None)
    created, *_ = yield Ordered([
        Script(
            "create",
            [state_key(task_id), log_key(task_id), input_key(task_id)],
            [channel(task_id), opts.ttl_s, opts.publish, task_id, input_json, task_type, queue, owner, now,
             "" if deadline is None else round(deadline, 3), position, body, queued_message(position)],
        ),
        *([Command("ZADD", deadlines_key(), round(deadline, 3), task_id)] if deadline is not None else []),
        enqueue(opts, task_id, queue, actor),
    ])
    if int(created) < 0:
        raise RuntimeError(f"task id {task_id} is taken")
    return position


def enqueue(opts: Options, task_id: str, queue: str, actor: str) -> Script:
    """Queue the task's Dramatiq message, once: a second enqueue of the same task while
    its message waits (or runs) does nothing."""
    return Script(
        "enqueue",
        [queue_list_key(queue, opts.cluster), queue_messages_key(queue, opts.cluster)],
        [task_id, encode_message(queue, actor, task_id)],
    )


@dataclass(frozen=True, slots=True)
class Started:
    seq: int  # > 0: the task is this worker's to run; 0 ended, -1 unknown, -2 out of attempts
    deadline: float | None  # when the task must have ended (time.time())


def start(opts: Options, task_id: str, queue: str, worker: str, max_attempts: int) -> Op[Started]:
    """Mark the task PROCESSING and log `started`, counting attempts.

    It enters the running set first, so that the watchdog sees every running task (a
    worker that dies right after would otherwise leave it PROCESSING unseen).
    """
    now = _now()
    lost = failed_body(task_id, "Worker lost", TaskError(
        code="worker_lost", message=f"the task's worker stopped {max_attempts} times while running it",
    ))
    yield [Command("ZADD", running_key(), now, task_id)]
    [(seq, was_pending, owner, deadline)] = yield [Script(
        "start",
        [state_key(task_id), log_key(task_id), input_key(task_id)],
        [channel(task_id), opts.ttl_s, opts.publish, worker, now, max_attempts,
         started_body(task_id, worker, queue), lost],
    )]
    seq = int(seq)
    cleanup: list[Call] = []
    if int(was_pending):
        cleanup += [Command("ZREM", pending_key(queue), task_id), Command("ZREM", owner_queue_key(_text(owner)), task_id)]
    if seq <= 0:
        cleanup.append(Command("ZREM", running_key(), task_id))
    if seq == -2:
        cleanup.append(Command("ZREM", deadlines_key(), task_id))
    if cleanup:
        yield cleanup
    return Started(seq, float(_text(deadline)) if _text(deadline) else None)


def progress(
    opts: Options,
    task_id: str,
    percent: int,
    message: str,
    *,
    preview: str | None = None,
    step: int | None = None,
    total: int | None = None,
    eta_s: float | None = None,
    **extra: Any,
) -> Op[tuple[int, str]]:
    """Log a `progress` event (the preview is published with it; the log keeps only the
    latest). Returns (seq, cancel requested: "" none, "cancel", or "timeout")."""
    body = progress_body(task_id, percent, message, step=step, total=total, eta_s=eta_s, **extra)
    [(seq, cancel)] = yield [Script(
        "progress",
        [state_key(task_id), log_key(task_id)],
        [channel(task_id), opts.ttl_s, opts.publish, body, percent, message, preview or ""],
    )]
    return int(seq), _text(cancel)


def finish(
    opts: Options,
    task_id: str,
    queue: str,
    type: EventType,
    message: str,
    *,
    result: TaskResult | None = None,
    images: Sequence[bytes] = (),
    error: TaskError | None = None,
    progress: int = 0,
    only_status: str = "",
    only_worker: str = "",
    despite_full: bool = False,
) -> Op[int]:
    """Log the task's one terminal event; a success stores its images (raw PNG, once).
    Returns the seq, or 0 if it had already ended (or, with `only_status`/`only_worker`,
    if it is no longer in that status or on that worker). `despite_full`: also when
    Redis refuses writes for lack of memory (Redis >= 7)."""
    if type not in TERMINAL_EVENTS:
        raise ValueError(f"{type} is not a terminal event")
    if type is EventType.SUCCEEDED:
        if result is None or not images:
            raise ValueError("a success needs its result and at least one image")
        body = succeeded_body(task_id, message, result)
    elif type is EventType.FAILED:
        assert error is not None
        body = failed_body(task_id, message, error, progress)
    else:
        body = cancelled_body(task_id)
    status = EVENT_STATUS[type].value
    now = _now()
    [(seq, was_pending, owner, task_type, started)] = yield [Script(
        "finish_despite_full" if despite_full else "finish",
        [state_key(task_id), log_key(task_id), input_key(task_id), result_key(task_id)],
        [channel(task_id), opts.ttl_s, opts.publish, body, status, 100 if type is EventType.SUCCEEDED else progress,
         message, now, error["code"] if error else "", only_status, only_worker, *images],
    )]
    seq = int(seq)
    if seq > 0:
        cleanup: list[Call] = [
            Command("ZREM", running_key(), task_id),
            Command("ZREM", pending_key(queue), task_id),
            Command("ZREM", deadlines_key(), task_id),
        ]
        if int(was_pending):
            cleanup.append(Command("ZREM", owner_queue_key(_text(owner)), task_id))
        yield cleanup  # removals: Redis takes them even when full
        if status == Status.SUCCESS and _text(started):
            try:
                yield [Script("learn", [runtime_key()], [_text(task_type), round(now - float(_text(started)), 3)])]
            except RedisError as exc:  # a run time not learned changes an ETA, nothing more
                log.warning("run time of %s not learned: %s", _text(task_type), exc)
    return seq


def cancel(opts: Options, task_id: str, queue: str) -> Op[tuple[int, str]]:
    """Cancel: a waiting task ends REVOKED at once, a running one is told to stop.
    Returns (code, status): -1 unknown, 0 already ended, 1 revoked, 2 requested."""
    [(code, status, owner)] = yield [Script(
        "cancel",
        [state_key(task_id), log_key(task_id), input_key(task_id)],
        [channel(task_id), opts.ttl_s, opts.publish, cancelled_body(task_id), _now()],
    )]
    if int(code) == 1:
        yield [
            Command("ZREM", pending_key(queue), task_id),
            Command("ZREM", owner_queue_key(_text(owner)), task_id),
            Command("ZREM", deadlines_key(), task_id),
        ]
    return int(code), _text(status)


def interrupt(task_id: str, reason: str) -> Script:
    """Tell a running task to stop at its next progress point (`reason`: "timeout")."""
    return Script("interrupt", [state_key(task_id)], [reason])


def queued_moved(position: int, eta_s: float | None, old_position: str | None, old_eta_s: str | None) -> bool:
    """Whether a waiting task's position moved, or its ETA by at least a second and 10%:
    only then is `queued` sent again. `old_*` are the task's stored fields."""
    if old_position is None or float(old_position) != position:
        return True
    if eta_s is None:
        return False
    if not old_eta_s:
        return True
    old = float(old_eta_s)
    return abs(round(eta_s, 1) - old) >= max(1.0, 0.1 * old)


def requeued(opts: Options, task_id: str, position: int, eta_s: float | None) -> Script:
    """Re-send `queued` to a task that still waits, at its new position and ETA."""
    eta = None if eta_s is None else round(eta_s, 1)
    return Script(
        "requeued",
        [state_key(task_id), log_key(task_id)],
        [channel(task_id), opts.ttl_s, opts.publish, queued_body(task_id, position, eta), position,
         "" if eta is None else eta, queued_message(position)],
    )
