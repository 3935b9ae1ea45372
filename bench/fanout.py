"""Fan-out: one task channel x N watchers, WebSocket and SSE, on one `livepix api`.

A `bench.publisher` process plays a worker: it runs the real `progress` store script
(one EVALSHA: log + state + PUBLISH) at a fixed rate. Watchers are raw asyncio
clients in separate processes. Measured per run, in the same api process: deliveries
per server CPU-second (the api's user+system time from /proc over the publishing
window plus a 1 s drain), publish-to-receive latency p50/p99 at the clients, the
round trip of a GET /healthz probe every 100 ms (event-loop lag), Redis and client
CPU, and the 1-minute load average of the machine.

`--sweep` adds a saturation sweep: N watchers (default 1000) at increasing rates, to
find where one api process saturates and the p99 at half that rate.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .common import loadavg, machine, raise_nofile, save, table
from .push import measure_push
from .stack import Stack

COLUMNS = ["api", "kind", "watchers", "rate", "deliveries_per_s", "delivered_pct", "server_cpu_pct",
           "deliveries_per_cpu_s", "us_per_delivery", "p50_ms", "p99_ms", "probe_p99_ms",
           "redis_cpu_pct", "client_cpu_pct", "loadavg"]


def auto_rate(watchers: int, deliveries: float, max_rate: float) -> float:
    return round(min(max_rate, max(1.0, deliveries / watchers)), 2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    rows: list[dict[str, Any]] = []
    sweep: list[dict[str, Any]] = []
    info = machine()
    with Stack() as stack:
        stack.start_redis()
        apis = []  # (label, child, port): one api per source tree, runs interleaved
        for src in args.api_src or [None]:
            url, api = stack.add_api(src=src)
            label = "livepix" if src is None else Path(src).name
            apis.append((label, api, int(url.rsplit(":", 1)[1])))
        for watchers in args.watchers:
            for kind in args.transports:
                for repeat in range(args.repeat):
                    for label, api, port in apis:
                        rate = args.rate or auto_rate(watchers, args.deliveries, args.max_rate)
                        profile = f"fanout-{label}-{kind}-{watchers}" if args.profile and repeat == 0 else None
                        row = measure_push(stack, api, port, kind, watchers, rate, args.seconds, label=label,
                                           profile=profile)
                        row["api"] = label
                        rows.append(row)
                        print(table([row], COLUMNS) if len(rows) == 1 else table([row], COLUMNS).split("\n", 2)[-1],
                              flush=True)
        if args.sweep:
            print(f"\nsaturation sweep, {args.sweep_watchers} watchers", flush=True)
            for label, api, port in apis:
                for kind in args.transports:
                    for rate in args.sweep_rates:
                        row = measure_push(stack, api, port, kind, args.sweep_watchers, rate, args.seconds, label=label)
                        row["api"] = label
                        sweep.append(row)
                        print(table([row], COLUMNS).split("\n", 2)[-1], flush=True)
                        if row["delivered_pct"] < 90 or row["server_cpu_pct"] > 97:
                            break  # saturated: higher rates only pile up
        info["api_rss_mb_end"] = [round(api.rss() / 2**20, 1) for _, api, _ in apis]
    info["loadavg_at_end"] = loadavg()
    result = {"args": vars(args), "machine": info, "rows": rows, "sweep": sweep}
    if sweep:
        result["saturation"] = saturation(sweep)
    return result


def saturation(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """Per transport: the highest delivery rate sustained (>= 99% delivered, api CPU < 95%),
    and p50/p99 of the run closest to half of it."""
    out = {}
    for kind in sorted({r["kind"] for r in sweep}):
        runs = [r for r in sweep if r["kind"] == kind]
        ok = [r for r in runs if r["delivered_pct"] >= 99 and r["server_cpu_pct"] < 95]
        sat = max(r["deliveries_per_s"] for r in ok) if ok else max(r["deliveries_per_s"] for r in runs)
        half = min(runs, key=lambda r: abs(r["deliveries_per_s"] - sat / 2))
        out[kind] = {"max_sustained_deliveries_per_s": sat, "half_rate_deliveries_per_s": half["deliveries_per_s"],
                     "half_rate_p50_ms": half["p50_ms"], "half_rate_p99_ms": half["p99_ms"],
                     "best_deliveries_per_cpu_s": max(r["deliveries_per_cpu_s"] for r in ok or runs)}
    return out


def plot(result: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .common import DOCS

    DOCS.mkdir(exist_ok=True)
    files = []
    first = result["rows"][0].get("api") if result["rows"] else None
    rows = [r for r in result["rows"] if r.get("api") == first]  # the first api tree only
    if rows:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        kinds = sorted({r["kind"] for r in rows})
        watchers = sorted({r["watchers"] for r in rows})
        width = 0.8 / len(kinds)
        for k, kind in enumerate(kinds):
            by = {r["watchers"]: r for r in rows if r["kind"] == kind}
            xs = [i + k * width for i in range(len(watchers))]
            ax1.bar(xs, [by[w]["deliveries_per_cpu_s"] if w in by else 0 for w in watchers], width, label=kind)
            ax2.bar([x - width * 0.2 for x in xs], [by[w]["p50_ms"] if w in by else 0 for w in watchers],
                    width * 0.4, label=f"{kind} p50")
            ax2.bar([x + width * 0.2 for x in xs], [by[w]["p99_ms"] if w in by else 0 for w in watchers],
                    width * 0.4, label=f"{kind} p99", alpha=0.6)
        for ax in (ax1, ax2):
            ax.set_xticks([i + width * (len(kinds) - 1) / 2 for i in range(len(watchers))])
            ax.set_xticklabels([f"{w} watchers\n{next(r['rate'] for r in rows if r['watchers'] == w):g} ev/s"
                                for w in watchers])
            ax.legend(fontsize=8)
        ax1.axhline(40000, color="grey", ls="--", lw=0.8)
        ax1.set_ylabel("deliveries per api CPU-second")
        ax1.set_title("Fan-out efficiency (one task channel)")
        ax2.set_ylabel("publish-to-receive latency, ms")
        ax2.set_title("Latency at the clients")
        fig.tight_layout()
        path = DOCS / "bench-fanout.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))
    sweep_all = result.get("sweep") or []
    sweep = [r for r in sweep_all if r.get("api") == sweep_all[0].get("api")] if sweep_all else []
    if sweep:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for kind in sorted({r["kind"] for r in sweep}):
            runs = sorted((r for r in sweep if r["kind"] == kind), key=lambda r: r["rate"])
            offered = [r["rate"] * r["watchers"] for r in runs]
            ax1.plot(offered, [r["deliveries_per_s"] for r in runs], "o-", label=f"{kind} delivered/s")
            ax1.plot(offered, [r["server_cpu_pct"] * 500 for r in runs], "x--", label=f"{kind} api CPU % (x500)")
            ax2.plot([r["deliveries_per_s"] for r in runs], [r["p99_ms"] for r in runs], "o-", label=f"{kind} p99")
            ax2.plot([r["deliveries_per_s"] for r in runs], [r["p50_ms"] for r in runs], "x--", label=f"{kind} p50")
        lim = max(r["rate"] * r["watchers"] for r in sweep)
        ax1.plot([0, lim], [0, lim], color="grey", lw=0.6, label="offered")
        ax1.set_xlabel("offered deliveries/s")
        ax1.set_ylabel("deliveries/s")
        ax1.set_title(f"Saturation, {sweep[0]['watchers']} watchers on one channel")
        ax1.legend(fontsize=8)
        ax2.set_xlabel("delivered/s")
        ax2.set_ylabel("latency, ms (log)")
        ax2.set_yscale("log")
        ax2.axhline(50, color="grey", ls="--", lw=0.8)
        ax2.legend(fontsize=8)
        ax2.set_title("Publish-to-receive latency vs load")
        fig.tight_layout()
        path = DOCS / "bench-fanout-sweep.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",")]
    floats = lambda s: [float(x) for x in s.split(",")]
    parser.add_argument("--watchers", type=ints, default=[1, 100, 1000], help="comma-separated (1,100,1000)")
    parser.add_argument("--transports", type=lambda s: s.split(","), default=["ws", "sse"])
    parser.add_argument("--seconds", type=float, default=5.0, help="publishing time per run (5)")
    parser.add_argument("--rate", type=float, default=None,
                        help="events/s; default: --deliveries / watchers, at most --max-rate")
    parser.add_argument("--deliveries", type=float, default=10000, help="offered deliveries/s for the auto rate")
    parser.add_argument("--max-rate", type=float, default=200, help="cap of the auto rate, events/s (200)")
    parser.add_argument("--sweep", action="store_true", help="also run the saturation sweep")
    parser.add_argument("--sweep-watchers", type=int, default=1000)
    parser.add_argument("--sweep-rates", type=floats, default=[5, 10, 20, 40, 60, 80])
    parser.add_argument("--repeat", type=int, default=1, help="runs per point, interleaved across --api-src (1)")
    parser.add_argument("--api-src", type=lambda s: s.split(","), default=None,
                        help="A/B: comma-separated source trees, one api process each (default: this tree)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the api in each point's first run: bench/results/profile-fanout-*.txt")
    parser.add_argument("--out", default="fanout", help="results name: bench/results/<out>.json")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    started = time.time()
    result = run(args)
    result["wall_s"] = round(time.time() - started, 1)
    print()
    print(table(result["rows"], COLUMNS))
    if result["sweep"]:
        print(table(result["sweep"], COLUMNS))
        print(result["saturation"])
    print("results:", save(args.out, result))
    if not args.no_plot:
        print("plots:", *plot(result))


if __name__ == "__main__":
    from .common import deadline

    with deadline(1200, "bench.fanout"):
        main()
