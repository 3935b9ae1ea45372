"""A load-generating client process: many connections of one kind to one server.

Raw asyncio protocols on uvloop (a hand-rolled WebSocket/SSE/HTTP client costs a few
microseconds per message, so that the clients are not the bottleneck), 127.0.0.1
only. Kinds:

  ws    the per-task WebSocket      GET /api/v1/tasks/{task}/ws
  sse   the per-task SSE stream     GET /api/v1/tasks/{task}/events
  poll  the seed-style status poll  GET /api/v1/tasks/{task}/status/ every --interval s
  sio   a Socket.IO (Engine.IO v4) WebSocket that emits ("watch", task) once connected
  submit  POST --body-file to /api/v1/tasks/submit/ in a closed loop (one request in
        flight per connection), counting 202s and their latency

Driven by one-line commands on stdin, each answered by one JSON line on stdout:
`reset` (zero the counters), `report` (counters, latency histogram), `stall F` (stop
reading on a fraction F of the connections; the answer lists their local ports),
`unstall` (read again on them), `stalled` (what became of them: closed by the server,
with which WebSocket close code, still open), `quit`. The process exits by itself after
--max-seconds whatever happens.

Latency is measured from the `t_pub` field that bench.publisher puts in each event
(time.time() just before the store script runs) to the moment the complete message
is parsed here; both clocks are the same machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from .watchers import HOST, PATHS, SSE, STATS, WS, Conn, Poll, SocketIO, poll_loop, submit_loop


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    loop.call_later(args.max_seconds, lambda: os._exit(3))  # bounded whatever happens
    tasks = args.tasks.split(",")
    path_t = args.path or PATHS[args.kind]
    conns: list[Conn] = []
    errors: list[str] = []
    failed = 0
    retries = 0
    sem = asyncio.Semaphore(args.concurrency)
    body = Path(args.body_file).read_bytes() if args.body_file else b"{}"

    def make(task: str) -> Conn:
        path = path_t.format(task=task)
        if args.kind == "ws":
            return WS(path, args.port)
        if args.kind == "sio":
            return SocketIO(path, args.port, task)
        if args.kind == "sse":
            return SSE(path, args.port)
        if args.kind == "submit":
            return Poll(path, args.port, body)
        return Poll(path, args.port)

    async def open_one(i: int) -> None:
        nonlocal failed, retries
        task = tasks[(args.offset + i) % len(tasks)]
        async with sem:
            for attempt in range(3):
                try:
                    _, proto = await asyncio.wait_for(
                        loop.create_connection(lambda: make(task), HOST, args.port), 30
                    )
                    await asyncio.wait_for(proto.established, 30)
                    conns.append(proto)
                    return
                except (OSError, TimeoutError, ConnectionError) as exc:
                    retries += 1
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    if attempt == 2:
                        failed += 1
                        retries -= 1
                    else:
                        await asyncio.sleep(0.2 * (attempt + 1))

    STATS.recording = False
    t0 = time.perf_counter()
    await asyncio.gather(*(open_one(i) for i in range(args.connections)))
    connect_s = time.perf_counter() - t0
    pollers = []
    if args.kind == "poll":
        pollers = [asyncio.ensure_future(poll_loop(c, args.interval)) for c in conns if isinstance(c, Poll)]
    elif args.kind == "submit":
        pollers = [asyncio.ensure_future(submit_loop(c)) for c in conns if isinstance(c, Poll)]
    emit({"op": "ready", "connected": len(conns), "failed": failed, "retries": retries, "connect_s": connect_s,
          "errors": errors})

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        cmd, _, arg = line.partition(" ")
        if cmd == "reset":
            STATS.reset()
            STATS.recording = True
            emit({"op": "reset"})
        elif cmd == "report":
            ru = resource.getrusage(resource.RUSAGE_SELF)
            emit({
                "op": "report", "msgs": STATS.msgs, "timed": STATS.timed, "bytes_in": STATS.bytes_in,
                "bytes_out": STATS.bytes_out, "requests": STATS.requests, "closed": STATS.closed,
                "gaps": STATS.gaps, "dups": STATS.dups, "open": sum(1 for c in conns if c.open),
                "hist": STATS.hist, "rtt": STATS.rtt, "learned": STATS.learned, "statuses": STATS.statuses,
                "elapsed": time.time() - STATS.t_reset, "client_cpu": ru.ru_utime + ru.ru_stime,
                "max_rss_kb": ru.ru_maxrss,
            })
        elif cmd == "stall":
            fraction = float(arg or "0.05")
            count = round(len(conns) * fraction)
            ports = []
            for c in conns[:count]:
                if c.transport is not None:
                    c.transport.pause_reading()
                    c.stalled = True
                    c.received = 0
                    sockname = c.transport.get_extra_info("sockname")
                    if sockname:
                        ports.append(sockname[1])
            emit({"op": "stall", "stalled": count, "ports": ports})
        elif cmd == "unstall":
            count = 0
            for c in conns:
                if c.stalled and c.transport is not None and not c.transport.is_closing():
                    c.transport.resume_reading()
                    count += 1
            emit({"op": "unstall", "resumed": count})
        elif cmd == "stalled":
            mine = [c for c in conns if c.stalled]
            codes: dict[str, int] = {}
            for c in mine:
                if c.close_code is not None:
                    codes[str(c.close_code)] = codes.get(str(c.close_code), 0) + 1
            emit({"op": "stalled", "stalled": len(mine), "lost": sum(c.lost for c in mine),
                  "open": sum(1 for c in mine if not c.lost), "close_codes": codes,
                  "received": sum(c.received for c in mine)})
    for p in pollers:
        p.cancel()
    for c in conns:
        c.abort()
    await asyncio.sleep(0.05)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=tuple(PATHS), required=True)
    parser.add_argument("--port", type=int, required=True, help="server port on 127.0.0.1")
    parser.add_argument("--tasks", required=True, help="comma-separated task ids, spread over the connections")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--offset", type=int, default=0, help="index of the first connection (task spread)")
    parser.add_argument("--concurrency", type=int, default=50, help="connection attempts in flight (50)")
    parser.add_argument("--interval", type=float, default=1.0, help="poll: seconds between requests")
    parser.add_argument("--body-file", default=None, help="submit: the JSON body to POST")
    parser.add_argument("--path", default=None, help="path template with {task} (default per kind)")
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
