"""Polling baseline: the seed's way (GET /status/ every second) against SSE and WS.

The same api process, the same task, the same events (a publisher running the real
`progress` store script at --rate events/s), --watchers clients per mode, one mode
after the other:

  poll  each client GETs /api/v1/tasks/{id}/status/ every --interval s on a keep-alive
        connection (phases spread uniformly over the interval)
  sse   each client holds /api/v1/tasks/{id}/events open
  ws    each client holds /api/v1/tasks/{id}/ws open

Measured per mode: the api's CPU (user+system, /proc) over the window, requests or
deliveries per second, bytes per second on the wire (both directions, measured at the
clients, HTTP headers included), and staleness: for every event, the delay from its
`t_pub` until a client learns of it (pushed: the event arrives; polled: a response
shows a seq at least as new). Every client's view of every event counts once.

The modes run --repeat rounds (poll, sse, ws, poll, sse, ws, ...); each round's push
modes are compared with that round's poll, and the summary gives the medians. No
healthz probe runs here (this scenario reports no loop lag): it would add the same
~0.5% of a core to every mode.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from .common import Histogram, loadavg, machine, quantile, raise_nofile, save, table
from .push import measure_push
from .stack import Stack

COLUMNS = ["mode", "watchers", "rate", "requests_per_s", "deliveries_per_s", "server_cpu_pct", "cpu_vs_poll",
           "kb_per_s", "staleness_p50_ms", "staleness_p99_ms", "learned_pct", "loadavg"]


def staleness(row: dict[str, Any]) -> tuple[list[float], int]:
    """Per (client, event): learned-at minus t_pub, from the publisher's log."""
    published = {int(seq): t for seq, t in row["_pub_log"]}
    out = [t_seen - published[seq] for seq, t_seen in row["_learned"] if seq in published]
    return out, len(published) * row["connected"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    rows = []
    info = machine()
    with Stack() as stack:
        stack.start_redis()
        url, api = stack.add_api()
        port = int(url.rsplit(":", 1)[1])
        for round_ in range(args.repeat):
            this_round = []
            for mode in args.modes:
                extra = {"log": True, "drain_s": args.interval + 0.5} if mode == "poll" else {"drain_s": 1.0}
                row = measure_push(stack, api, port, mode, args.watchers, args.rate, args.seconds, probe_s=None, **extra)
                row["mode"] = mode
                row["round"] = round_ + 1
                row["kb_per_s"] = round((row["bytes_in_per_s"] + row["bytes_out_per_s"]) / 1000, 1)
                if mode == "poll":
                    values, possible = staleness(row)
                    row["staleness_p50_ms"] = round(quantile(values, 0.5) * 1000, 1)
                    row["staleness_p99_ms"] = round(quantile(values, 0.99) * 1000, 1)
                    row["learned_pct"] = round(100 * len(values) / possible, 1) if possible else float("nan")
                    # 201 quantiles of the (client, event) staleness: enough for the CDF
                    row["_staleness_q"] = [quantile(values, i / 200) for i in range(201)]
                    row.pop("_learned")
                    row.pop("_pub_log")
                else:
                    row["staleness_p50_ms"] = row["p50_ms"]
                    row["staleness_p99_ms"] = row["p99_ms"]
                    row["learned_pct"] = row["delivered_pct"]
                this_round.append(row)
                print(table([row], COLUMNS), flush=True)
            poll = next((r for r in this_round if r["mode"] == "poll"), None)
            for r in this_round:
                r["cpu_vs_poll"] = (round(poll["server_cpu_s"] / r["server_cpu_s"], 1)
                                    if poll and r["server_cpu_s"] else float("nan"))
            rows += this_round
    info["loadavg_at_end"] = loadavg()
    return {"args": vars(args), "machine": info, "rows": rows, "summary": summarize(rows)}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per mode, the median over the rounds of each column (ratios per round first)."""
    out = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        summary: dict[str, Any] = {"mode": mode, "watchers": mine[0]["watchers"], "rate": mine[0]["rate"],
                                   "rounds": len(mine)}
        for key in COLUMNS[3:]:
            values = [r[key] for r in mine if isinstance(r.get(key), (int, float))]
            summary[key] = round(statistics.median(values), 1) if values else float("nan")
        summary["cpu_vs_poll_range"] = [min(r["cpu_vs_poll"] for r in mine), max(r["cpu_vs_poll"] for r in mine)]
        out.append(summary)
    return out


def median_round(rows: list[dict[str, Any]]) -> int:
    """The round whose push modes' mean CPU ratio to polling is the median (the plot's)."""
    ratios = {}
    for round_ in dict.fromkeys(r.get("round", 1) for r in rows):
        pushed = [r["cpu_vs_poll"] for r in rows if r.get("round", 1) == round_ and r["mode"] != "poll"]
        ratios[round_] = statistics.mean(pushed) if pushed else 0.0
    ordered = sorted(ratios, key=ratios.__getitem__)
    return ordered[(len(ordered) - 1) // 2]


def plot(result: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .common import DOCS

    DOCS.mkdir(exist_ok=True)
    rows = [r for r in result["rows"] if r.get("round", 1) == median_round(result["rows"])]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.8))
    names = [r["mode"] for r in rows]
    colors = ["#c44" if n == "poll" else "#48c" if n == "sse" else "#4a4" for n in names]
    ax1.bar(names, [r["server_cpu_pct"] for r in rows], color=colors)
    ax1.set_ylabel("api CPU, % of one core")
    ax1.set_title(f"{rows[0]['watchers']} watchers, {rows[0]['rate']:g} events/s (median round)")
    for i, r in enumerate(rows):
        ax1.annotate(f"{r['server_cpu_pct']:.1f}%", (i, r["server_cpu_pct"]), ha="center", va="bottom", fontsize=8)
    ax2.bar(names, [r["kb_per_s"] for r in rows], color=colors)
    ax2.set_ylabel("kB/s on the wire (both ways)")
    ax2.set_title("Traffic")
    for r, c in zip(rows, colors):
        if r["mode"] == "poll":
            xs = r["_staleness_q"]
        else:
            h = Histogram({int(k): v for k, v in r["_hist"].items()})
            xs = [h.quantile(q / 200) for q in range(201)]
        ys = [i / (len(xs) - 1) for i in range(len(xs))] if len(xs) > 1 else [1.0]
        ax3.plot([x * 1000 for x in xs], ys, color=c, label=r["mode"])
    ax3.set_xscale("log")
    ax3.set_xlabel("staleness, ms (log)")
    ax3.set_ylabel("fraction of (client, event)")
    ax3.set_title("Staleness CDF")
    ax3.legend()
    fig.tight_layout()
    path = DOCS / "bench-polling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.polling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=2.0, help="events/s on the task (2)")
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, s (1)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window per mode (15)")
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["poll", "sse", "ws"])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of all modes; medians reported (3)")
    parser.add_argument("--out", default="polling")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    started = time.time()
    result = run(args)
    result["wall_s"] = round(time.time() - started, 1)
    print()
    print(table(result["rows"], ["round", *COLUMNS]))
    print("\nmedian of the rounds:")
    print(table(result["summary"], [*COLUMNS, "cpu_vs_poll_range"]))
    print("results:", save(args.out, result))
    if not args.no_plot:
        print("plots:", *plot(result))


if __name__ == "__main__":
    from .common import deadline

    with deadline(900, "bench.polling"):
        main()
