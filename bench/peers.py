"""Peers, in the same run and on the same events: livepix against the usual ways.

  livepix ws / sse   one `livepix api`: ONE Redis pub/sub connection per process,
                     decode once, serialize once, per-connection bounded outboxes
  sse-starlette      one Redis pub/sub connection per client (bench/peers_app.py)
  python-socketio    AsyncServer + AsyncRedisManager, rooms per task (bench/peers_app.py)

The same watcher count on one task, the same rate, the same raw asyncio clients. livepix
and sse-starlette get the events from the real `progress` store script (one EVALSHA
that PUBLISHes on the task's channel); python-socketio gets the same event dicts
through `socketio.RedisManager(write_only=True).emit(..., room=task)`, the way a worker
talks to it. Measured: deliveries per CPU-second of the server process, and of server
plus Redis (a per-client subscription moves the fan-out into Redis), latency at the
clients, and server RSS per connection (after connecting, before publishing).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import Any

from livepix.processes import free_port

from .common import loadavg, machine, raise_nofile, save, table
from .push import measure_push
from .stack import Stack

COLUMNS = ["server", "kind", "watchers", "rate", "deliveries_per_s", "delivered_pct", "server_cpu_pct",
           "deliveries_per_cpu_s", "livepix_ratio", "redis_cpu_pct", "deliveries_per_cpu_s_with_redis",
           "p50_ms", "p99_ms", "loadavg"]


def wait_port(port: int, child: Any, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited\n{child.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{child.name} did not listen on {port}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    rows: list[dict[str, Any]] = []
    info = machine()
    with Stack() as stack:
        stack.start_redis()
        url, api = stack.add_api()
        api_port = int(url.rsplit(":", 1)[1])
        peers = {}
        for kind in ("sse", "sio", "floor"):
            port = free_port()
            child = stack.spawn(f"peer-{kind}", [sys.executable, "-m", "bench.peers_app", kind, "--port", str(port),
                                                 "--redis", stack.redis_url])
            wait_port(port, child)
            peers[kind] = (port, child)
        plan = [
            ("livepix", "ws", api, api_port, {}),
            ("livepix", "sse", api, api_port, {}),
            ("sse-starlette", "sse", peers["sse"][1], peers["sse"][0], {"path": "/events/{task}"}),
            ("python-socketio", "sio", peers["sio"][1], peers["sio"][0], {"via": "socketio"}),
            ("floor (bare uvloop)", "ws", peers["floor"][1], peers["floor"][0], {}),
            ("floor (bare uvloop)", "sse", peers["floor"][1], peers["floor"][0], {}),
        ]
        for watchers in args.watchers:
            for repeat in range(args.repeat):  # rounds interleave the servers: same minutes, same load
                for label, kind, server, port, extra in plan:
                    if args.servers and not any(label.startswith(s) for s in args.servers):
                        continue
                    rate = args.rate or max(1.0, round(args.deliveries / watchers, 2))
                    row = measure_push(stack, server, port, kind, watchers, rate, args.seconds, label=label, **extra)
                    row["round"] = repeat
                    rows.append(row)
                    print(table([row], COLUMNS), flush=True)
    rows = merge_rounds(rows)
    for row in rows:
        best = max((r["deliveries_per_cpu_s"] for r in rows
                    if r["server"] == "livepix" and r["watchers"] == row["watchers"]), default=float("nan"))
        row["livepix_ratio"] = round(best / row["deliveries_per_cpu_s"], 2) if row["deliveries_per_cpu_s"] else float("nan")
    info["loadavg_at_end"] = loadavg()
    return {"args": vars(args), "machine": info, "rows": rows}


def merge_rounds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (server, kind, watchers): the round with the median deliveries per
    CPU-second (all rounds kept under `_rounds`)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["server"], r["kind"], r["watchers"]), []).append(r)
    out = []
    for group in groups.values():
        group.sort(key=lambda r: r["deliveries_per_cpu_s"])
        mid = dict(group[len(group) // 2])
        mid["_rounds"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in group]
        mid["rounds_deliveries_per_cpu_s"] = [r["deliveries_per_cpu_s"] for r in group]
        out.append(mid)
    return out


def plot(result: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .common import DOCS

    DOCS.mkdir(exist_ok=True)
    rows = result["rows"]
    watchers = sorted({r["watchers"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    labels = []
    def name_of(r: dict[str, Any]) -> str:
        return f"{r['server'].replace(' (bare uvloop)', '').replace('python-', '')}\n{r['kind']}"

    for r in rows:
        if name_of(r) not in labels:
            labels.append(name_of(r))
    width = 0.8 / max(1, len(watchers))
    for j, w in enumerate(watchers):
        by = {name_of(r): r for r in rows if r["watchers"] == w}
        xs = [i + j * width for i in range(len(labels))]
        axes[0].bar(xs, [by[n]["deliveries_per_cpu_s"] if n in by else 0 for n in labels], width, label=f"{w} watchers")
        axes[0].bar(xs, [by[n]["deliveries_per_cpu_s_with_redis"] if n in by else 0 for n in labels], width,
                    fill=False, hatch="//", edgecolor="k", lw=0.5)
        axes[1].bar(xs, [by[n]["p99_ms"] if n in by else 0 for n in labels], width, label=f"{w} watchers p99")
        axes[1].plot(xs, [by[n]["p50_ms"] if n in by else 0 for n in labels], "k_", ms=14)
    for ax in axes:
        ax.set_xticks([i + width * (len(watchers) - 1) / 2 for i in range(len(labels))])
        ax.set_xticklabels(labels, fontsize=8)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("deliveries per CPU-second")
    axes[0].set_title("Server process (solid); server + Redis (hatched)\nfloor = bare uvloop reference, not a peer",
                      fontsize=9)
    axes[1].set_ylabel("publish-to-receive latency, ms (bar p99, tick p50)")
    axes[1].set_yscale("log")
    axes[1].set_title("Latency at the clients")
    fig.tight_layout()
    path = DOCS / "bench-peers.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000])
    parser.add_argument("--rate", type=float, default=None, help="events/s; default --deliveries / watchers")
    parser.add_argument("--deliveries", type=float, default=10000, help="offered deliveries/s (10000)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all servers; the median round is kept")
    parser.add_argument("--servers", type=lambda s: s.split(","), default=[],
                        help="subset: livepix,sse-starlette,python-socketio")
    parser.add_argument("--out", default="peers")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    started = time.time()
    result = run(args)
    result["wall_s"] = round(time.time() - started, 1)
    print()
    print(table(result["rows"], COLUMNS))
    print("results:", save(args.out, result))
    if not args.no_plot:
        print("plots:", *plot(result))


if __name__ == "__main__":
    from .common import deadline

    with deadline(1500, "bench.peers"):
        main()
