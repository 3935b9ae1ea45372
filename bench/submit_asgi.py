"""The api's submit route in-process: one source tree's Starlette app, driven by direct
ASGI calls (no network, no uvicorn, no load-generator processes), against a real Redis.

What it isolates is the app's own CPU per submit (routing, auth middleware,
validation, the store's round trip, the answer): the HTTP server and the clients,
which `bench.taskpath` also measures, are left out, and with them most of the noise of
a shared machine. One request at a time: --rounds rounds of --submits each, the
process's CPU time per submit of each round.

Run it as a script, with the tree to measure (`bench.ab --asgi` runs it for two trees,
alternating, with `bench.taskpath`'s small task as the body):
python bench/submit_asgi.py --src TREE --redis-url URL --body-file BODY.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


async def measure(app: Any, body: bytes, submits: int, rounds: int, warm: int) -> list[float]:
    startup: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await startup.put({"type": "lifespan.startup"})
    state: dict[str, Any] = {}
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state},
                                       startup.get, events.put))
    started = await events.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {started}")
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def one() -> None:
        status: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/api/v1/tasks/submit/", "raw_path": b"/api/v1/tasks/submit/",
                 "query_string": b"", "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 8000), "state": dict(state)}
        await app(scope, receive, send)
        if status != [202]:
            raise RuntimeError(f"submit answered {status}")

    for _ in range(warm):
        await one()
    per_submit = []
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(submits):
            await one()
        per_submit.append((time.process_time() - t0) / submits * 1e6)
    await startup.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(lifespan, 10)
    return per_submit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="the source tree whose app to measure")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--body-file", required=True, help="the submit body (bench.ab writes bench.taskpath's)")
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm", type=int, default=300)
    args = parser.parse_args()
    sys.path.insert(0, args.src)
    os.chdir(args.src)
    import app.main
    from livepix.config import Settings

    application = app.main.create_app(Settings(redis_url=args.redis_url, max_queued_per_owner=10**9))
    body = Path(args.body_file).read_bytes()
    us = asyncio.run(measure(application, body, args.submits, args.rounds, args.warm))
    print(json.dumps({"us_cpu_per_submit": [round(u, 1) for u in us]}))


if __name__ == "__main__":
    main()
