"""The push scenario: watcher client processes (`bench.loadgen`), the event-loop probe,
and `measure_push`, which fan-out, polling and peers share.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Self

from .common import (
    HOST,
    Histogram,
    loadavg,
    quantile,
)
from .stack import Child, Publisher, Stack, make_tasks, start_profile


class Clients:
    """A group of `bench.loadgen` processes, driven with one-line commands."""

    def __init__(self, stack: Stack, kind: str, port: int, tasks: Sequence[str], connections: int,
                 processes: int, *, max_seconds: float, extra: Sequence[str] = (), tag: str = "") -> None:
        self.procs: list[Child] = []
        processes = max(1, min(processes, connections))
        share = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
        for i, n in enumerate(share):
            argv = [sys.executable, "-m", "bench.loadgen", "--kind", kind, "--port", str(port),
                    "--tasks", ",".join(tasks), "--connections", str(n), "--offset", str(sum(share[:i])),
                    "--max-seconds", str(max_seconds), *extra]
            self.procs.append(stack.spawn(f"client-{kind}{tag}-{i}", argv, stdin=True, stdout_pipe=True))
        self.connections = connections
        self._bufs: dict[int, bytearray] = {}

    def _send(self, command: str) -> None:
        for p in self.procs:
            assert p.proc.stdin is not None
            p.proc.stdin.write((command + "\n").encode())
            p.proc.stdin.flush()

    def _read(self, op: str, timeout_s: float) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            assert p.proc.stdout is not None
            fd = p.proc.stdout.fileno()
            buf = self._bufs.setdefault(p.pid, bytearray())
            while True:
                nl = buf.find(b"\n")
                if nl >= 0:
                    line = bytes(buf[:nl])
                    del buf[: nl + 1]
                    msg = json.loads(line)
                    if msg.get("op") == op:
                        out.append(msg)
                        break
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{p.name}: no '{op}' in {timeout_s:.0f} s\n{p.tail()}")
                ready, _, _ = select.select([fd], [], [], left)
                if not ready:
                    continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"{p.name} exited\n{p.tail()}")
                buf += chunk
        return out

    def ready(self, timeout_s: float = 120) -> dict[str, Any]:
        msgs = self._read("ready", timeout_s)
        return {
            "connected": sum(m["connected"] for m in msgs),
            "failed": sum(m["failed"] for m in msgs),
            "retries": sum(m.get("retries", 0) for m in msgs),
            "connect_s": max(m["connect_s"] for m in msgs),
            "errors": [e for m in msgs for e in m.get("errors", [])],
        }

    def command(self, command: str, op: str, timeout_s: float = 60) -> list[dict[str, Any]]:
        self._send(command)
        return self._read(op, timeout_s)

    def reset(self) -> None:
        self.command("reset", "reset")

    def report(self) -> dict[str, Any]:
        msgs = self.command("report", "report")
        merged: dict[str, Any] = {"hist": Histogram(), "rtt": Histogram(), "learned": [], "statuses": {}}
        for m in msgs:
            for code, n in m.pop("statuses", {}).items():
                merged["statuses"][code] = merged["statuses"].get(code, 0) + n
            merged["hist"].merge(m.pop("hist"))
            merged["rtt"].merge(m.pop("rtt"))
            merged["learned"].extend(m.pop("learned", []))
            for k, v in m.items():
                if isinstance(v, (int, float)) and k != "op":
                    merged[k] = merged.get(k, 0) + v
        return merged

    def cpu(self) -> float:
        return sum(p.cpu() for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.alive():
                with contextlib.suppress(OSError, ValueError):
                    assert p.proc.stdin is not None
                    p.proc.stdin.write(b"quit\n")
                    p.proc.stdin.flush()
        for p in self.procs:
            p.stop(timeout_s=10)


class Probe:
    """GET /api/v1/healthz every `interval_s` on one keep-alive connection, in a thread:
    the round trip is a proxy for the api's event-loop lag."""

    def __init__(self, port: int, interval_s: float = 0.05) -> None:
        self.port = port
        self.interval_s = interval_s
        self.rtts: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import http.client

        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        while not self._stop.wait(self.interval_s):
            t = time.perf_counter()
            try:
                conn.request("GET", "/api/v1/healthz")
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
                continue
            self.rtts.append(time.perf_counter() - t)
        conn.close()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def summary(self) -> dict[str, float]:
        return {"probe_p50_ms": round(quantile(self.rtts, 0.5) * 1000, 2),
                "probe_p99_ms": round(quantile(self.rtts, 0.99) * 1000, 2),
                "probe_n": len(self.rtts)}


def clients_for(watchers: int) -> int:
    """Client processes for `watchers` connections: enough that no client is the bottleneck."""
    return 1 if watchers < 100 else 2 if watchers <= 2000 else 4


