"""Many channels with churn: 300 tasks with 1-3 watchers each, watchers leaving and joining.

One `livepix api` process. Per transport (`ws`, `sse`: disconnect and reconnect;
`mux`: unsubscribe and subscribe on long-lived `/api/v1/ws` sockets), fresh tasks, a
`bench.publisher` publishing on all of them round-robin (the real `progress` store
script) and `bench.churngen` client processes holding the watchers.

Windows alternate in the same run, with the same watchers and the same publishing:
`static` (every watcher stays) and `churn` (each watcher leaves after an exponential
lifetime, mean --life s, and joins again after a pause, mean --off s, resuming from its
last seq; with probability --switch it moves to another task and reads its whole
history). Per window: deliveries per api CPU-second (live events plus history
replays), publish-to-receive p50/p99 of the live events at watchers already in (and,
apart, of the events published while a watcher was joining: `catchup`), the healthz
probe's p99 (event-loop lag), joins/s, and the correctness checks: gaps and duplicates per watcher across its leaves and joins, events
after a confirmed `unsubscribe`, live watchers left without events (lost
subscriptions). After each transport the clients leave, and `/metrics` must show no
watch left behind.

The short correctness probes (abandoned joins, /ws op bursts) are tests:
tests/test_churn.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import httpx

from .common import Histogram, deadline, loadavg, machine, raise_nofile, save, table
from .push import Probe
from .slow import metric_values
from .stack import Child, Publisher, Stack, make_tasks, read_op

COLUMNS = ["kind", "mode", "round", "live_watchers", "joins_per_s", "live_per_s", "replayed_per_s", "api_cpu_pct",
           "deliveries_per_cpu_s", "us_per_delivery", "p50_ms", "p99_ms", "catchup_p99_ms", "probe_p99_ms", "gaps",
           "dups", "after_unsub", "silent", "join_failed", "server_closed", "rss_mb", "loadavg"]


class Group:
    """The churngen processes of one transport."""

    def __init__(self, stack: Stack, kind: str, port: int, tasks: list[str], args: argparse.Namespace,
                 max_seconds: float) -> None:
        self.procs: list[Child] = []
        self.bufs: list[bytearray] = []
        for i in range(args.procs):
            argv = [sys.executable, "-m", "bench.churngen", "--kind", kind, "--port", str(port),
                    "--tasks", ",".join(tasks), "--per-task", args.per_task, "--proc", str(i),
                    "--procs", str(args.procs), "--per-conn", str(args.per_conn), "--life", str(args.life),
                    "--off", str(args.off), "--switch", str(args.switch), "--seed", str(args.seed),
                    "--max-seconds", str(max_seconds)]
            self.procs.append(stack.spawn(f"churn-{kind}-{i}", argv, stdin=True, stdout_pipe=True))
            self.bufs.append(bytearray())

    def command(self, line: str, op: str, timeout_s: float = 60) -> list[dict[str, Any]]:
        for p in self.procs:
            if line:
                assert p.proc.stdin is not None
                p.proc.stdin.write((line + "\n").encode())
                p.proc.stdin.flush()
        return [read_op(p, b, op, timeout_s) for p, b in zip(self.procs, self.bufs, strict=True)]

    def cpu(self) -> float:
        return sum(p.cpu() for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.alive() and p.proc.stdin is not None:
                try:
                    p.proc.stdin.write(b"quit\n")
                    p.proc.stdin.flush()
                except (OSError, ValueError):
                    pass
        for p in self.procs:
            p.stop(timeout_s=10)


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"hist": Histogram(), "join_hist": Histogram(), "catchup_hist": Histogram(),
                           "errors": [], "mux_errors": []}
    for r in reports:
        out["hist"].merge(r["hist"])
        out["join_hist"].merge(r["join_hist"])
        out["catchup_hist"].merge(r["catchup_hist"])
        out["errors"] += r["errors"]
        out["mux_errors"] += r["mux_errors"]
        for k, v in r.items():
            if isinstance(v, (int, float)) and k not in ("op", "elapsed"):
                out[k] = out.get(k, 0) + v
    out["elapsed"] = max(r["elapsed"] for r in reports)
    return out


def metrics(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/api/v1/metrics", timeout=5).text
    values = metric_values(text)
    for line in text.splitlines():
        if line.startswith("livepix_watched_tasks "):
            values["livepix_watched_tasks"] = float(line.split()[1])
    return values


def run_kind(stack: Stack, api: Child, port: int, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    tasks = make_tasks(stack.redis_url, args.tasks)
    per_task = [int(x) for x in args.per_task.split(",")]
    watchers = sum(per_task[i % len(per_task)] for i in range(args.tasks))
    publish_s = args.rounds * 2 * (args.window + args.settle + 0.5) + 3
    rss0 = api.rss()
    group = Group(stack, kind, port, tasks, args, max_seconds=publish_s + 120)
    publisher: Publisher | None = None
    rows: list[dict[str, Any]] = []
    try:
        ready = group.command("", "ready", timeout_s=120)
        joined = sum(r["joined"] for r in ready)
        print(f"{kind}: {joined}/{watchers} watchers on {args.tasks} tasks in "
              f"{max(r['connect_s'] for r in ready):.1f} s", flush=True)
        publisher = Publisher(stack, tasks, args.rate, publish_s)
        publisher.ready()
        publisher.go()
        time.sleep(1.0)
        assert stack.redis is not None
        for rnd in range(args.rounds):
            for mode in ("static", "churn"):
                group.command(f"mode {mode}", "mode")
                time.sleep(args.settle)
                la = loadavg()
                group.command("reset", "reset")
                c0, r0, k0, w0 = api.cpu(), stack.redis.cpu(), group.cpu(), time.perf_counter()
                with Probe(port, 0.1) as probe:
                    time.sleep(args.window)
                rep = merge(group.command("report", "report"))
                wall = time.perf_counter() - w0
                cpu = api.cpu() - c0
                rcpu = stack.redis.cpu() - r0
                ccpu = group.cpu() - k0
                hist: Histogram = rep["hist"]
                deliveries = rep["live"] + rep["replayed"]
                row = {
                    "kind": kind, "mode": mode, "round": rnd, "watchers": watchers, "tasks": args.tasks,
                    "rate": args.rate, "live_watchers": rep["live_watchers"],
                    "joins_per_s": round(rep["joins"] / wall, 1), "leaves_per_s": round(rep["leaves"] / wall, 1),
                    "switches": rep["switches"], "live_per_s": round(rep["live"] / wall),
                    "replayed_per_s": round(rep["replayed"] / wall), "deliveries": deliveries,
                    "api_cpu_pct": round(100 * cpu / wall, 1),
                    "deliveries_per_cpu_s": round(deliveries / cpu) if cpu > 0 else float("nan"),
                    "us_per_delivery": round(cpu / deliveries * 1e6, 1) if deliveries else float("nan"),
                    "p50_ms": hist.ms(0.5), "p99_ms": hist.ms(0.99), "max_ms": hist.ms(1.0),
                    "join_first_event_p50_ms": rep["join_hist"].ms(0.5),
                    "join_first_event_p99_ms": rep["join_hist"].ms(0.99),
                    "catchup_per_s": round(rep["catchup"] / wall, 1),
                    "catchup_p50_ms": rep["catchup_hist"].ms(0.5), "catchup_p99_ms": rep["catchup_hist"].ms(0.99),
                    "rss_mb": round(api.rss() / 2**20, 1),
                    "gaps": rep["gaps"], "dups": rep["dups"], "after_unsub": rep["after_unsub"],
                    "silent": rep["silent"], "join_failed": rep["join_failed"],
                    "server_closed": rep["server_closed"], "mux_lost": rep["mux_lost"],
                    "redis_cpu_pct": round(100 * rcpu / wall, 1), "client_cpu_pct": round(100 * ccpu / wall, 1),
                    "loadavg": la, "wall_s": round(wall, 2), **probe.summary(), "errors": rep["errors"][:3],
                    "mux_errors": rep["mux_errors"][:3], "_hist": hist.counts,
                }
                rows.append(row)
                print(table([row], COLUMNS).split("\n", 2)[-1], flush=True)
        done = publisher.done()
    finally:
        group.stop()
        if publisher is not None:
            publisher.stop()
    time.sleep(1.5)  # the api notices the last disconnects
    after = metrics(port)
    return {
        "kind": kind, "rows": rows, "watchers": watchers, "joined_at_start": joined, "published": done["published"],
        "pub_late": done["late"], "rss_before_mb": round(rss0 / 2**20, 1), "rss_after_mb": round(api.rss() / 2**20, 1),
        "watches_left": after.get("livepix_watches"), "watched_tasks_left": after.get("livepix_watched_tasks"),
        "slow_clients_closed_total": after.get("livepix_slow_clients_closed_total"),
        "coalesced_total": after.get("livepix_progress_coalesced_total"),
    }


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per transport: medians of the static and churn windows, and the extra CPU per join."""
    def med(xs: list[float]) -> float:
        xs = sorted(xs)
        n = len(xs)
        return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

    out = []
    for k in result["kinds"]:
        static = [r for r in k["rows"] if r["mode"] == "static"]
        churn = [r for r in k["rows"] if r["mode"] == "churn"]
        extra = [(c["api_cpu_pct"] - s["api_cpu_pct"]) / 100 / c["joins_per_s"] * 1e6
                 for s, c in zip(static, churn, strict=False) if c["joins_per_s"] > 0]
        out.append({
            "kind": k["kind"], "watchers": k["watchers"],
            "static_deliveries_per_cpu_s": med([r["deliveries_per_cpu_s"] for r in static]),
            "churn_deliveries_per_cpu_s": med([r["deliveries_per_cpu_s"] for r in churn]),
            "joins_per_s": med([r["joins_per_s"] for r in churn]),
            "static_p50_ms": med([r["p50_ms"] for r in static]), "static_p99_ms": med([r["p99_ms"] for r in static]),
            "churn_p50_ms": med([r["p50_ms"] for r in churn]), "churn_p99_ms": med([r["p99_ms"] for r in churn]),
            "catchup_p50_ms": med([r["catchup_p50_ms"] for r in churn]),
            "catchup_p99_ms": med([r["catchup_p99_ms"] for r in churn]),
            "static_probe_p99_ms": med([r["probe_p99_ms"] for r in static]),
            "churn_probe_p99_ms": med([r["probe_p99_ms"] for r in churn]),
            "join_first_event_p50_ms": med([r["join_first_event_p50_ms"] for r in churn]),
            "extra_us_per_join": round(med(extra)) if extra else float("nan"),
            "gaps": sum(r["gaps"] for r in k["rows"]), "dups": sum(r["dups"] for r in k["rows"]),
            "after_unsub": sum(r["after_unsub"] for r in k["rows"]), "silent": max(r["silent"] for r in k["rows"]),
            "join_failed": sum(r["join_failed"] for r in k["rows"]),
            "server_closed": sum(r["server_closed"] for r in k["rows"]),
            "watches_left": k["watches_left"], "watched_tasks_left": k["watched_tasks_left"],
            "rss_before_mb": k["rss_before_mb"], "rss_after_mb": k["rss_after_mb"],
            "loadavg": med([r["loadavg"] for r in k["rows"]]),
        })
    return out


