"""Slow consumers: N watchers on one task, then a fraction of them stop reading.

One `livepix api` process per transport (WS, then SSE), N watchers on one task
(`bench.loadgen`), events at a fixed rate (`bench.publisher`, the real `progress`
store script). The publishing runs without a break through two phases of the same run:

1. **baseline**: every watcher reads;
2. **stalled**: `stall F` makes a fraction F of the watchers stop reading (their
   sockets stay open, the kernel's receive buffer fills, then the api's send buffer).

Each phase is cut into windows of --window seconds; per window, at the healthy
watchers: publish-to-receive p50/p99 and delivered %, and the api's CPU and RSS.
Every second a sampler records the api's RSS and fds, `livepix_watches` from
/metrics, and for the stalled connections, from /proc/net/tcp: how many the api
still holds (its socket ESTABLISHED), how many bytes wait in the api's send queues
(Send-Q) and in the stalled clients' receive queues (Recv-Q). At the end the stalled
watchers read again (`unstall`), and report whether the server had closed them and
with which WebSocket close code.

Small events (about 330 bytes) at 10 events/s fill the ~4 MB of loopback socket
buffers of a stalled connection only after many minutes. `--preview-bytes` makes
every event carry a preview of that size, so that the buffers fill within the run and
the server's send timeout is exercised.
"""

from __future__ import annotations

import argparse
import re
import threading
import time
from typing import Any, Self

import httpx
import psutil

from .common import HOST, Histogram, deadline, loadavg, machine, raise_nofile, save, table
from .push import Clients, clients_for
from .stack import Publisher, Stack, make_tasks

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}
METRICS = ("livepix_watches", "livepix_slow_clients_closed_total", "livepix_progress_coalesced_total",
           "livepix_progress_dropped_total", "livepix_hub_deliveries_total")


def tcp_table(port: int) -> tuple[dict[int, tuple[int, int, int]], dict[int, tuple[int, int, int]]]:
    """IPv4 sockets on loopback touching `port`, from /proc/net/tcp:
    ({peer port: (state, Send-Q, Recv-Q)} on the server side, {local port: ...} on the client side)."""
    server: dict[int, tuple[int, int, int]] = {}
    client: dict[int, tuple[int, int, int]] = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, remote, st, queues = parts[1], parts[2], parts[3], parts[4]
            lport = int(local[-4:], 16)
            rport = int(remote[-4:], 16)
            if lport != port and rport != port:
                continue
            tx, rx = (int(x, 16) for x in queues.split(":"))
            entry = (int(st, 16), tx, rx)
            if lport == port and rport != 0:
                server[rport] = entry
            elif rport == port:
                client[lport] = entry
    return server, client


def metric_values(text: str) -> dict[str, float]:
    out = {}
    for name in METRICS:
        m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
        if m:
            out[name] = float(m.group(1))
    return out


