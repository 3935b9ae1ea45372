"""The processes under test, started with livepix's one process harness
(livepix/processes.py, as `livepix serve` and tests/conftest.py do): a `redis-server`
on a free loopback port, `python -m livepix api|worker` children with `REDIS_URL`
pointing at it, and the publisher that plays a worker. Every child gets
PR_SET_PDEATHSIG, so that nothing outlives the benchmark even if it is killed.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import redis

from livepix import store
from livepix.processes import (
    Child,
    RedisServer,
    _die_with_parent,
    livepix_child,
    wait_http,
    wait_workers,
)
from livepix.wire import dumps

from .common import (
    HOST,
    RESULTS,
)

__all__ = ["Child", "Publisher", "Stack", "make_tasks", "read_op", "start_profile"]


class Stack:
    """redis-server + livepix api/worker processes on loopback, stopped on exit."""

    def __init__(self, workdir: Path | None = None, keep_logs: bool = False, **env: str) -> None:
        self._tmp = None if workdir else tempfile.mkdtemp(prefix="livepix-bench-")
        self.workdir = workdir or Path(self._tmp)  # type: ignore[arg-type]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep_logs = keep_logs
        self.children: list[Child] = []
        self.redis: RedisServer | None = None
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
        self.redis = RedisServer(self.workdir / "redis", appendonly=appendonly, maxclients=20000,
                                 log_path=self.workdir / "redis.log").start()
        self.children.append(self.redis)
        self.env["REDIS_URL"] = self.redis_url
        return self.redis_url

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    # livepix ----------------------------------------------------------------------
    def add_api(self, name: str | None = None, src: str | None = None, **env: str) -> tuple[str, Child]:
        """A `livepix api`; `src` runs it from another source tree (A/B comparisons)."""
        from livepix.processes import free_port

        port = free_port(HOST)
        name = name or f"api-{len(self.children)}"
        if src:
            env = {**env, "PYTHONPATH": src}
        proc = livepix_child(name, ["api", "--host", HOST, "--port", str(port)], {**self.env, **env},
                             log_path=self.workdir / f"{name}.log", cwd=src).start()
        self.children.append(proc)
        url = f"http://{HOST}:{port}"
        wait_http(url + "/api/v1/readyz", proc)
        return url, proc

    def add_worker(self, queues: str, threads: int = 1, src: str | None = None, **env: str) -> Child:
        """A `livepix worker`; `src` runs it from another source tree (A/B comparisons)."""
        name = f"worker-{queues.replace(',', '-')}-{len(self.children)}"
        if src:
            env = {**env, "PYTHONPATH": src}
        proc = livepix_child(name, ["worker", "--queues", queues, "--threads", str(threads)],
                             {**self.env, **env}, log_path=self.workdir / f"{name}.log", cwd=src).start()
        self.children.append(proc)
        return proc

    def wait_workers(self, count: int, timeout_s: float = 120) -> None:
        workers = [c for c in self.children if c.name.startswith("worker")]
        wait_workers(self.redis_url, count, workers, timeout_s)

    def spawn(self, name: str, argv: Sequence[str], *, stdin: bool = False, stdout_pipe: bool = False,
              env: dict[str, str] | None = None) -> Child:
        proc = Child(name, argv, {**self.env, **(env or {})}, log_path=self.workdir / f"{name}.log",
                     stdin=stdin, stdout_pipe=stdout_pipe).start()
        self.children.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(c.tail() for c in self.children)

    def stop(self) -> None:
        # livepix and client processes first, redis last
        for child in reversed(self.children):
            if child is not self.redis:
                child.stop(timeout_s=10)
        if self.redis is not None:
            self.redis.stop(timeout_s=10)
        self.children.clear()
        if self._tmp and not self.keep_logs:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and exc[0] is not KeyboardInterrupt:
            print(self.logs(), file=sys.stderr)
        self.stop()


def make_tasks(redis_url: str, count: int, processing: bool = True) -> list[str]:
    """Create `count` tasks with the real store operations (their messages wait: no
    benchmark that uses these tasks runs a gpu worker). With `processing`, one
    `progress` event makes each PROCESSING, so that the api's upkeep no longer counts
    them as waiting. Owner "" = the anonymous caller."""
    from livepix.storage import run
    from livepix.wire import TaskType, actor_name

    opts = store.Options(ttl_s=3600)
    client = redis.Redis.from_url(redis_url)
    ids = []
    for _ in range(count):
        task_id = str(uuid.uuid4())
        ids.append(task_id)
        run(client, store.submit(opts, task_id, "image_generation", "gpu", "",
                                 dumps({"task_type": "image_generation", "prompt": "bench"}), 10_000_000,
                                 actor_name(TaskType.IMAGE_GENERATION)))
        if processing:
            run(client, store.progress(opts, task_id, 1, "Warming up"))
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