def measure_push(stack: Stack, server: Child, port: int, kind: str, watchers: int, rate: float,
                 seconds: float, *, tasks: Sequence[str] | None = None, via: str = "store",
                 path: str | None = None, processes: int | None = None, stall: float = 0.0,
                 log: bool = False, drain_s: float = 1.0, label: str = "livepix",
                 profile: str | None = None, probe_s: float | None = 0.1) -> dict[str, Any]:
    """Open `watchers` connections of `kind` on `tasks` (a fresh task by default), publish
    `rate` events/s for `seconds`, and measure the server process and the clients (and,
    unless `probe_s` is None, the event-loop lag with a healthz probe every `probe_s`)."""
    tasks = list(tasks or make_tasks(stack.redis_url, 1))
    extra = ["--path", path] if path else []
    rss_before = server.rss()
    clients = Clients(stack, kind, port, tasks, watchers, processes or clients_for(watchers),
                      max_seconds=seconds + 240, extra=extra)
    publisher: Publisher | None = None
    try:
        ready = clients.ready()
        rss_ready = server.rss()
        publisher = Publisher(stack, tasks, rate, seconds, via=via, log=log)
        publisher.ready()
        stalled = 0
        if stall:
            stalled = sum(m["stalled"] for m in clients.command(f"stall {stall}", "stall"))
        # idle baseline: the server's CPU with the watchers connected and nothing published
        c0, t0 = server.cpu(), time.perf_counter()
        time.sleep(1.0)
        idle_pct = (server.cpu() - c0) / (time.perf_counter() - t0) * 100
        clients.reset()
        la = loadavg()
        assert stack.redis is not None
        cpu0, rcpu0, ccpu0, w0 = server.cpu(), stack.redis.cpu(), clients.cpu(), time.perf_counter()
        sys0 = server.sys_cpu()
        spy = start_profile(server, profile, seconds) if profile else None
        probe = Probe(port, probe_s) if probe_s else None
        with probe or contextlib.nullcontext():
            publisher.go()
            done = publisher.done()
            time.sleep(drain_s)
        if spy is not None:
            spy.wait(30)
        wall = time.perf_counter() - w0
        cpu = server.cpu() - cpu0
        sys_cpu = server.sys_cpu() - sys0
        rcpu = stack.redis.cpu() - rcpu0
        ccpu = clients.cpu() - ccpu0
        report = clients.report()
    finally:
        clients.stop()
        if publisher is not None:
            publisher.stop()
    hist: Histogram = report["hist"]
    published = int(done["published"])
    healthy = watchers - stalled
    expected = published * healthy
    delivered = int(report["msgs"])
    row = {
        "server": label, "kind": kind, "watchers": watchers, "tasks": len(tasks), "rate": rate,
        "seconds": seconds, "published": published, "pub_late": done["late"],
        "connected": ready["connected"], "connect_failed": ready["failed"], "connect_retries": ready["retries"],
        "connect_errors": ready["errors"], "stalled": stalled,
        "expected": expected, "delivered": delivered,
        "kb_per_conn": round((rss_ready - rss_before) / watchers / 1024, 1),
        "delivered_pct": round(100 * delivered / expected, 2) if expected else float("nan"),
        "deliveries_per_s": round(delivered / done["elapsed"], 1),
        "server_cpu_s": round(cpu, 3), "server_cpu_pct": round(100 * cpu / wall, 1),
        "idle_cpu_pct": round(idle_pct, 1),
        "server_sys_share_pct": round(100 * sys_cpu / cpu, 1) if cpu > 0 else float("nan"),
        "deliveries_per_cpu_s": round(delivered / cpu) if cpu > 0 else float("nan"),
        "us_per_delivery": round(cpu / delivered * 1e6, 2) if delivered else float("nan"),
        "redis_cpu_pct": round(100 * rcpu / wall, 1), "client_cpu_pct": round(100 * ccpu / wall, 1),
        "deliveries_per_cpu_s_with_redis": round(delivered / (cpu + rcpu)) if cpu + rcpu > 0 else float("nan"),
        "p50_ms": hist.ms(0.5), "p99_ms": hist.ms(0.99), "max_ms": hist.ms(1.0),
        "bytes_in_per_s": round(report["bytes_in"] / wall), "bytes_out_per_s": round(report["bytes_out"] / wall),
        "requests_per_s": round(report["requests"] / wall, 1), "closed": report["closed"],
        "gaps": report["gaps"], "dups": report["dups"], "loadavg": la, "wall_s": round(wall, 2),
        **(probe.summary() if probe else {}),
    }
    if log:
        row["_pub_log"] = done["log"]
        row["_learned"] = report["learned"]
    row["_hist"] = hist.counts
    row["_report"] = {k: v for k, v in report.items() if k not in ("hist", "rtt", "learned")}
    row["_rtt"] = report["rtt"].counts
    return row
