"""The task store: how a task's state and event log change in Redis, atomically.

Every change is one Lua script that checks the task's status, appends the event to
the log with the next `seq`, updates the state hash, refreshes the TTL and PUBLISHes
the same bytes, so that the log and the live stream can never disagree. This module
builds the script calls; `app.tasks` runs them on an asyncio client and
`actors.recorder` on a blocking one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .broker import encode_message, queue_list_key, queue_messages_key
from .wire import (
    EVENT_STATUS,
    TERMINAL_EVENTS,
    EventType,
    TaskError,
    TaskResult,
    channel,
    event_body,
    input_key,
    log_key,
    order_key,
    owner_queue_key,
    pending_key,
    running_key,
    runtime_key,
    state_key,
)

_PRELUDE = """
local function append(state, log, chan, ttl, body, status, progress, message)
  local seq = redis.call('HINCRBY', state, 'seq', 1)
  local ev = '{"seq":' .. seq .. ',' .. string.sub(body, 2)
  redis.call('RPUSH', log, ev)
  redis.call('HSET', state, 'status', status, 'progress', progress, 'message', message)
  redis.call('EXPIRE', state, ttl)
  redis.call('EXPIRE', log, ttl)
  redis.call('PUBLISH', chan, ev)
  return seq
end
local function left_queue(state, id, owner_fmt)
  local owner = redis.call('HGET', state, 'owner') or ''
  redis.call('ZREM', string.format(owner_fmt, owner), id)
end
local function is_terminal(s)
  return s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED'
end
local function queued(state, log, chan, ttl, id, pos, eta, now)
  local message = 'Queued at position ' .. pos
  local extra = ''
  if eta ~= '' then
    extra = ',"eta_s":' .. eta
    redis.call('HSET', state, 'eta_s', eta)
  end
  local body = '{"task_id":"' .. id .. '","type":"queued","status":"PENDING","progress":0,'
    .. '"message":"' .. message .. '","ts":' .. now .. ',"position":' .. pos .. extra .. '}'
  redis.call('HSET', state, 'position', pos)
  return append(state, log, chan, ttl, body, 'PENDING', 0, message)
end
"""

# KEYS: state, log, input, pending, order, owner_waiting, broker_queue, broker_messages
# ARGV: channel, ttl, task_id, input_json, task_type, queue, owner, now, owner_cap,
#       redis_message_id, message
_SUBMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', tonumber(ARGV[8]) - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[6]) >= tonumber(ARGV[9]) then return -2 end
redis.call('ZADD', KEYS[6], ARGV[8], ARGV[3])
redis.call('EXPIRE', KEYS[6], ARGV[2])
local order = redis.call('INCR', KEYS[5])
redis.call('ZADD', KEYS[4], order, ARGV[3])
local pos = redis.call('ZRANK', KEYS[4], ARGV[3]) + 1
redis.call('HSET', KEYS[1], 'seq', 0, 'task_type', ARGV[5], 'queue', ARGV[6], 'owner', ARGV[7],
  'created', ARGV[8], 'attempts', 0)
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[2])
queued(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], pos, '', ARGV[8])
-- What RedisBroker.enqueue does (see livepix.broker), in the same atomic step.
redis.call('HSET', KEYS[8], ARGV[10], ARGV[11])
redis.call('RPUSH', KEYS[7], ARGV[10])
return pos
"""

# KEYS: state, log, pending, running
# ARGV: channel, ttl, task_id, worker, now, max_attempts, started_body, lost_body, owner_fmt
_START = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if is_terminal(st) then return 0 end
if st == 'PENDING' then left_queue(KEYS[1], ARGV[3], ARGV[9]) end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZREM', KEYS[3], ARGV[3])
if attempts > tonumber(ARGV[6]) then
  redis.call('ZREM', KEYS[4], ARGV[3])
  redis.call('HSET', KEYS[1], 'finished', ARGV[5], 'error_code', 'worker_lost')
  append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[8], 'FAILURE', 0, 'Worker lost')
  return -2
end
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[3])
redis.call('HSET', KEYS[1], 'worker', ARGV[4], 'started', ARGV[5])
redis.call('HDEL', KEYS[1], 'position', 'eta_s', 'lost_at')
return append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[7], 'PROCESSING', 0, 'Started')
"""

# KEYS: state, log
# ARGV: channel, ttl, body, status, progress, message
# Returns {seq, cancel_requested}; seq -1 = unknown task, 0 = already finished.
_PROGRESS = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {-1, 0} end
if is_terminal(st) then return {0, 0} end
local seq = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
local cancel = redis.call('HGET', KEYS[1], 'cancel_requested')
if cancel == '1' then return {seq, 1} end
return {seq, 0}
"""

