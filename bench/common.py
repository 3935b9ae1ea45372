"""What every benchmark shares: the processes under test, measurements, histograms.

The processes are started the way tests/conftest.py starts them: a `redis-server` on a
free loopback port, and `python -m livepix api|worker` children with `REDIS_URL`
pointing at it. Every child gets PR_SET_PDEATHSIG, so that nothing outlives the
benchmark even if it is killed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import redis

from livepix import store
from livepix.processes import _die_with_parent, free_port, redis_server_binary
from livepix.wire import dumps

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
HOST = "127.0.0.1"  # every socket of the benchmarks is on loopback


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# --- processes ---------------------------------------------------------------------


class Child:
    """A child process with its output in a log file; stopped by its own pid only."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None, log_dir: Path,
                 stdin: bool = False, stdout_pipe: bool = False, cwd: str | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log,
            cwd=cwd,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
        self.pid = self.proc.pid
        self._ps = psutil.Process(self.pid)
        self.stopped = False

    def cpu(self) -> float:
        """User + system CPU seconds of this process so far (its own threads included)."""
        try:
            t = self._ps.cpu_times()
        except psutil.Error:
            return float("nan")
        return float(t.user + t.system)

    def sys_cpu(self) -> float:
        """System (kernel) CPU seconds: on loopback, sends pay for the peer's TCP receive too."""
        try:
            return float(self._ps.cpu_times().system)
        except psutil.Error:
            return float("nan")

    def rss(self) -> int:
        try:
            return int(self._ps.memory_info().rss)
        except psutil.Error:
            return 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} ({self.log_path}) ---\n" + "\n".join(text[-lines:])


