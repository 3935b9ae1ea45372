"""The processes under test, started the way tests/conftest.py starts them: a
`redis-server` on a free loopback port, `python -m livepix api|worker` children with
`REDIS_URL` pointing at it, and the publisher that plays a worker. Every child gets
PR_SET_PDEATHSIG, so that nothing outlives the benchmark even if it is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import psutil
import redis

from livepix import store
from livepix.processes import _die_with_parent, free_port, redis_server_binary
from livepix.wire import dumps

from .common import (
    HOST,
    RESULTS,
)


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

    def __enter__(self) -> Self:
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