# KEYS: state, log, input, pending, running, runtime
# ARGV: channel, ttl, task_id, body, status, progress, message, now, error_code, owner_fmt,
#       only_status, only_worker ('' = any: the watchdog ends only what it judged)
_FINISH = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if is_terminal(st) then return 0 end
if ARGV[11] ~= '' and st ~= ARGV[11] then return 0 end
if ARGV[12] ~= '' and redis.call('HGET', KEYS[1], 'worker') ~= ARGV[12] then return 0 end
if st == 'PENDING' then left_queue(KEYS[1], ARGV[3], ARGV[10]) end
redis.call('ZREM', KEYS[4], ARGV[3])
redis.call('ZREM', KEYS[5], ARGV[3])
redis.call('DEL', KEYS[3])
local available = 0
if ARGV[5] == 'SUCCESS' then
  available = 1
  local info = redis.call('HMGET', KEYS[1], 'task_type', 'started')
  if info[1] and info[2] then
    local took = tonumber(ARGV[8]) - tonumber(info[2])
    local avg = tonumber(redis.call('HGET', KEYS[6], info[1]))
    if avg then took = 0.7 * avg + 0.3 * took end
    redis.call('HSET', KEYS[6], info[1], string.format('%.3f', took))
  end
end
redis.call('HSET', KEYS[1], 'finished', ARGV[8], 'error_code', ARGV[9], 'result_available', available)
redis.call('HDEL', KEYS[1], 'position', 'eta_s')
return append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
"""

# KEYS: state, log, input, pending
# ARGV: channel, ttl, task_id, cancelled_body, now, owner_fmt
# Returns {code, status}: -1 unknown, 0 already finished, 1 revoked now, 2 requested.
_CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {-1, ''} end
if is_terminal(st) then return {0, st} end
if st == 'PENDING' then
  left_queue(KEYS[1], ARGV[3], ARGV[6])
  redis.call('ZREM', KEYS[4], ARGV[3])
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[1], 'finished', ARGV[5], 'result_available', 0)
  redis.call('HDEL', KEYS[1], 'position', 'eta_s')
  append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[4], 'REVOKED', 0, 'Cancelled')
  return {1, 'REVOKED'}
end
redis.call('HSET', KEYS[1], 'cancel_requested', 1)
return {2, st}
"""

# KEYS: state, log
# ARGV: channel, ttl, task_id, position, eta_s ('' = unknown), now
# Re-sends `queued` to a waiting task whose position, or ETA by a second or 10%, moved.
_REQUEUED = """
local st = redis.call('HMGET', KEYS[1], 'status', 'position', 'eta_s')
if st[1] ~= 'PENDING' then return 0 end
local pos = tonumber(ARGV[4])
local eta = tonumber(ARGV[5])
local old = tonumber(st[3])
local moved = tonumber(st[2]) ~= pos
if eta and (not old or math.abs(eta - old) >= math.max(1, 0.1 * old)) then moved = true end
if not moved then return 0 end
return queued(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], pos, ARGV[5], ARGV[6])
"""

