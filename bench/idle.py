"""Idle capacity: how many quiet watchers one `livepix api` process holds, and at what cost.

Per transport (WS, SSE), a fresh api process; watchers are added in steps up to each
level (default 1,000, 5,000, 10,000), spread over --tasks tasks, from raw asyncio
clients in separate processes (up to 2,500 connections each; open-file limits raised
to the hard limit; clients close with RST so that no TIME_WAIT eats loopback ports).
At each level: the api's RSS and RSS per connection ((RSS - RSS with 20 warm-up
watchers) / watchers), its idle CPU over --idle-seconds (keepalives included: SSE
comments every 15 s, WS pings every 20 s), its open file descriptors, the watchers
it reports on /metrics, and the connect rate of the step (watchers / seconds until
every new one received the task's history).
"""

from __future__ import annotations

import argparse
import math
import re
import time
from typing import Any

import httpx
import psutil

from .common import loadavg, machine, raise_nofile, save, table
from .push import Clients
from .stack import Stack, make_tasks

COLUMNS = ["kind", "watchers", "server_watches", "rss_mb", "kb_per_conn", "connect_per_s", "idle_cpu_pct",
           "fds", "retries", "failed", "loadavg"]
PER_PROCESS = 2500


def watches(url: str) -> int:
    text = httpx.get(url + "/api/v1/metrics", timeout=10).text
    m = re.search(r"^livepix_watches (\d+)", text, re.MULTILINE)
    return int(m.group(1)) if m else -1


def run_kind(kind: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with Stack() as stack:
        stack.start_redis()
        url, api = stack.add_api(src=getattr(args, "api_src", None))
        port = int(url.rsplit(":", 1)[1])
        tasks = make_tasks(stack.redis_url, args.tasks)
        groups: list[Clients] = []
        try:
            warm = Clients(stack, kind, port, tasks, 20, 1, max_seconds=args.max_seconds, tag="-warm")
            groups.append(warm)
            warm.ready()
            time.sleep(2)
            base = api.rss()
            have = 20
            for level in args.levels:
                step = level - (have - 20)
                if step <= 0:
                    continue
                procs = max(1, math.ceil(step / PER_PROCESS))
                group = Clients(stack, kind, port, tasks, step, procs, max_seconds=args.max_seconds,
                                tag=f"-{level}", extra=["--concurrency", str(args.concurrency)])
                groups.append(group)
                t0 = time.perf_counter()
                ready = group.ready(timeout_s=300)
                connect_s = time.perf_counter() - t0
                have += ready["connected"]
                time.sleep(args.settle)
                rss = api.rss()
                c0, w0 = api.cpu(), time.perf_counter()
                la = loadavg()
                time.sleep(args.idle_seconds)
                idle = (api.cpu() - c0) / (time.perf_counter() - w0)
                n = have - 20
                row = {
                    "kind": kind, "watchers": n, "server_watches": watches(url) - 20, "rss_mb": round(rss / 2**20, 1),
                    "kb_per_conn": round((rss - base) / n / 1024, 1),
                    # the group's own connect time (process start excluded)
                    "connect_per_s": round(step / ready["connect_s"]) if ready["connect_s"] else float("nan"),
                    "connect_wall_s": round(connect_s, 2), "idle_cpu_pct": round(100 * idle, 2),
                    "fds": psutil.Process(api.pid).num_fds(), "retries": ready["retries"], "failed": ready["failed"],
                    "errors": ready["errors"], "base_rss_mb": round(base / 2**20, 1), "loadavg": la,
                }
                rows.append(row)
                print(table([row], COLUMNS), flush=True)
        finally:
            for g in groups:
                g.stop()
    return rows


def plot(result: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .common import DOCS

    DOCS.mkdir(exist_ok=True)
    rows = result["rows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, target in (("ws", 30), ("sse", 40)):
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        ax1.plot([r["watchers"] for r in rs], [r["kb_per_conn"] for r in rs], "o-", label=f"{kind} (target {target} KB)")
        ax1.axhline(target, ls="--", lw=0.7, color="C0" if kind == "ws" else "C1")
        ax2.plot([r["watchers"] for r in rs], [r["idle_cpu_pct"] for r in rs], "o-", label=kind)
    ax1.set_xlabel("idle watchers on one api process")
    ax1.set_ylabel("RSS per connection, KB")
    ax1.set_ylim(bottom=0)
    ax1.legend()
    ax1.set_title("Memory per idle watcher")
    ax2.set_xlabel("idle watchers")
    ax2.set_ylabel("api CPU while idle, % of one core")
    ax2.set_ylim(bottom=0)
    ax2.legend()
    ax2.set_title("Idle CPU (keepalives included)")
    fig.tight_layout()
    path = DOCS / "bench-idle.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 5000, 10000])
    parser.add_argument("--transports", type=lambda s: s.split(","), default=["ws", "sse"])
    parser.add_argument("--tasks", type=int, default=100, help="tasks the watchers are spread over (100)")
    parser.add_argument("--idle-seconds", type=float, default=15.0, help="idle CPU window per level (15)")
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=50, help="connects in flight per client process")
    parser.add_argument("--max-seconds", type=float, default=600, help="bound of every client process")
    parser.add_argument("--out", default="idle")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    nofile = raise_nofile()
    if max(args.levels) + 200 > nofile:
        parser.error(f"open-file limit {nofile} is below {max(args.levels)} watchers")
    started = time.time()
    info = machine()
    rows = []
    for kind in args.transports:
        rows += run_kind(kind, args)
    info["loadavg_at_end"] = loadavg()
    result = {"args": vars(args), "machine": info, "rows": rows, "wall_s": round(time.time() - started, 1)}
    print()
    print(table(rows, COLUMNS))
    print("results:", save(args.out, result))
    if not args.no_plot:
        print("plots:", *plot(result))


if __name__ == "__main__":
    from .common import deadline

    with deadline(1500, "bench.idle"):
        main()