SUMMARY_COLUMNS = ["kind", "watchers", "static_deliveries_per_cpu_s", "churn_deliveries_per_cpu_s", "joins_per_s",
                   "extra_us_per_join", "static_p50_ms", "static_p99_ms", "churn_p50_ms", "churn_p99_ms",
                   "catchup_p50_ms", "catchup_p99_ms", "static_probe_p99_ms", "churn_probe_p99_ms", "gaps",
                   "dups", "after_unsub", "silent", "join_failed", "watches_left", "watched_tasks_left",
                   "rss_before_mb", "rss_after_mb", "loadavg"]


def plot(result: dict[str, Any], name: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .common import DOCS

    rows = result["summary"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = range(len(rows))
    ax1.bar([x - 0.2 for x in xs], [r["static_deliveries_per_cpu_s"] for r in rows], 0.4, label="static")
    ax1.bar([x + 0.2 for x in xs], [r["churn_deliveries_per_cpu_s"] for r in rows], 0.4, label="churn")
    ax1.set_xticks(list(xs))
    ax1.set_xticklabels([f"{r['kind']}\n{r['joins_per_s']:.0f} joins/s" for r in rows])
    ax1.set_ylabel("deliveries per api CPU-second")
    ax1.set_title(f"{result['args']['tasks']} tasks, {rows[0]['watchers']} watchers, "
                  f"{result['args']['rate']:g} events/s")
    ax1.legend(fontsize=8)
    ax2.bar([x - 0.2 for x in xs], [r["static_p99_ms"] for r in rows], 0.4, label="static p99")
    ax2.bar([x + 0.2 for x in xs], [r["churn_p99_ms"] for r in rows], 0.4, label="churn p99")
    ax2.plot([x - 0.2 for x in xs], [r["static_p50_ms"] for r in rows], "k_", ms=20, label="p50")
    ax2.plot([x + 0.2 for x in xs], [r["churn_p50_ms"] for r in rows], "k_", ms=20)
    ax2.set_xticks(list(xs))
    ax2.set_xticklabels([r["kind"] for r in rows])
    ax2.set_ylabel("publish-to-receive, live events, ms")
    ax2.set_title("Latency at the watchers (median window)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = DOCS / f"bench-{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.churn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transports", type=lambda s: s.split(","), default=["ws", "sse", "mux"])
    parser.add_argument("--tasks", type=int, default=300, help="tasks, each with its own channel (300)")
    parser.add_argument("--per-task", default="1,2,3", help="watchers per task, cycled over the tasks (1,2,3)")
    parser.add_argument("--rate", type=float, default=600, help="events/s over all tasks, round-robin (600)")
    parser.add_argument("--life", type=float, default=3.0, help="churn: mean seconds a watcher stays (3)")
    parser.add_argument("--off", type=float, default=0.2, help="churn: mean seconds before it joins again (0.2)")
    parser.add_argument("--switch", type=float, default=0.25, help="churn: probability of moving to another task")
    parser.add_argument("--per-conn", type=int, default=3, help="mux: watchers per /api/v1/ws socket (3)")
    parser.add_argument("--procs", type=int, default=2, help="client processes (2)")
    parser.add_argument("--window", type=float, default=6.0, help="seconds per window (6)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds after a mode change before a window (1)")
    parser.add_argument("--rounds", type=int, default=2, help="static/churn window pairs per transport (2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--api-src", default=None, help="run the api from another source tree (A/B)")
    parser.add_argument("--out", default="churn", help="results name: bench/results/<out>.json, docs/bench-<out>.png")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    raise_nofile()
    started = time.time()
    info = machine()
    kinds = []
    with Stack() as stack:
        stack.start_redis()
        url, api = stack.add_api(name="api", src=args.api_src)
        port = int(url.rsplit(":", 1)[1])
        print(table([], COLUMNS).split("\n", 1)[0], flush=True)
        for kind in args.transports:
            kinds.append(run_kind(stack, api, port, kind, args))
        api_log = api.log_path.read_text(errors="replace")
    info["loadavg_at_end"] = loadavg()
    result: dict[str, Any] = {"args": vars(args), "machine": info, "kinds": kinds,
                              "api_log_errors": api_log.count("ERROR") + api_log.count("Traceback"),
                              "api_log_warnings": api_log.count("WARNING"),
                              "api_log_tail": api_log.splitlines()[-10:]}
    result["summary"] = summary(result)
    result["wall_s"] = round(time.time() - started, 1)
    print()
    print(table(result["summary"], SUMMARY_COLUMNS))
    print("api log errors:", result["api_log_errors"], result["api_log_tail"][-3:] if result["api_log_errors"] else "")
    print("results:", save(args.out, result), f"({result['wall_s']} s)")
    if not args.no_plot:
        print("plot:", plot(result, args.out))


if __name__ == "__main__":
    with deadline(900, "bench.churn"):
        main()