class Stack:
    """redis-server + livepix api/worker processes on loopback, stopped on exit."""

    def __init__(self, workdir: Path | None = None, keep_logs: bool = False, **env: str) -> None:
        self._tmp = None if workdir else tempfile.mkdtemp(prefix="livepix-bench-")
        self.workdir = workdir or Path(self._tmp)  # type: ignore[arg-type]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep_logs = keep_logs
        self.children: list[Child] = []
        self.redis: Child | None = None
        self.redis_port = 0
        self.env = {
            **os.environ,
            "LIVEPIX_DATA_DIR": str(self.workdir / "data"),
            "LIVEPIX_LOG_LEVEL": "warning",
            "LIVEPIX_MAX_QUEUED_PER_OWNER": "10000000",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            **env,
        }

    # redis ------------------------------------------------------------------------
    def start_redis(self, appendonly: bool = True) -> str:
        self.redis_port = free_port(HOST)
        data = self.workdir / "redis"
        data.mkdir(exist_ok=True)
        self.redis = Child(
            "redis",
            [
                redis_server_binary(), "--port", str(self.redis_port), "--bind", HOST,
                "--dir", str(data), "--appendonly", "yes" if appendonly else "no",
                "--save", "", "--loglevel", "warning", "--maxclients", "20000",
            ],
            None,
            self.workdir,
        )
        self.children.append(self.redis)
        client = redis.Redis(host=HOST, port=self.redis_port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline or not self.redis.alive():
                    raise RuntimeError("redis-server did not start\n" + self.redis.tail()) from None
                time.sleep(0.05)
        client.close()
        self.env["REDIS_URL"] = self.redis_url
        return self.redis_url

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    # livepix ----------------------------------------------------------------------
    def add_api(self, name: str | None = None, src: str | None = None, **env: str) -> tuple[str, Child]:
        """A `livepix api`; `src` runs it from another source tree (A/B comparisons)."""
        port = free_port(HOST)
        name = name or f"api-{len(self.children)}"
        if src:
            env = {**env, "PYTHONPATH": src}
        proc = Child(name, [sys.executable, "-m", "livepix", "api", "--host", HOST, "--port", str(port)],
                     {**self.env, **env}, self.workdir, cwd=src)
        self.children.append(proc)
        url = f"http://{HOST}:{port}"
        wait_http(url + "/api/v1/readyz", proc)
        return url, proc

    def add_worker(self, queues: str, threads: int = 1, **env: str) -> Child:
        name = f"worker-{queues.replace(',', '-')}-{len(self.children)}"
        proc = Child(name, [sys.executable, "-m", "livepix", "worker", "--queues", queues,
                            "--threads", str(threads)], {**self.env, **env}, self.workdir)
        self.children.append(proc)
        return proc

    def wait_workers(self, count: int, timeout_s: float = 120) -> None:
        from livepix.wire import workers_key

        client = self.client()
        deadline = time.monotonic() + timeout_s
        try:
            while client.zcard(workers_key()) < count:
                for c in self.children:
                    if c.name.startswith("worker") and not c.stopped and not c.alive():
                        raise RuntimeError(f"{c.name} exited\n{c.tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError("workers did not register\n" + self.logs())
                time.sleep(0.1)
        finally:
            client.close()

    def spawn(self, name: str, argv: Sequence[str], *, stdin: bool = False, stdout_pipe: bool = False,
              env: dict[str, str] | None = None) -> Child:
        proc = Child(name, argv, {**self.env, **(env or {})}, self.workdir, stdin=stdin, stdout_pipe=stdout_pipe)
        self.children.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(c.tail() for c in self.children)

    def stop(self) -> None:
        # livepix and client processes first, redis last
        for child in reversed(self.children):
            if child is not self.redis:
                child.stop()
        if self.redis is not None:
            self.redis.stop()
        self.children.clear()
        if self._tmp and not self.keep_logs:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and exc[0] is not KeyboardInterrupt:
            print(self.logs(), file=sys.stderr)
        self.stop()


def wait_http(url: str, proc: Child, timeout_s: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early\n{proc.tail()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{proc.name} not ready\n{proc.tail()}")


# --- tasks made directly with the store scripts ----------------------------------


def make_tasks(redis_url: str, count: int, processing: bool = True) -> list[str]:
    """Create `count` tasks with the real `submit` script (not enqueued: no worker takes
    them). With `processing`, one `progress` event makes each PROCESSING, so that the
    api's upkeep no longer counts them as waiting. Owner "" = the anonymous caller."""
    import inspect

    from livepix.wire import TaskType, actor_name

    # the submit script may also enqueue the Dramatiq message (then it needs the actor);
    # no benchmark that uses these tasks runs a gpu worker, so the message just waits
    params = inspect.signature(store.submit).parameters
    submit_extra = {"actor": actor_name(TaskType.IMAGE_GENERATION)} if "actor" in params else {}
    client = redis.Redis.from_url(redis_url)
    scripts = {name: client.register_script(src) for name, src in store.SCRIPTS.items()}
    ids = []
    pipe = client.pipeline(transaction=False)
    for _ in range(count):
        task_id = str(uuid.uuid4())
        ids.append(task_id)
        call = store.submit(task_id, "image_generation", "gpu", "", dumps({"task_type": "image_generation",
                            "prompt": "bench"}), 3600, 10_000_000, **submit_extra)
        scripts["submit"](keys=call.keys, args=call.args, client=pipe)
        if processing:
            call = store.progress(task_id, 1, "Warming up", 3600)
            scripts["progress"](keys=call.keys, args=call.args, client=pipe)
        if len(pipe) >= 500:
            pipe.execute()
    pipe.execute()
    client.close()
    return ids


# --- client processes driven over stdin/stdout -------------------------------------


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
            "errors": sum((m.get("errors", []) for m in msgs), []),
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


# --- histograms --------------------------------------------------------------------

_BINS_PER_DECADE = 200
_MIN_EXP = -6  # 1 us
_NBINS = _BINS_PER_DECADE * 8  # up to 100 s


def hist_index(seconds: float) -> int:
    if seconds <= 1e-6:
        return 0
    i = int((math.log10(seconds) - _MIN_EXP) * _BINS_PER_DECADE)
    return i if i < _NBINS else _NBINS - 1


class Histogram:
    """Log-binned latency histogram (1.2% resolution), mergeable across processes."""

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})

    def add(self, seconds: float) -> None:
        i = hist_index(seconds)
        self.counts[i] = self.counts.get(i, 0) + 1

    def merge(self, other: dict[str, int] | dict[int, int] | Histogram) -> None:
        items = other.counts.items() if isinstance(other, Histogram) else other.items()
        for k, v in items:
            self.counts[int(k)] = self.counts.get(int(k), 0) + v

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def quantile(self, q: float) -> float:
        total = self.n
        if total == 0:
            return float("nan")
        rank = q * (total - 1)
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen > rank:
                return 10 ** (_MIN_EXP + (i + 0.5) / _BINS_PER_DECADE)
        return float("nan")

    def ms(self, q: float) -> float:
        return round(self.quantile(q) * 1000, 2)


def quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# --- a probe of the api's event loop -----------------------------------------------


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

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def summary(self) -> dict[str, float]:
        return {"probe_p50_ms": round(quantile(self.rtts, 0.5) * 1000, 2),
                "probe_p99_ms": round(quantile(self.rtts, 0.99) * 1000, 2),
                "probe_n": len(self.rtts)}


# --- output ------------------------------------------------------------------------


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    return path


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured markdown table of `columns` of `rows`."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return "-"
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Abort the whole benchmark with SIGALRM past `seconds`: every run is bounded."""
    def on_alarm(*_: object) -> None:
        raise TimeoutError(f"{what} ran past its {seconds:.0f} s bound")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- line protocol with child processes ----------------------------------------------


def read_op(child: Child, buf: bytearray, op: str, timeout_s: float) -> dict[str, Any]:
    """The next JSON line `{"op": op, ...}` on `child`'s stdout (other lines skipped)."""
    assert child.proc.stdout is not None
    fd = child.proc.stdout.fileno()
    deadline = time.monotonic() + timeout_s
    while True:
        nl = buf.find(b"\n")
        if nl >= 0:
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("op") == op:
                return dict(msg)
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{child.name}: no '{op}' in {timeout_s:.0f} s\n{child.tail()}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"{child.name} exited\n{child.tail()}")
            buf += chunk


class Publisher:
    """A `bench.publisher` process: ready, then `go`, then its `done` report."""

    def __init__(self, stack: Stack, tasks: Sequence[str], rate: float, seconds: float,
                 via: str = "store", log: bool = False, preview_bytes: int = 0) -> None:
        argv = [sys.executable, "-m", "bench.publisher", "--redis", stack.redis_url, "--tasks", ",".join(tasks),
                "--rate", str(rate), "--seconds", str(seconds), "--via", via]
        if log:
            argv.append("--log")
        if preview_bytes:
            argv += ["--preview-bytes", str(preview_bytes)]
        self.child = stack.spawn("publisher", argv, stdin=True, stdout_pipe=True)
        self.seconds = seconds
        self._buf = bytearray()

    def ready(self, timeout_s: float = 60) -> None:
        read_op(self.child, self._buf, "ready", timeout_s)

    def go(self) -> None:
        assert self.child.proc.stdin is not None
        self.child.proc.stdin.write(b"go\n")
        self.child.proc.stdin.flush()

    def done(self) -> dict[str, Any]:
        return read_op(self.child, self._buf, "done", self.seconds + 60)

    def stop(self) -> None:
        self.child.stop(5)


def start_profile(target: Child, name: str, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy (sampling at 250 Hz, non-blocking) on `target` for `seconds`: writes the
    collapsed stacks to bench/results/profile-<name>.txt (read them with bench.profile_view)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"profile-{name}.txt"
    return subprocess.Popen(
        ["py-spy", "record", "--nonblocking", "-r", "250", "-d", str(max(1, round(seconds))),
         "-p", str(target.pid), "-f", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,  # noqa: PLW1509
    )


def clients_for(watchers: int) -> int:
    """Client processes for `watchers` connections: enough that no client is the bottleneck."""
    return 1 if watchers < 100 else 2 if watchers <= 2000 else 4


def measure_push(stack: Stack, server: Child, port: int, kind: str, watchers: int, rate: float,
                 seconds: float, *, tasks: Sequence[str] | None = None, via: str = "store",
                 path: str | None = None, processes: int | None = None, stall: float = 0.0,
                 log: bool = False, drain_s: float = 1.0, label: str = "livepix",
                 profile: str | None = None) -> dict[str, Any]:
    """Open `watchers` connections of `kind` on `tasks` (a fresh task by default), publish
    `rate` events/s for `seconds`, and measure the server process and the clients."""
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
        with Probe(port, 0.1) as probe:
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
        **probe.summary(),
    }
    if log:
        row["_pub_log"] = done["log"]
        row["_learned"] = report["learned"]
    row["_hist"] = hist.counts
    row["_report"] = {k: v for k, v in report.items() if k not in ("hist", "rtt", "learned")}
    row["_rtt"] = report["rtt"].counts
    return row
