"""The task path: submit throughput, submit-to-`started` latency, Redis round trips.

1. Submit throughput of one `livepix api` process, no worker running (tasks pile up in
   the queue): closed-loop raw HTTP/1.1 clients POST a small valid `object_removal`
   task (a 32x32 PNG and one box) on keep-alive connections; 202s per second, their
   latency, the api's and Redis's CPU, for each --connections count.
2. Submit-to-`started` with idle workers: one `livepix worker --queues cpu` (the real
   Dramatiq worker, LIVEPIX_WORKER_POLL_MS as given); tasks submitted one at a time
   over HTTP after a random idle gap (0.2-0.6 s), watched on one `/api/v1/ws`
   socket. Latency = the `started` event's `ts` (stamped by the worker's start
   script) minus the time just before the POST; also to `succeeded`. The Redis
   commands of the whole path per task come from INFO commandstats, minus the
   commands of an idle window of the same length (idle worker polls, upkeep).
3. Redis round trips per progress event: `actors.recorder.Recorder.progress` (what
   every engine calls) run --progress-events times; INFO commandstats before/after,
   and the MONITOR lines of one event.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import threading
import time
from typing import Any

import httpx
import redis

from .common import Histogram, loadavg, machine, quantile, raise_nofile, save, table
from .push import Clients
from .stack import Stack, start_profile

SUBMIT_COLUMNS = ["connections", "submits_per_s", "ok_pct", "p50_ms", "p99_ms", "server_cpu_pct",
                  "us_cpu_per_submit", "redis_cpu_pct", "client_cpu_pct", "loadavg"]


def tiny_task() -> dict[str, Any]:
    from PIL import Image

    image = Image.new("RGB", (32, 32), (20, 40, 220))
    image.paste((230, 20, 20), (8, 8, 24, 24))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"task_type": "object_removal", "image": base64.b64encode(buffer.getvalue()).decode(),
            "parameters": {"boxes": [[8, 8, 24, 24]], "method": "telea"}}


def commandstats(client: redis.Redis) -> dict[str, int]:
    info = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def submit_throughput(stack: Stack, api: Any, port: int, connections: int, seconds: float,
                      profile: str | None = None) -> dict[str, Any]:
    body = stack.workdir / "submit.json"
    body.write_text(json.dumps(tiny_task()))
    processes = 1 if connections < 8 else 2
    clients = Clients(stack, "submit", port, ["-"], connections, processes, max_seconds=seconds + 120,
                      extra=["--body-file", str(body)])
    try:
        clients.ready()
        time.sleep(1.0)  # warm: the loops are running
        clients.reset()
        la = loadavg()
        assert stack.redis is not None
        c0, r0, k0, w0 = api.cpu(), stack.redis.cpu(), clients.cpu(), time.perf_counter()
        spy = start_profile(api, profile, seconds) if profile else None
        time.sleep(seconds)
        report = clients.report()
        if spy is not None:
            spy.wait(30)
        wall = time.perf_counter() - w0
        cpu, rcpu, kcpu = api.cpu() - c0, stack.redis.cpu() - r0, clients.cpu() - k0
    finally:
        clients.stop()
    ok = report["statuses"].get("202", 0)
    rtt: Histogram = report["rtt"]
    return {
        "connections": connections, "submits_per_s": round(ok / wall, 1), "requests": report["requests"],
        "statuses": report["statuses"], "ok_pct": round(100 * ok / report["requests"], 1) if report["requests"] else 0,
        "p50_ms": rtt.ms(0.5), "p99_ms": rtt.ms(0.99), "server_cpu_pct": round(100 * cpu / wall, 1),
        "us_cpu_per_submit": round(cpu / ok * 1e6) if ok else float("nan"),
        "redis_cpu_pct": round(100 * rcpu / wall, 1), "client_cpu_pct": round(100 * kcpu / wall, 1),
        "loadavg": la, "wall_s": round(wall, 2),
    }


def started_latency(stack: Stack, url: str, count: int, poll_ms: int, threads: int) -> dict[str, Any]:
    import websockets.sync.client as ws_client

    worker = stack.add_worker("cpu", threads=threads, LIVEPIX_WORKER_POLL_MS=str(poll_ms))
    stack.wait_workers(1)
    client = stack.client()
    http = httpx.Client(base_url=url, timeout=30)
    ws = ws_client.connect("ws" + url[4:] + "/api/v1/ws", open_timeout=10).__enter__()
    body = tiny_task()
    samples: list[dict[str, float]] = []

    def one() -> dict[str, float]:
        t0 = time.time()
        answer = http.post("/api/v1/tasks/submit/", json=body)
        t_answer = time.time()
        assert answer.status_code == 202, answer.text
        task_id = answer.json()["task_id"]
        ws.send(json.dumps({"op": "subscribe", "task_id": task_id}))
        got: dict[str, float] = {"submit_ms": (t_answer - t0) * 1000}
        while True:
            event = json.loads(ws.recv(timeout=60))
            if event.get("task_id") != task_id or "type" not in event:
                continue
            if event["type"] == "started":
                got["started_ms"] = (event["ts"] - t0) * 1000
                got["started_seen_ms"] = (time.time() - t0) * 1000
                got["_started_ts"] = event["ts"]
            elif event["type"] == "progress" and "first_progress_ms" not in got and "_started_ts" in got:
                got["first_progress_ms"] = (event["ts"] - got["_started_ts"]) * 1000
            elif event["type"] in ("succeeded", "failed", "cancelled"):
                assert event["type"] == "succeeded", event
                got["succeeded_ms"] = (event["ts"] - t0) * 1000
                got["succeeded_seen_ms"] = (time.time() - t0) * 1000
                got.pop("_started_ts", None)
                return got

    try:
        for _ in range(3):  # warm-up: engine loaded, connections made
            one()
        rng = random.Random(1)
        # idle baseline of Redis commands (worker polls, api upkeep) over a similar window
        gaps = [rng.uniform(0.2, 0.6) for _ in range(count)]
        before = commandstats(client)
        t_idle = time.perf_counter()
        time.sleep(min(10.0, sum(gaps)))
        idle_window = time.perf_counter() - t_idle
        idle = _delta(before, commandstats(client))
        before = commandstats(client)
        t_run = time.perf_counter()
        for gap in gaps:
            time.sleep(gap)
            samples.append(one())
        run_window = time.perf_counter() - t_run
        used = _delta(before, commandstats(client))
    finally:
        ws.close()
        http.close()
        client.close()
        worker.stop()
    idle_rate = {k: v / idle_window for k, v in idle.items()}
    per_task = {k: round((v - idle_rate.get(k, 0) * run_window) / count, 1) for k, v in used.items()}
    per_task = {k: v for k, v in sorted(per_task.items(), key=lambda kv: -kv[1]) if v >= 0.05}

    def q(key: str, p: float) -> float:
        return round(quantile([s[key] for s in samples if key in s], p), 1)

    return {
        "poll_ms": poll_ms, "threads": threads, "tasks": count,
        **{f"{k}_{name}": q(k, p) for k in ("submit_ms", "started_ms", "started_seen_ms", "first_progress_ms",
                                             "succeeded_ms", "succeeded_seen_ms")
           for name, p in (("p50", 0.5), ("p99", 0.99))},
        "started_ms_max": round(max(s["started_ms"] for s in samples), 1),
        "redis_commands_per_task": round(sum(per_task.values()), 1), "redis_commands_by_name": per_task,
        "idle_redis_commands_per_s": round(sum(idle.values()) / idle_window, 1),
        "samples": samples, "loadavg": loadavg(),
    }


def _delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0) > 0 and k not in ("info", "config|resetstat")}


def progress_round_trips(stack: Stack, events: int) -> dict[str, Any]:
    from actors.recorder import Recorder
    from livepix.config import Settings

    from .stack import make_tasks

    task = make_tasks(stack.redis_url, 1)[0]
    recorder = Recorder(redis.Redis.from_url(stack.redis_url), Settings(redis_url=stack.redis_url), "bench")
    for i in range(5):  # the first call loads the script (NOSCRIPT, SCRIPT LOAD, EVALSHA)
        recorder.progress(task, i, f"warm-up {i}")
    client = stack.client()
    before = commandstats(client)
    t0 = time.perf_counter()
    for i in range(events):
        recorder.progress(task, i % 100, f"Denoising step {i % 50 + 1}/50", step=i % 50 + 1, total=50)
    elapsed = time.perf_counter() - t0
    delta = _delta(before, commandstats(client))
    # MONITOR one event, on a connection of its own
    lines: list[str] = []
    monitor_client = stack.client()
    started = threading.Event()

    def watch() -> None:
        with monitor_client.monitor() as m:
            started.set()
            for cmd in m.listen():
                text = cmd["command"]
                if "bench-monitor-end" in text:
                    return
                lines.append(f'{cmd["client_address"]}:{cmd["client_port"]} {text[:160]}')

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    started.wait(5)
    time.sleep(0.2)
    recorder.progress(task, 50, "Denoising step 25/50", step=25, total=50)
    client.echo("bench-monitor-end")
    thread.join(5)
    recorder.client.close()
    client.close()
    monitor_client.close()
    lua = [ln for ln in lines if "lua" in ln]
    outer = [ln for ln in lines if "lua" not in ln and "ECHO" not in ln.upper()]
    return {
        "events": events, "commands": delta,
        # commandstats counts the commands a script runs too: MONITOR tells them apart
        "commands_inside_script_per_event": len(lua),
        "round_trips_per_event": round((sum(delta.values()) - len(lua) * events) / events, 3),
        "evalsha_per_event": round(delta.get("evalsha", 0) / events, 3),
        "us_per_event_round_trip": round(elapsed / events * 1e6, 1),
        "monitor_outer": outer, "monitor_inside_script": lua,
    }


def plot(result: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .common import DOCS

    DOCS.mkdir(exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rows = result["submit"]
    if rows:
        ax1.bar([str(r["connections"]) for r in rows], [r["submits_per_s"] for r in rows], color="#48c")
        ax1.axhline(1500, color="grey", ls="--", lw=0.8, label="target 1,500/s")
        for i, r in enumerate(rows):
            ax1.annotate(f"{r['submits_per_s']:.0f}/s\np99 {r['p99_ms']:.0f} ms", (i, r["submits_per_s"]),
                         ha="center", va="bottom", fontsize=8)
        ax1.set_xlabel("concurrent keep-alive connections")
        ax1.set_ylabel("accepted submits/s (one api process)")
        ax1.set_title("Submit throughput")
        ax1.legend(fontsize=8)
    for run in result["started"]:
        xs = sorted(s["started_ms"] for s in run["samples"])
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax2.step(xs, ys, where="post", label=f"submit->started, poll {run['poll_ms']} ms")
        xs = sorted(s["first_progress_ms"] for s in run["samples"] if "first_progress_ms" in s)
        if xs:
            ax2.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", ls="--",
                     label=f"started->first progress, poll {run['poll_ms']} ms")
    ax2.axvline(50, color="grey", ls=":", lw=0.8)
    ax2.axvline(200, color="grey", ls="--", lw=0.8)
    ax2.set_xscale("log")
    ax2.set_xlabel("ms (log)")
    ax2.set_ylabel("fraction of tasks")
    ax2.set_title("Idle workers: time to start")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = DOCS / "bench-taskpath.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.taskpath", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]
    parser.add_argument("--connections", type=ints, default=[1, 16, 64], help="submit clients (1,16,64)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per submit run (5)")
    parser.add_argument("--tasks", type=int, default=40, help="tasks for the submit-to-started latency (40)")
    parser.add_argument("--poll-ms", type=ints, default=[50], help="LIVEPIX_WORKER_POLL_MS values to compare (50)")
    parser.add_argument("--threads", type=int, default=2, help="worker threads (2, the cpu default)")
    parser.add_argument("--progress-events", type=int, default=1000)
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the api during each submit run: bench/results/profile-submit-<n>.txt")
    parser.add_argument("--out", default="taskpath")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    raise_nofile()
    started = time.time()
    info = machine()
    result: dict[str, Any] = {"args": vars(args), "machine": info, "submit": [], "started": []}
    with Stack() as stack:
        stack.start_redis()
        url, api = stack.add_api()
        port = int(url.rsplit(":", 1)[1])
        result["round_trips"] = rt = progress_round_trips(stack, args.progress_events)
        print(f"progress event: {rt['round_trips_per_event']} Redis commands per event "
              f"({rt['commands']} over {rt['events']} events); MONITOR of one event:")
        for line in rt["monitor_outer"]:
            print("   ", line)
        print(f"    (inside the script: {len(rt['monitor_inside_script'])} commands)")
        for connections in args.connections:
            profile = f"submit-{connections}" if args.profile else None
            row = submit_throughput(stack, api, port, connections, args.seconds, profile)
            result["submit"].append(row)
            print(table([row], SUBMIT_COLUMNS), flush=True)
        # a deep queue left behind: what the api's upkeep costs with it, idle
        c0, w0 = api.cpu(), time.perf_counter()
        time.sleep(3)
        client = stack.client()
        result["idle_after_submits"] = {
            "queue_depth": client.zcard("livepix:queue:cpu:pending"),
            "api_cpu_pct": round(100 * (api.cpu() - c0) / (time.perf_counter() - w0), 1),
        }
        client.flushdb()  # the latency runs start from an empty queue
        client.close()
        print("idle api with the queue the submits left:", result["idle_after_submits"])
        for poll_ms in args.poll_ms:
            run = started_latency(stack, url, args.tasks, poll_ms, args.threads)
            result["started"].append(run)
            print({k: v for k, v in run.items() if k not in ("samples", "redis_commands_by_name")})
            print("   Redis commands per task:", run["redis_commands_by_name"])
    info["loadavg_at_end"] = loadavg()
    result["wall_s"] = round(time.time() - started, 1)
    print()
    print(table(result["submit"], SUBMIT_COLUMNS))
    print("results:", save(args.out, result))
    if not args.no_plot:
        print("plots:", *plot(result))


if __name__ == "__main__":
    from .common import deadline

    with deadline(1200, "bench.taskpath"):
        main()