class Sampler:
    """Once a second: the api's RSS/fds/CPU, /metrics, and the stalled connections' sockets."""

    def __init__(self, api: Any, port: int) -> None:
        self.api = api
        self.port = port
        self.stalled_ports: set[int] = set()
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        http = httpx.Client(base_url=f"http://{HOST}:{self.port}", timeout=5)
        while not self._stop.wait(1.0):
            s: dict[str, Any] = {"t": round(time.perf_counter() - self.t0, 2), "rss_mb": round(self.api.rss() / 2**20, 1)}
            try:
                s["fds"] = psutil.Process(self.api.pid).num_fds()
            except Exception:  # noqa: BLE001 - the api may be gone at the very end
                s["fds"] = 0
            try:
                s.update(metric_values(http.get("/api/v1/metrics").text))
            except httpx.HTTPError:
                pass
            server, client = tcp_table(self.port)
            s["api_established"] = sum(1 for st, _, _ in server.values() if st == 1)
            if self.stalled_ports:
                mine = [server[p] for p in self.stalled_ports if p in server]
                s["stalled_held"] = sum(1 for st, _, _ in mine if st == 1)  # the api still has the socket open
                s["stalled_states"] = {TCP_STATES.get(st, str(st)): sum(1 for x in mine if x[0] == st)
                                       for st in {x[0] for x in mine}}
                s["stalled_sendq_mb"] = round(sum(tx for _, tx, _ in mine) / 2**20, 2)
                s["stalled_recvq_mb"] = round(sum(client[p][2] for p in self.stalled_ports if p in client) / 2**20, 2)
            self.samples.append(s)
        http.close()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def run_transport(stack: Stack, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    url, api = stack.add_api(name=f"api-{kind}")
    port = int(url.rsplit(":", 1)[1])
    task = make_tasks(stack.redis_url, 1)
    n_base = max(1, round(args.baseline_seconds / args.window))
    n_stall = max(1, round(args.stall_seconds / args.window))
    publish_s = args.warmup + (n_base + n_stall) * args.window + 2
    rss_idle = api.rss()
    clients = Clients(stack, kind, port, task, args.watchers, clients_for(args.watchers),
                      max_seconds=publish_s + 120, tag=f"-{kind}")
    publisher: Publisher | None = None
    windows: list[dict[str, Any]] = []
    stall_info: dict[str, Any] = {}
    try:
        ready = clients.ready()
        rss_connected = api.rss()
        publisher = Publisher(stack, task, args.rate, publish_s, preview_bytes=args.preview_bytes)
        publisher.ready()
        with Sampler(api, port) as sampler:
            publisher.go()
            time.sleep(args.warmup)
            healthy = ready["connected"]
            t_stall = None
            for i in range(n_base + n_stall):
                phase = "baseline" if i < n_base else "stalled"
                if i == n_base:
                    msgs = clients.command(f"stall {args.stall}", "stall")
                    ports = [p for m in msgs for p in m["ports"]]
                    sampler.stalled_ports = set(ports)
                    t_stall = time.perf_counter() - sampler.t0
                    healthy = ready["connected"] - sum(m["stalled"] for m in msgs)
                    stall_info = {"stalled": sum(m["stalled"] for m in msgs), "t_stall": round(t_stall, 2)}
                la = loadavg()
                clients.reset()
                c0, w0 = api.cpu(), time.perf_counter()
                time.sleep(args.window)
                rep = clients.report()
                wall = time.perf_counter() - w0
                cpu = api.cpu() - c0
                hist: Histogram = rep["hist"]
                expected = args.rate * wall * healthy
                windows.append({
                    "kind": kind, "phase": phase, "window": i,
                    "t_end": round(time.perf_counter() - sampler.t0 - (t_stall or 0.0), 1) if t_stall else None,
                    "healthy": healthy, "delivered": rep["msgs"], "expected": round(expected),
                    "delivered_pct": round(100 * rep["msgs"] / expected, 1) if expected else float("nan"),
                    "p50_ms": hist.ms(0.5), "p99_ms": hist.ms(0.99), "max_ms": hist.ms(1.0),
                    "api_cpu_pct": round(100 * cpu / wall, 1),
                    "deliveries_per_cpu_s": round(rep["msgs"] / cpu) if cpu > 0 else float("nan"),
                    "rss_mb": round(api.rss() / 2**20, 1), "gaps": rep["gaps"], "dups": rep["dups"],
                    "closed": rep["closed"], "loadavg": la, "_hist": hist.counts,
                })
                print(table([windows[-1]], WINDOW_COLUMNS).split("\n", 2)[-1], flush=True)
            done = publisher.done()
            # the stalled watchers read again: what did the server do with them?
            stall_info["t_unstall"] = round(time.perf_counter() - sampler.t0, 2)
            clients.command("unstall", "unstall")
            time.sleep(args.unstall_wait)
            after = clients.command("stalled", "stalled")
        samples = sampler.samples
    finally:
        clients.stop()
        if publisher is not None:
            publisher.stop()
    time.sleep(0.5)
    api_log = api.log_path.read_text(errors="replace")
    api.stop()
    codes: dict[str, int] = {}
    for m in after:
        for c, n in m["close_codes"].items():
            codes[c] = codes.get(c, 0) + n
    stall_info.update({
        "after_unstall_lost": sum(m["lost"] for m in after), "after_unstall_open": sum(m["open"] for m in after),
        "close_codes": codes, "after_unstall_received": sum(m["received"] for m in after),
    })
    return summarize(kind, args, ready, windows, samples, stall_info, done, rss_idle, rss_connected, api_log)


def summarize(kind: str, args: argparse.Namespace, ready: dict[str, Any], windows: list[dict[str, Any]],
              samples: list[dict[str, Any]], stall: dict[str, Any], done: dict[str, Any], rss_idle: int,
              rss_connected: int, api_log: str) -> dict[str, Any]:
    def pooled(phase: str) -> Histogram:
        h = Histogram()
        for w in windows:
            if w["phase"] == phase:
                h.merge(w["_hist"])
        return h

    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    base, stl = pooled("baseline"), pooled("stalled")
    t_stall = stall.get("t_stall", 0.0)
    t_unstall = stall.get("t_unstall", float("inf"))
    before = [s for s in samples if s["t"] <= t_stall]
    during = [s for s in samples if t_stall < s["t"] < t_unstall]  # stalled, before they read again
    after = [s for s in samples if s["t"] >= t_unstall]
    # when the api let go of the stalled sockets, and when its hub dropped their watches
    n_stalled = stall.get("stalled", 0)
    held = [(s["t"] - t_stall, s.get("stalled_held", n_stalled)) for s in during]
    first_release = next((t for t, h in held if h < n_stalled), None)
    all_released = next((t for t, h in held if h == 0), None)
    watches0 = before[-1].get("livepix_watches") if before else None
    watch_drop = [(s["t"] - t_stall, s.get("livepix_watches")) for s in during]
    first_unwatch = next((t for t, w in watch_drop if watches0 is not None and w is not None and w < watches0), None)
    all_unwatched = next((t for t, w in watch_drop if watches0 is not None and w is not None
                          and w <= watches0 - n_stalled), None)
    base_w = [w for w in windows if w["phase"] == "baseline"]
    stall_w = [w for w in windows if w["phase"] == "stalled"]
    summary = {
        "kind": kind, "watchers": args.watchers, "rate": args.rate, "preview_bytes": args.preview_bytes,
        "connected": ready["connected"], "connect_failed": ready["failed"], "stalled": n_stalled,
        "published": done["published"], "pub_late": done["late"],
        "base_p50_ms": base.ms(0.5), "base_p99_ms": base.ms(0.99),
        "stall_p50_ms": stl.ms(0.5), "stall_p99_ms": stl.ms(0.99),
        "p99_ratio": round(stl.quantile(0.99) / base.quantile(0.99), 2) if base.n and stl.n else float("nan"),
        "base_window_p99s": [w["p99_ms"] for w in base_w], "stall_window_p99s": [w["p99_ms"] for w in stall_w],
        "median_window_p99_ratio": round(median([w["p99_ms"] for w in stall_w])
                                         / median([w["p99_ms"] for w in base_w]), 2),
        "base_delivered_pct": round(100 * sum(w["delivered"] for w in base_w)
                                    / max(1.0, sum(w["expected"] for w in base_w)), 1),
        "stall_delivered_pct": round(100 * sum(w["delivered"] for w in stall_w)
                                     / max(1.0, sum(w["expected"] for w in stall_w)), 1),
        "base_cpu_pct": round(median([w["api_cpu_pct"] for w in base_w]), 1),
        "stall_cpu_pct": round(median([w["api_cpu_pct"] for w in stall_w]), 1),
        "gaps": sum(w["gaps"] for w in windows), "dups": sum(w["dups"] for w in windows),
        "rss_idle_mb": round(rss_idle / 2**20, 1), "rss_connected_mb": round(rss_connected / 2**20, 1),
        "rss_before_stall_mb": before[-1]["rss_mb"] if before else float("nan"),
        "rss_max_stalled_mb": max((s["rss_mb"] for s in during), default=float("nan")),
        "rss_end_mb": during[-1]["rss_mb"] if during else float("nan"),
        "sendq_end_mb": during[-1].get("stalled_sendq_mb") if during else None,
        "recvq_end_mb": during[-1].get("stalled_recvq_mb") if during else None,
        "stalled_held_end": during[-1].get("stalled_held") if during else None,
        "queued_kb_per_stalled_end": round((during[-1].get("stalled_sendq_mb", 0) + during[-1].get("stalled_recvq_mb", 0))
                                           * 1024 / max(1, n_stalled), 1) if during else None,
        "queued_kb_per_stalled_max": round(max(((x.get("stalled_sendq_mb", 0) + x.get("stalled_recvq_mb", 0))
                                                for x in during), default=0) * 1024 / max(1, n_stalled), 1),
        "released_after_unstall_s": next((round(x["t"] - t_unstall, 1) for x in after
                                          if x.get("stalled_held", 1) == 0), None),
        "stalled_states_end": during[-1].get("stalled_states") if during else None,
        "first_release_s": first_release, "all_released_s": all_released,
        "first_unwatch_s": first_unwatch, "all_unwatched_s": all_unwatched,
        "slow_closed_metric": (during[-1].get("livepix_slow_clients_closed_total", 0)
                               - (before[-1].get("livepix_slow_clients_closed_total", 0) if before else 0))
        if during else None,
        "coalesced": during[-1].get("livepix_progress_coalesced_total") if during else None,
        "after_unstall": {k: stall[k] for k in ("after_unstall_lost", "after_unstall_open", "close_codes",
                                                "after_unstall_received") if k in stall},
        "api_log_asgi_exceptions": api_log.count("Exception in ASGI application"),
        "api_log_errors": len(re.findall(r"\bERROR\b|Traceback", api_log)),
        "api_log_tail": api_log.splitlines()[-8:],
        "loadavg_base": base_w[0]["loadavg"] if base_w else None,
        "loadavg_stall": stall_w[0]["loadavg"] if stall_w else None,
        "window_s": args.window, "stall_seconds": len(stall_w) * args.window,
    }
    return {"summary": summary, "windows": windows, "samples": samples, "t_stall": t_stall, "t_unstall": t_unstall}


WINDOW_COLUMNS = ["kind", "phase", "window", "t_end", "healthy", "delivered_pct", "p50_ms", "p99_ms", "max_ms",
                  "api_cpu_pct", "rss_mb", "gaps", "closed", "loadavg"]
SUMMARY_COLUMNS = ["kind", "watchers", "stalled", "base_p50_ms", "base_p99_ms", "stall_p50_ms", "stall_p99_ms",
                   "p99_ratio", "median_window_p99_ratio", "base_delivered_pct", "stall_delivered_pct",
                   "base_cpu_pct", "stall_cpu_pct", "rss_before_stall_mb", "rss_max_stalled_mb", "sendq_end_mb",
                   "stalled_held_end", "all_released_s", "all_unwatched_s", "loadavg_base", "loadavg_stall"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    info = machine()
    results = []
    with Stack() as stack:
        stack.start_redis()
        for kind in args.transports:
            print(f"\n{kind}: {args.watchers} watchers, {args.rate:g} events/s, stall {args.stall:g}", flush=True)
            print("\n".join(table([], WINDOW_COLUMNS).split("\n")[:2]), flush=True)
            results.append(run_transport(stack, kind, args))
    info["loadavg_at_end"] = loadavg()
    return {"args": vars(args), "machine": info, "transports": results}


def plot(result: dict[str, Any], name: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .common import DOCS

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    ax3 = ax2.twinx()
    for tr in result["transports"]:
        s = tr["summary"]
        ws = tr["windows"]
        win = s["window_s"]
        xs = [w["t_end"] if w["t_end"] is not None else (w["window"] - len([v for v in ws if v["phase"] == "baseline"]) + 1) * win
              for w in ws]
        line, = ax1.plot(xs, [w["p99_ms"] for w in ws], "o-", label=f"{s['kind']} healthy p99")
        ax1.plot(xs, [w["p50_ms"] for w in ws], "x--", color=line.get_color(), label=f"{s['kind']} healthy p50")
        t_stall = tr["t_stall"]
        smp = [x for x in tr["samples"] if x["t"] < tr.get("t_unstall", float("inf"))]
        ax2.plot([x["t"] - t_stall for x in smp], [x.get("stalled_held", s["stalled"]) for x in smp], "-",
                 color=line.get_color(), label=f"{s['kind']}: stalled sockets the api holds")
        ax2.plot([x["t"] - t_stall for x in smp],
                 [x.get("livepix_watches", s["connected"]) - (s["connected"] - s["stalled"]) for x in smp], "--",
                 color=line.get_color(), label=f"{s['kind']}: stalled watches in the hub")
        ax3.plot([x["t"] - t_stall for x in smp],
                 [(x.get("stalled_sendq_mb", 0) + x.get("stalled_recvq_mb", 0)) * 1024 / max(1, s["stalled"])
                  for x in smp], ":", color=line.get_color(), label=f"{s['kind']}: KB queued per stalled socket")
    ax3.set_ylabel("KB in the kernel per stalled socket (dotted)")
    ax3.legend(fontsize=7, loc="center right")
    ax2.set_ylim(bottom=-1)
    ax2.set_ylabel("stalled watchers")
    for ax in (ax1, ax2):
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel("seconds since 5% of the watchers stalled")
        ax.legend(fontsize=7, loc="center left" if ax is ax2 else "best")
    ax1.set_ylabel("ms, per window")
    first = result["transports"][0]["summary"]
    size = f", {first['preview_bytes']:,}-byte previews" if first["preview_bytes"] else ""
    ax1.set_title(f"{first['watchers']} watchers, {first['rate']:g} events/s{size}: healthy latency", fontsize=10)
    ax2.set_title("What the api does with the stalled watchers", fontsize=10)
    fig.tight_layout()
    path = DOCS / f"bench-{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.slow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, default=1000, help="watchers on the one task (1000)")
    parser.add_argument("--rate", type=float, default=10.0, help="events/s (10)")
    parser.add_argument("--stall", type=float, default=0.05, help="fraction of the watchers that stop reading (0.05)")
    parser.add_argument("--transports", type=lambda s: s.split(","), default=["ws", "sse"])
    parser.add_argument("--baseline-seconds", type=float, default=10.0, help="publishing before the stall (10)")
    parser.add_argument("--stall-seconds", type=float, default=40.0,
                        help="publishing after the stall (40: uvicorn's WS keepalive closes within 40 s)")
    parser.add_argument("--window", type=float, default=5.0, help="seconds per latency window (5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="publishing before the first window (2)")
    parser.add_argument("--preview-bytes", type=int, default=0, help="a preview of this size in every event (0)")
    parser.add_argument("--unstall-wait", type=float, default=2.0,
                        help="seconds the stalled watchers read again before the final count (2)")
    parser.add_argument("--out", default="slow", help="results name: bench/results/<out>.json, docs/bench-<out>.png")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    started = time.time()
    result = run(args)
    result["wall_s"] = round(time.time() - started, 1)
    rows = [t["summary"] for t in result["transports"]]
    print()
    print(table(rows, SUMMARY_COLUMNS))
    for r in rows:
        print(r["kind"], {k: r[k] for k in ("first_release_s", "all_released_s", "first_unwatch_s", "all_unwatched_s",
                                          "stalled_states_end", "after_unstall", "slow_closed_metric",
                                          "queued_kb_per_stalled_end", "queued_kb_per_stalled_max",
                                          "released_after_unstall_s",
                                          "api_log_asgi_exceptions", "base_window_p99s", "stall_window_p99s")})
    print("results:", save(args.out, result), f"({result['wall_s']} s)")
    if not args.no_plot:
        print("plot:", plot(result, args.out))


if __name__ == "__main__":
    with deadline(900, "bench.slow"):
        main()
