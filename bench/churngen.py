"""A churning client process: watchers that leave and join tasks all the time.

Each *watcher* follows one task at a time and keeps the last `seq` it received, across
its connections (or subscriptions). Kinds:

  ws    a per-task WebSocket per watcher; leaving = closing it (RST), joining = a new
        connection with `?since=<last seq>`
  sse   the same with the SSE stream and `Last-Event-ID: <last seq>`
  mux   --per-conn watchers share one `/api/v1/ws` socket; leaving = `unsubscribe`,
        joining = `subscribe` with `since` = the last seq

With --switch P, a leaving watcher moves to another task (and starts from seq 0, the
task's whole history) with probability P; otherwise it resumes the same task.

Checked per watcher: every seq is the previous one + 1 across leaves and joins (a gap
or a duplicate is counted), no event of a task arrives after the server confirmed its
`unsubscribe` (mux), and a watcher in a live subscription is not left without events
for --silent-s seconds while the task is published (a lost subscription).
Events published before a watcher's join began are history replays, counted apart.
Live events are split: *steady* ones, published after the watcher's first event since
its join arrived, and *catch-up* ones, published while it was joining (their latency
includes the join). Publish-to-receive latency (`t_pub`) is kept for both.

Driven by one-line commands on stdin, each answered by one JSON line on stdout:
`mode static` (watchers stay), `mode churn` (each watcher leaves after an exponential
lifetime of mean --life s and joins again after an exponential pause of mean --off s),
`reset`, `report`, `quit`. Starts in `static` mode and prints {"op":"ready"} once every
watcher has joined. Exits by itself after --max-seconds. 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from .watchers import HOST, SSE, WS, Conn

T_PUB = re.compile(rb'"t_pub":([0-9.]+)')
SEQ = re.compile(rb'"seq":(\d+)')
_BPD = 200  # histogram bins per decade; must match bench.common
_MIN_EXP = -6
_NBINS = _BPD * 8


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.live = 0  # events published after the watcher's join began
        self.replayed = 0  # history: published before the join
        self.gaps = 0
        self.dups = 0
        self.after_unsub = 0
        self.joins = 0
        self.leaves = 0
        self.switches = 0
        self.join_failed = 0
        self.server_closed = 0  # connections the server ended on its own
        self.silent_max = 0
        self.hist: dict[int, int] = {}  # live events published once the watcher was in (steady)
        self.catchup_hist: dict[int, int] = {}  # live events published while it was joining
        self.catchup = 0
        self.join_hist: dict[int, int] = {}  # join began -> first event, for joins that wait for none
        self.t_reset = time.time()

    def add(self, h: dict[int, int], seconds: float) -> None:
        i = int((math.log10(seconds) - _MIN_EXP) * _BPD) if seconds > 1e-6 else 0
        i = min(i, _NBINS - 1)
        h[i] = h.get(i, 0) + 1


STATS = Stats()


class Watcher:
    def __init__(self, index: int, task: str) -> None:
        self.index = index
        self.task = task
        self.last_seq = 0
        self.t_join = 0.0  # when the current join began
        self.t_in = 0.0  # when its first event after the join arrived: joined
        self.t_last = 0.0  # last event (or join) time
        self.live = False  # joined and not leaving
        self.leaving = False  # mux: unsubscribe sent, reply not yet in
        self.conn: Conn | None = None
        self.first_pending = False

    def on_event(self, payload: bytes | bytearray) -> None:
        now = time.time()
        m = SEQ.search(payload)
        if m is not None:
            seq = int(m.group(1))
            last = self.last_seq
            if seq > last + 1:
                STATS.gaps += 1
            elif seq <= last:
                STATS.dups += 1
            if seq > last:
                self.last_seq = seq
        if self.first_pending:
            self.first_pending = False
            self.t_in = now
            STATS.add(STATS.join_hist, now - self.t_join)
        m = T_PUB.search(payload)
        if m is not None:
            t_pub = float(m.group(1))
            if t_pub >= self.t_in:
                STATS.live += 1
                STATS.add(STATS.hist, now - t_pub)
            elif t_pub >= self.t_join:
                STATS.live += 1
                STATS.catchup += 1
                STATS.add(STATS.catchup_hist, now - t_pub)
            else:
                STATS.replayed += 1
        else:
            STATS.replayed += 1  # the task's first events (made by bench.common.make_tasks)
        self.t_last = now


# --- per-task connections (ws, sse) --------------------------------------------------


class _Own:
    """Mixin: a connection that belongs to one watcher."""

    watcher: Watcher
    opened: asyncio.Future[None]
    closed: asyncio.Future[None]
    leaving: bool

    def _init_own(self, watcher: Watcher) -> None:
        loop = asyncio.get_running_loop()
        self.watcher = watcher
        self.established.set_result(None)  # type: ignore[attr-defined]  # (unused here: `opened` instead)
        self.opened = loop.create_future()
        self.closed = loop.create_future()
        self.leaving = False

    def _lost(self) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before the response"))
        if not self.closed.done():
            self.closed.set_result(None)


class ChurnWS(WS, _Own):
    def __init__(self, path: str, port: int, watcher: Watcher) -> None:
        WS.__init__(self, path, port)
        self._init_own(watcher)

    def on_open(self) -> None:
        if not self.opened.done():
            self.opened.set_result(None)

    def on_message(self, payload: bytes | bytearray) -> None:
        self.watcher.on_event(payload)

    def fail(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(why))
        super().fail(why)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lost()


class ChurnSSE(SSE, _Own):
    def __init__(self, path: str, port: int, watcher: Watcher, since: int) -> None:
        SSE.__init__(self, path, port)
        if since:
            self.request = self.request[:-2] + f"Last-Event-ID: {since}\r\n\r\n".encode()
        self._init_own(watcher)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.open and not self.opened.done():
            self.opened.set_result(None)

    def on_event(self, block: bytes | bytearray) -> None:
        self.watcher.on_event(block)

    def fail(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(why))
        super().fail(why)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lost()


# --- the multiplexed socket (mux) ------------------------------------------------------


class Mux(WS):
    """One /api/v1/ws socket carrying several watchers' subscriptions."""

    def __init__(self, path: str, port: int) -> None:
        super().__init__(path, port)
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.established.set_result(None)  # unused here: `opened` instead
        self.by_task: dict[str, Watcher] = {}
        self.unsubscribed: dict[str, asyncio.Future[None]] = {}
        self.errors: list[str] = []

    def on_open(self) -> None:
        if not self.opened.done():
            self.opened.set_result(None)

    def fail(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(why))
        super().fail(why)

    def op(self, **fields: Any) -> None:
        self.send(1, json.dumps(fields, separators=(",", ":")).encode())

    def on_message(self, payload: bytes | bytearray) -> None:
        if payload[:6] == b'{"op":':
            msg = json.loads(payload)
            if msg["op"] == "unsubscribed":
                fut = self.unsubscribed.pop(msg.get("task_id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif msg["op"] == "error" and len(self.errors) < 5:
                self.errors.append(json.dumps(msg)[:200])
            return
        m = re.search(rb'"task_id":"([0-9a-f-]{36})"', payload)
        if m is None:
            return
        task = m.group(1).decode()
        w = self.by_task.get(task)
        if w is None or not (w.live or w.leaving):
            STATS.after_unsub += 1
            return
        w.on_event(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed: {exc}"))


# --- the process -------------------------------------------------------------------------


class Churner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = asyncio.get_running_loop()
        self.tasks: list[str] = args.tasks.split(",")
        per_task = [int(x) for x in args.per_task.split(",")]
        # watcher i of the whole run follows task t; this process takes every --procs-th
        assignment = [t for i, t in enumerate(self.tasks) for _ in range(per_task[i % len(per_task)])]
        mine = [(i, t) for i, t in enumerate(assignment) if i % args.procs == args.proc]
        self.watchers = [Watcher(i, t) for i, t in mine]
        self.static = asyncio.Event()
        self.static.set()
        self.churn = asyncio.Event()
        self.muxes: list[Mux] = []
        self.sem = asyncio.Semaphore(args.concurrency)
        self.errors: list[str] = []
        self.rng = random.Random(args.seed * 1000 + args.proc)

    def path(self, w: Watcher) -> str:
        if self.args.kind == "ws":
            return f"/api/v1/tasks/{w.task}/ws?since={w.last_seq}"
        return f"/api/v1/tasks/{w.task}/events"

    def pick_other_task(self, w: Watcher, taken: set[str]) -> str:
        for _ in range(20):
            t = self.rng.choice(self.tasks)
            if t != w.task and t not in taken:
                return t
        return w.task

    # ws / sse ------------------------------------------------------------------------
    def factory(self, w: Watcher) -> Callable[[], ChurnWS | ChurnSSE]:
        """The protocol factory of `w`'s next connection (resuming after its last seq)."""
        path, since, port = self.path(w), w.last_seq, self.args.port
        if self.args.kind == "ws":
            return lambda: ChurnWS(path, port, w)
        return lambda: ChurnSSE(path, port, w, since)

    async def join_conn(self, w: Watcher) -> bool:
        async with self.sem:
            for attempt in range(3):
                w.t_join = time.time()
                w.first_pending = True
                try:
                    _, conn = await asyncio.wait_for(
                        self.loop.create_connection(self.factory(w), HOST, self.args.port), 10)
                    await asyncio.wait_for(conn.opened, 10)
                    w.conn = conn
                    w.live = True
                    w.t_last = time.time()
                    STATS.joins += 1
                    return True
                except (OSError, TimeoutError, ConnectionError) as exc:
                    STATS.join_failed += 1
                    if len(self.errors) < 5:
                        self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    await asyncio.sleep(0.2 * (attempt + 1))
            return False

    def leave_conn(self, w: Watcher) -> None:
        w.live = False
        if w.conn is not None:
            w.conn.leaving = True  # type: ignore[attr-defined]
            w.conn.abort()
            w.conn = None
        STATS.leaves += 1

    async def run_conn_watcher(self, w: Watcher) -> None:
        while True:
            if w.conn is None and not await self.join_conn(w):
                await asyncio.sleep(1.0)
                continue
            conn = w.conn
            assert conn is not None
            # static: hold until churn starts; churn: hold for a lifetime (or until static)
            static = self.static.is_set()
            waiter = asyncio.ensure_future(self.churn.wait() if static else self.static.wait())
            await asyncio.wait([waiter, conn.closed],  # type: ignore[attr-defined]
                               timeout=None if static else self.rng.expovariate(1 / self.args.life),
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if conn.closed.done():  # type: ignore[attr-defined]
                # the server ended it (too slow, restarting...): join again from the last seq
                STATS.server_closed += 1
                w.live = False
                w.conn = None
                continue
            if static or self.static.is_set():
                continue  # held while static; once churning, the next pass draws a lifetime
            self.leave_conn(w)
            await asyncio.sleep(self.rng.expovariate(1 / self.args.off))
            if self.rng.random() < self.args.switch:
                w.task = self.pick_other_task(w, set())
                w.last_seq = 0
                STATS.switches += 1

    # mux ---------------------------------------------------------------------------------
    async def open_mux(self) -> Mux:
        async with self.sem:
            for attempt in range(3):
                try:
                    _, mux = await asyncio.wait_for(self.loop.create_connection(
                        lambda: Mux("/api/v1/ws", self.args.port), HOST, self.args.port), 10)
                    await asyncio.wait_for(mux.opened, 10)
                    return mux
                except (OSError, TimeoutError, ConnectionError) as exc:
                    if len(self.errors) < 5:
                        self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    await asyncio.sleep(0.2 * (attempt + 1))
            raise ConnectionError("could not open /api/v1/ws")

    def subscribe(self, mux: Mux, w: Watcher) -> None:
        w.t_join = time.time()
        w.t_last = w.t_join
        w.first_pending = True
        mux.by_task[w.task] = w
        w.live = True
        mux.op(op="subscribe", task_id=w.task, since=w.last_seq)
        STATS.joins += 1

    async def unsubscribe(self, mux: Mux, w: Watcher) -> None:
        w.live = False
        w.leaving = True
        fut = self.loop.create_future()
        mux.unsubscribed[w.task] = fut
        mux.op(op="unsubscribe", task_id=w.task)
        STATS.leaves += 1
        try:
            await asyncio.wait_for(fut, 10)
        except TimeoutError:
            if len(self.errors) < 5:
                self.errors.append(f"no 'unsubscribed' for {w.task} in 10 s")
        w.leaving = False
        if mux.by_task.get(w.task) is w:
            del mux.by_task[w.task]

    async def run_mux_watcher(self, mux: Mux, w: Watcher) -> None:
        while True:
            if self.static.is_set():
                await self.churn.wait()
                continue
            try:
                await asyncio.wait_for(self.static.wait(), self.rng.expovariate(1 / self.args.life))
                continue  # static again: hold the subscription
            except TimeoutError:
                pass
            if mux.lost:
                return
            await self.unsubscribe(mux, w)
            await asyncio.sleep(self.rng.expovariate(1 / self.args.off))
            if self.rng.random() < self.args.switch:
                w.task = self.pick_other_task(w, set(mux.by_task))
                w.last_seq = 0
                STATS.switches += 1
            self.subscribe(mux, w)

    # ---------------------------------------------------------------------------------------
    async def start(self) -> list[asyncio.Task[None]]:
        if self.args.kind == "mux":
            groups = [self.watchers[i: i + self.args.per_conn] for i in range(0, len(self.watchers), self.args.per_conn)]
            # a socket follows distinct tasks: move duplicates elsewhere
            for g in groups:
                seen: set[str] = set()
                for w in g:
                    if w.task in seen:
                        w.task = self.pick_other_task(w, seen)
                    seen.add(w.task)
            self.muxes = list(await asyncio.gather(*(self.open_mux() for _ in groups)))
            runners = []
            for mux, g in zip(self.muxes, groups, strict=True):
                for w in g:
                    self.subscribe(mux, w)
            # ready once every watcher had its first event (the task's history)
            deadline = time.time() + 60
            while any(w.first_pending for w in self.watchers) and time.time() < deadline:
                await asyncio.sleep(0.05)
            for mux, g in zip(self.muxes, groups, strict=True):
                runners += [asyncio.ensure_future(self.run_mux_watcher(mux, w)) for w in g]
            return runners
        await asyncio.gather(*(self.join_conn(w) for w in self.watchers))
        return [asyncio.ensure_future(self.run_conn_watcher(w)) for w in self.watchers]

    def report(self) -> dict[str, Any]:
        now = time.time()
        silent = sum(1 for w in self.watchers
                     if w.live and now - w.t_join > self.args.silent_s and now - w.t_last > self.args.silent_s)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "op": "report", "live": STATS.live, "replayed": STATS.replayed, "gaps": STATS.gaps, "dups": STATS.dups,
            "after_unsub": STATS.after_unsub, "joins": STATS.joins, "leaves": STATS.leaves,
            "switches": STATS.switches, "join_failed": STATS.join_failed, "server_closed": STATS.server_closed,
            "silent": silent, "live_watchers": sum(1 for w in self.watchers if w.live),
            "hist": STATS.hist, "join_hist": STATS.join_hist, "catchup_hist": STATS.catchup_hist,
            "catchup": STATS.catchup, "elapsed": now - STATS.t_reset,
            "client_cpu": ru.ru_utime + ru.ru_stime, "errors": self.errors[:5],
            "mux_errors": [e for m in self.muxes for e in m.errors][:5],
            "mux_lost": sum(1 for m in self.muxes if m.lost),
        }


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    loop.call_later(args.max_seconds, lambda: os._exit(3))  # bounded whatever happens
    churner = Churner(args)
    t0 = time.perf_counter()
    runners = await churner.start()
    emit({"op": "ready", "watchers": len(churner.watchers), "joined": sum(1 for w in churner.watchers if w.live),
          "connect_s": time.perf_counter() - t0, "errors": churner.errors[:5]})
    STATS.reset()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        cmd, _, arg = line.partition(" ")
        if cmd == "mode":
            if arg == "churn":
                churner.static.clear()
                churner.churn.set()
            else:
                churner.churn.clear()
                churner.static.set()
            emit({"op": "mode", "mode": arg})
        elif cmd == "reset":
            STATS.reset()
            emit({"op": "reset"})
        elif cmd == "report":
            emit(churner.report())
    for r in runners:
        r.cancel()
    for w in churner.watchers:
        if w.conn is not None:
            w.conn.abort()
    for m in churner.muxes:
        m.abort()
    await asyncio.sleep(0.05)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.churngen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("ws", "sse", "mux"), required=True)
    parser.add_argument("--port", type=int, required=True, help="api port on 127.0.0.1")
    parser.add_argument("--tasks", required=True, help="comma-separated task ids")
    parser.add_argument("--per-task", default="1,2,3", help="watchers of task i: the i-th of this cycle (1,2,3)")
    parser.add_argument("--proc", type=int, default=0, help="this process's index")
    parser.add_argument("--procs", type=int, default=1, help="client processes sharing the watchers")
    parser.add_argument("--per-conn", type=int, default=3, help="mux: watchers per /api/v1/ws socket (3)")
    parser.add_argument("--life", type=float, default=3.0, help="mean seconds a watcher stays (3)")
    parser.add_argument("--off", type=float, default=0.2, help="mean seconds before it joins again (0.2)")
    parser.add_argument("--switch", type=float, default=0.25, help="probability of joining another task (0.25)")
    parser.add_argument("--silent-s", type=float, default=5.0, help="a live watcher without events this long is lost (5)")
    parser.add_argument("--concurrency", type=int, default=50, help="connection attempts in flight (50)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=300, help="exit by itself after this long")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.run(main(arguments))
    except ImportError:
        asyncio.run(main(arguments))