SCRIPTS: dict[str, str] = {
    name: _PRELUDE + body
    for name, body in {
        "submit": _SUBMIT,
        "start": _START,
        "progress": _PROGRESS,
        "finish": _FINISH,
        "cancel": _CANCEL,
        "requeued": _REQUEUED,
    }.items()
}


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One invocation of a store script: run it with `SCRIPTS[script]` on any client."""

    script: str
    keys: list[str]
    args: list[str | int | float]


_OWNER_FMT = owner_queue_key("%s")


def _now() -> float:
    return round(time.time(), 3)


def submit(
    task_id: str,
    task_type: str,
    queue: str,
    owner: str,
    input_json: str,
    ttl_s: int,
    owner_cap: int,
    actor: str,
) -> ScriptCall:
    """Create the task, log its first `queued` event and enqueue its Dramatiq message.

    The script returns the queue position, -1 if the id is taken, or -2 if the owner
    already has `owner_cap` waiting tasks.
    """
    message_id, message = encode_message(queue, actor, task_id)
    return ScriptCall(
        "submit",
        [
            state_key(task_id),
            log_key(task_id),
            input_key(task_id),
            pending_key(queue),
            order_key(),
            owner_queue_key(owner),
            queue_list_key(queue),
            queue_messages_key(queue),
        ],
        [
            channel(task_id), ttl_s, task_id, input_json, task_type, queue, owner, _now(),
            owner_cap, message_id, message,
        ],
    )


def start(
    task_id: str, queue: str, worker: str, max_attempts: int, ttl_s: int
) -> ScriptCall:
    """Mark the task PROCESSING and log `started`, counting attempts.

    Returns the seq, 0 if the task is already finished (cancelled before it started),
    -1 if it expired, -2 if it ran out of attempts (then it was failed `worker_lost`).
    """
    started = event_body(task_id, EventType.STARTED, 0, "Started", worker=worker, queue=queue)
    lost = event_body(
        task_id,
        EventType.FAILED,
        0,
        "Worker lost",
        error=TaskError(
            code="worker_lost",
            message=f"the task's worker stopped {max_attempts} times while running it",
        ),
    )
    return ScriptCall(
        "start",
        [state_key(task_id), log_key(task_id), pending_key(queue), running_key()],
        [channel(task_id), ttl_s, task_id, worker, _now(), max_attempts, started, lost, _OWNER_FMT],
    )


def progress(
    task_id: str,
    percent: int,
    message: str,
    ttl_s: int,
    **extra: Any,
) -> ScriptCall:
    """Log a `progress` event. The script answers `[seq, cancel_requested]`."""
    body = event_body(task_id, EventType.PROGRESS, percent, message, **extra)
    return ScriptCall(
        "progress",
        [state_key(task_id), log_key(task_id)],
        [channel(task_id), ttl_s, body, EVENT_STATUS[EventType.PROGRESS].value, percent, message],
    )


def finish(
    task_id: str,
    queue: str,
    type: EventType,
    message: str,
    ttl_s: int,
    *,
    result: TaskResult | None = None,
    error: TaskError | None = None,
    progress: int = 0,
    only_status: str = "",
    only_worker: str = "",
) -> ScriptCall:
    """Log the task's one terminal event. Returns the seq, or 0 if it had already ended
    (or, with `only_status`/`only_worker`, if it is no longer in that status or on that worker).
    """
    if type not in TERMINAL_EVENTS:
        raise ValueError(f"{type} is not a terminal event")
    if type is EventType.SUCCEEDED:
        progress = 100
    status = EVENT_STATUS[type].value
    body = event_body(task_id, type, progress, message, result=result, error=error)
    return ScriptCall(
        "finish",
        [
            state_key(task_id),
            log_key(task_id),
            input_key(task_id),
            pending_key(queue),
            running_key(),
            runtime_key(),
        ],
        [
            channel(task_id),
            ttl_s,
            task_id,
            body,
            status,
            progress,
            message,
            _now(),
            error["code"] if error else "",
            _OWNER_FMT,
            only_status,
            only_worker,
        ],
    )


def cancel(task_id: str, queue: str, ttl_s: int) -> ScriptCall:
    """Cancel: a waiting task ends REVOKED at once, a running one is flagged.

    Returns `[code, status]`: -1 unknown, 0 already finished, 1 revoked, 2 requested.
    """
    body = event_body(task_id, EventType.CANCELLED, 0, "Cancelled")
    return ScriptCall(
        "cancel",
        [state_key(task_id), log_key(task_id), input_key(task_id), pending_key(queue)],
        [channel(task_id), ttl_s, task_id, body, _now(), _OWNER_FMT],
    )


def queued_moved(position: int, eta_s: float | None, old_position: str | None, old_eta_s: str | None) -> bool:
    """The `requeued` script's test, for a caller that skips the calls that change
    nothing: whether a waiting task's position moved, or its ETA by a second or 10%.
    `old_*` are the task's stored fields. Keep the two in step (tests/test_store.py)."""
    if old_position is None or float(old_position) != position:
        return True
    if eta_s is None:
        return False
    if not old_eta_s:
        return True
    old = float(old_eta_s)
    return abs(round(eta_s, 1) - old) >= max(1.0, 0.1 * old)


def requeued(task_id: str, position: int, eta_s: float | None, ttl_s: int) -> ScriptCall:
    """Re-send `queued` if the task's position or ETA moved; returns the seq or 0."""
    return ScriptCall(
        "requeued",
        [state_key(task_id), log_key(task_id)],
        [channel(task_id), ttl_s, task_id, position, "" if eta_s is None else round(eta_s, 1), _now()],
    )
