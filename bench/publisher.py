"""The event source of the fan-out benchmarks: plays a worker reporting progress.

`--via store` (livepix): each event is one call of the real `progress` store script
through `actors.recorder.Recorder` (the worker's own class): append to the task's log,
update its state and PUBLISH, in one EVALSHA. `--via socketio` (the python-socketio
peer): the same event dicts emitted through `socketio.RedisManager(write_only=True)`,
the way a Celery/Dramatiq worker talks to a Socket.IO server.

Events go out at a fixed rate on an absolute schedule (no drift), round-robin over the
tasks, for a fixed time. Each carries `t_pub` = time.time() taken just before the
Redis call (microseconds; the event's own `ts` is rounded to the millisecond).

`--preview-bytes N` adds a `preview` of N base64 characters to every event, the way
image_generation's progress events carry a small JPEG (bench.slow uses it to fill a
stalled client's socket buffers within the run).

Protocol: prints {"op":"ready"} once connected, waits for a `go` line on stdin,
publishes, prints {"op":"done", ...} and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.publisher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", required=True, help="redis://127.0.0.1:PORT/0")
    parser.add_argument("--tasks", required=True, help="comma-separated task ids")
    parser.add_argument("--rate", type=float, default=10.0, help="events per second, all tasks together")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--via", choices=("store", "socketio"), default="store")
    parser.add_argument("--log", action="store_true", help="report [seq, t_pub] of every event")
    parser.add_argument("--no-wait", action="store_true", help="start at once, without waiting for `go`")
    parser.add_argument("--preview-bytes", type=int, default=0,
                        help="add a base64 `preview` of this many characters to every event (0: none)")
    args = parser.parse_args(argv)
    preview = None
    if args.preview_bytes > 0:
        import base64
        import os

        preview = base64.b64encode(os.urandom(args.preview_bytes)).decode()[: args.preview_bytes]

    tasks = args.tasks.split(",")
    total = 50
    if args.via == "store":
        import redis

        from livepix import store
        from livepix.storage import run

        client = redis.Redis.from_url(args.redis)
        client.ping()
        opts = store.Options(ttl_s=3600)

        def publish(task: str, i: int) -> tuple[int, float]:
            step = i % total + 1
            t_pub = round(time.time(), 6)
            seq, _cancel = run(client, store.progress(
                opts, task, 2 * step - 1, f"Denoising step {step}/{total}", step=step, total=total,
                eta_s=round((total - step) * 0.2, 1), t_pub=t_pub, preview=preview,
            ))
            return seq, t_pub
    else:
        import socketio

        manager = socketio.RedisManager(args.redis, write_only=True)
        seqs = dict.fromkeys(tasks, 100)

        def publish(task: str, i: int) -> tuple[int, float]:
            step = i % total + 1
            seqs[task] += 1
            event = {"seq": seqs[task], "task_id": task, "type": "progress", "status": "PROCESSING",
                     "progress": 2 * step - 1, "message": f"Denoising step {step}/{total}",
                     "ts": round(time.time(), 3), "step": step, "total": total,
                     "eta_s": round((total - step) * 0.2, 1)}
            event["t_pub"] = round(time.time(), 6)
            if preview:
                event["preview"] = preview
            manager.emit("progress", event, room=task)
            return seqs[task], event["t_pub"]

    print(json.dumps({"op": "ready"}), flush=True)
    if not args.no_wait:
        line = sys.stdin.readline().strip()
        if line != "go":
            return
    count = int(args.rate * args.seconds)
    log: list[tuple[int, float]] = []
    late = 0
    worst = 0.0
    t0 = time.time()
    for i in range(count):
        due = t0 + i / args.rate
        now = time.time()
        if due > now:
            time.sleep(due - now)
        else:
            late += 1
            worst = max(worst, now - due)
        seq, t_pub = publish(tasks[i % len(tasks)], i)
        if args.log:
            log.append((seq, t_pub))
    elapsed = time.time() - t0
    print(json.dumps({"op": "done", "published": count, "elapsed": elapsed, "late": late,
                      "worst_behind_ms": round(worst * 1000, 2), "log": log}), flush=True)


if __name__ == "__main__":
    main()
